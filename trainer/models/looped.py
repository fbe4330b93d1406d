"""Looped transformer: ``n_layer`` weight-shared blocks applied ``n_loops`` times (recurrent depth,
a "self-loop" architecture). Effective depth n_layer x n_loops at the parameter count of n_layer.
Hidden states and attention maps are reported for every application, so the topology callbacks
see each loop."""

from __future__ import annotations

from trainer.models.gpt import GPT, Block


class Looped(GPT):
    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("n_loops", 4)
        super().__init__(**kwargs)

    def block_schedule(self) -> list[Block]:
        return list(self.blocks) * self.config.n_loops
