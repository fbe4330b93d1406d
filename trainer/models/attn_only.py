"""Attention-only transformer: the standard model of induction-head and in-context learning studies
(Elhage et al. 2021, Olsson et al. 2022, Reddy 2024). The GPT of ``gpt.py`` with its MLPs removed."""

from __future__ import annotations

from trainer.models.gpt import GPT


class AttnOnly(GPT):
    def __init__(self, **kwargs) -> None:
        if kwargs.setdefault("mlp", "none") != "none":
            raise ValueError(
                f"model.mlp={kwargs['mlp']!r}: an attention-only model has no MLP (use 'none')"
            )
        super().__init__(**kwargs)
