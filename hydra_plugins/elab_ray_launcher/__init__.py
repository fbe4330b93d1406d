"""The lab's Ray launcher for Hydra multiruns (``hydra/launcher=ray``): see ``ray_launcher``.

It lives in the ``hydra_plugins`` namespace because Hydra only instantiates launchers found
there; ``hydra_plugins`` itself has no ``__init__.py`` so that it merges with the installed
plugins (joblib, submitit, optuna)."""
