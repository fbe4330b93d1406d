"""Export a run's model to the formats other tools read: ``elab-export RUN_DIR --to TARGET OUT``.

One module per target (``hf``, ``tlens``), each with ``NEEDS`` (its optional dependencies, the
``interp`` extra), ``export(model, out, ...)`` and ``logits_fn``; ``common`` holds what they share
and ``cli`` the command. Nothing here is imported by training.
"""
