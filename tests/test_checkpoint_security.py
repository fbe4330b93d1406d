"""A checkpoint is data, never code: a crafted pickle passed as ``ckpt_path`` must run nothing."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from tests.test_train import _cli


class _RunsACommand:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_a_malicious_checkpoint_runs_nothing_and_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "global_step": 0, "evil": _RunsACommand(str(marker))}, evil)
    # The payload is live: unpickled, it runs the command (so the test below can fail).
    pickle.loads(pickle.dumps(_RunsACommand(str(marker))))
    assert marker.exists()
    marker.unlink()

    result = _cli(["debug=fast", "progress=none", f"hydra.run.dir={tmp_path / 'run'}",
                   f"ckpt_path={evil}"], tmp_path)
    out = result.stdout + result.stderr
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert result.returncode == 2 and "ckpt_path=" in out and "Traceback" not in out
    assert not (tmp_path / "run" / "checkpoints").exists(), "nothing trained from a refused file"
