"""Small transformers, one readable file each."""

from trainer.models.attn_only import AttnOnly
from trainer.models.gpt import GPT, GPTConfig
from trainer.models.looped import Looped

__all__ = ["GPT", "GPTConfig", "AttnOnly", "Looped"]
