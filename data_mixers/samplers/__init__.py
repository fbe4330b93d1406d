"""Step samplers that generate their sequences directly (no documents, no token store): each one is
a :class:`data_mixers.base.StepSampler` whose batch at a step is a pure function of
(seed, step, row, config)."""
