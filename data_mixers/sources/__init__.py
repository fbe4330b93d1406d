"""Data sources: each one is a :class:`data_mixers.base.StepSampler`."""
