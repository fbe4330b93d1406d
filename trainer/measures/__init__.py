"""Measures of a model in training: representation topology, jump detection, lead-lag, LLC.

Pure functions and small stateful objects over tensors and arrays: nothing here imports Lightning,
so the online callbacks (``trainer.monitors``), the offline analysis and ``elab-retro`` share them.
"""
