"""A callback that presses Ctrl-C for the tests: it logs a line while the progress bar is drawn,
then raises KeyboardInterrupt after the given step (Lightning handles it as a real Ctrl-C)."""

from __future__ import annotations

import logging

import lightning as L


class InterruptAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step - 1:
            logging.getLogger("emergence_lab").info("a line logged while the bar is drawn")
        if trainer.global_step == self.step:
            raise KeyboardInterrupt
