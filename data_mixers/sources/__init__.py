"""Document sources: text with a domain label (the synthetic knowledge world, any Hugging Face
dataset), tokenised once into a token store and sampled by :class:`data_mixers.text_mixer.TextMixer`.
Samplers that generate sequences directly live in :mod:`data_mixers.samplers`."""
