"""Autoregressive decoding for the lab's models: a key/value cache and ``generate``.

With the cache each new token runs the model on that token alone, attending to the stored keys
and values of the tokens before it: O(T) per token instead of re-running the whole prefix
(O(T^2)). The training path never builds a cache (``cache=None`` costs nothing).
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every block application, [B, H, max_len, h] each, filled in order.

    The slots follow ``model.block_schedule()``: the looped model applies one block several times,
    and each application sees different inputs, so each gets its own slot. The buffers are
    allocated on the first write, in the dtype and device the keys arrive in (bf16 under
    autocast)."""

    def __init__(self, n_slots: int, max_len: int) -> None:
        self.n_slots, self.max_len = n_slots, max_len
        self.pos = 0  # tokens stored so far: the position of the next token
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, slot: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' keys and values [B, H, T, h] at positions pos..pos+T-1 and
        return every key and value up to them. ``advance`` moves ``pos`` once all slots wrote."""
        B, H, T, h = k.shape
        if self.k is None:
            shape = (self.n_slots, B, H, self.max_len, h)
            self.k = k.new_zeros(shape)
            self.v = v.new_zeros(shape)
        end = self.pos + T
        self.k[slot, :, :, self.pos:end] = k
        self.v[slot, :, :, self.pos:end] = v
        return self.k[slot, :, :, :end], self.v[slot, :, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token per row from [B, V] logits: the argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the top_k most likely tokens."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _check(model, input_ids, max_new_tokens, temperature, top_k, eos_token_id) -> None:
    vocab = model.config.vocab_size
    if not (torch.is_tensor(input_ids) and input_ids.dim() == 2 and input_ids.shape[1] >= 1
            and not input_ids.is_floating_point() and not input_ids.is_complex()):
        shape = tuple(input_ids.shape) if torch.is_tensor(input_ids) else type(input_ids).__name__
        raise ValueError(f"input_ids={shape}: expected a [batch, tokens] integer tensor with at "
                         "least one token per row")
    if input_ids.numel() and not 0 <= int(input_ids.min()) <= int(input_ids.max()) < vocab:
        raise ValueError(f"input_ids holds ids outside [0, vocab_size={vocab})")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            0 <= temperature < float("inf")):
        raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (0: greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be None or an integer >= 1")
    if eos_token_id is not None and not (isinstance(eos_token_id, int) and 0 <= eos_token_id < vocab):
        raise ValueError(f"eos_token_id={eos_token_id!r} must be None or a token id in "
                         f"[0, vocab_size={vocab})")


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None,
             eos_token_id: int | None = None, use_cache: bool = True) -> torch.LongTensor:
    """See ``GPT.generate``."""
    _check(model, input_ids, max_new_tokens, temperature, top_k, eos_token_id)
    limit = model.config.max_seq_len
    was_training = model.training
    model.eval()
    ids = input_ids.long()
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    cache, fed = None, 0  # fed: how many tokens of ``ids`` the cache holds
    try:
        for _ in range(max_new_tokens):
            if use_cache and ids.shape[1] <= limit:
                if cache is None:
                    cache = KVCache(len(model.block_schedule()), limit)
                logits = model(ids[:, fed:], cache=cache)[:, -1]
                fed = ids.shape[1]
            else:
                # Past the context the window slides; its positions restart at 0, so every
                # stored key is stale: recompute the window (what the uncached model sees).
                logits = model(ids[:, -limit:])[:, -1]
            token = sample_next(logits, temperature, top_k, generator)
            if eos_token_id is not None:
                token = token.masked_fill(finished, eos_token_id)
                finished |= token == eos_token_id
            ids = torch.cat([ids, token.unsqueeze(1)], dim=1)
            if eos_token_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)
    return ids
