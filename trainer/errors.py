"""The trainer's leaf: the one error for bad input and the config directory.

Every layer may import this module (it imports nothing of the project), so the entry point, the
schema, the monitors and the offline tools share one exception type without importing each other.
"""

from __future__ import annotations

from pathlib import Path

# conf/ beside the package: the Hydra config every entry point, script and test composes.
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


class ConfigError(ValueError):
    """The configuration cannot run; raised before training starts, naming the key."""
