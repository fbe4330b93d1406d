import pytest
import torch

from trainer.models import GPT, AttnOnly, Looped
from trainer.module import masked_cross_entropy

SMALL = dict(vocab_size=50, max_seq_len=24, n_layer=2, n_head=2, d_model=32)


@pytest.mark.parametrize("cls", [GPT, AttnOnly, Looped])
def test_logits_shape_and_causality(cls):
    torch.manual_seed(0)
    model = cls(**SMALL).eval()
    x = torch.randint(0, 50, (3, 20))
    logits = model(x)
    assert logits.shape == (3, 20, 50)
    changed = x.clone()
    changed[:, 12:] = (changed[:, 12:] + 7) % 50
    # Changing tokens from position 12 on never changes what the model predicts before it.
    torch.testing.assert_close(model(changed)[:, :12], logits[:, :12])
    assert not torch.allclose(model(changed)[:, 12:], logits[:, 12:])


@pytest.mark.parametrize("cls", [GPT, AttnOnly, Looped])
def test_explicit_attention_path_matches_sdpa_and_returns_weights(cls):
    torch.manual_seed(0)
    model = cls(**SMALL).eval()
    x = torch.randint(0, 50, (2, 16))
    fast = model(x)
    out = model(x, return_attn=True, return_hidden=True)
    torch.testing.assert_close(out["logits"], fast, atol=1e-5, rtol=1e-5)
    attn = out["attn"][0]
    assert attn.shape == (2, 2, 16, 16)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 16))
    assert torch.all(attn.triu(1) == 0), "attention to future positions"


def test_parameter_counts_follow_the_config():
    d, v, layers = 32, 50, 2
    gpt = GPT(**SMALL, mlp="gelu", mlp_ratio=4.0)
    per_block = 3 * d * d + d * d + 2 * d * (4 * d) + 2 * d  # qkv, proj, MLP up/down, 2 norms
    assert gpt.num_params() == v * d + layers * per_block + d  # tied head, final norm
    attn_only = AttnOnly(**SMALL)
    assert attn_only.num_params() == v * d + layers * (4 * d * d + d) + d
    looped = Looped(**{**SMALL, "n_layer": 1, "n_loops": 4})
    one_layer = GPT(**{**SMALL, "n_layer": 1})
    assert looped.num_params() == one_layer.num_params()
    assert looped.flops_per_token() > one_layer.flops_per_token()
    assert len(looped(torch.zeros(1, 8, dtype=torch.long), return_hidden=True)["hidden"]) == 5


def test_continuous_items_enter_through_a_projection():
    torch.manual_seed(0)
    model = GPT(**SMALL, item_dim=6).eval()
    ids = torch.zeros(1, 10, dtype=torch.long)
    vectors = torch.randn(1, 10, 6)
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, 4] = True
    base = model(ids, vectors, mask)
    other = vectors.clone()
    other[0, 4] += 1.0
    moved = model(ids, other, mask)
    torch.testing.assert_close(moved[:, :4], base[:, :4])
    assert not torch.allclose(moved[:, 4:], base[:, 4:])
    other[0, 2] += 5.0  # not an item position: the vector there is ignored
    torch.testing.assert_close(model(ids, other, mask), moved)


def test_weight_decay_only_on_matrices():
    model = GPT(**SMALL)
    decay, no_decay = model.optimizer_groups(0.1)
    assert all(p.dim() == 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_bad_model_config_names_the_key():
    with pytest.raises(ValueError, match="model.n_head"):
        GPT(vocab_size=10, max_seq_len=8, d_model=30, n_head=4)
    with pytest.raises(ValueError, match="model.d_model='wide'"):
        GPT(vocab_size=10, max_seq_len=8, d_model="wide")
    with pytest.raises(ValueError, match="model.n_loops=4"):
        GPT(vocab_size=10, max_seq_len=8, n_loops=4)
    with pytest.raises(ValueError, match="model.depth"):
        GPT(vocab_size=10, max_seq_len=8, depth=3)


def test_masked_loss_counts_only_masked_positions():
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, 2] = 10.0
    targets = torch.tensor([[0, 2, 0]])
    only_middle = masked_cross_entropy(logits, targets, torch.tensor([[0.0, 1.0, 0.0]]))
    assert only_middle.item() < 1e-3
    everywhere = masked_cross_entropy(logits, targets, torch.ones(1, 3))
    assert everywhere.item() > 0.5


# --- fast ops, generation, sizes -----------------------------------------------------------


def test_fast_rope_and_swiglu_equal_the_plain_formulas_in_value_and_gradient():
    from trainer.models.ops import _RotaryQKV, _SwiGLU, rope_reference

    torch.manual_seed(0)
    qkv = torch.randn(2, 5, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    angles = torch.rand(5, 4, dtype=torch.float64) * 6
    cos, sin = angles.cos(), angles.sin()
    assert torch.autograd.gradcheck(lambda t: _RotaryQKV.apply(t, cos, sin), (qkv,))
    q, k, v = _RotaryQKV.apply(qkv, cos, sin)
    ref_q, ref_k, ref_v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    torch.testing.assert_close(q, rope_reference(ref_q, cos, sin))
    torch.testing.assert_close(k, rope_reference(ref_k, cos, sin))
    torch.testing.assert_close(v, ref_v)
    gate = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    value = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_SwiGLU.apply, (gate, value))
    torch.testing.assert_close(_SwiGLU.apply(gate, value), torch.nn.functional.silu(gate) * value)


def test_paired_rope_is_the_reference_rotation_in_another_feature_order():
    """The fast path projects with q's and k's rows of the qkv weight permuted so a head's
    rotation pairs sit side by side: the rotated q and k are the reference's up to that
    permutation, and so are the attention scores (the permutation is the same for q and k); the
    gradients reach x and the weight in its own row order."""
    from trainer.models.ops import RopeSlice, pair_interleave, rope_reference, rotary_pairs

    torch.manual_seed(0)
    B, T, H, h = 2, 5, 3, 8
    x = torch.randn(B, T, H * h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3 * H * h, H * h, dtype=torch.float64, requires_grad=True)
    angles = torch.rand(T, h // 2, dtype=torch.float64) * 6
    rope = RopeSlice(angles.cos(), angles.sin())
    rows = pair_interleave(H, h)
    assert sorted(rows.tolist()) == list(range(3 * H * h))
    inverse = torch.argsort(rows)
    plain = (x @ weight.T).view(B, T, 3, H, h).permute(2, 0, 3, 1, 4)
    q, k, v = rotary_pairs(x, weight, rows, inverse, rope, H)
    ref_q, ref_k = (rope_reference(t, rope.cos, rope.sin) for t in plain[:2])
    within = rows[:h]  # the permutation inside one head
    torch.testing.assert_close(q, ref_q[..., within])
    torch.testing.assert_close(k, ref_k[..., within])
    torch.testing.assert_close(v, plain[2])
    torch.testing.assert_close(q @ k.transpose(-2, -1), ref_q @ ref_k.transpose(-2, -1))
    assert torch.autograd.gradcheck(lambda a, w: rotary_pairs(a, w, rows, inverse, rope, H), (x, weight))


@pytest.mark.parametrize("cls", [GPT, AttnOnly, Looped])
def test_training_gradients_equal_the_explicit_path(cls):
    """The fast path (SDPA + hand-written backward) trains the same function as the plain one."""
    torch.manual_seed(0)
    model = cls(**SMALL).double()
    x = torch.randint(0, 50, (2, 12))
    grads = []
    for explicit in (False, True):
        model.zero_grad()
        out = model(x, return_attn=explicit)
        (out["logits"] if explicit else out).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for fast, plain in zip(*grads):
        torch.testing.assert_close(fast, plain)


@pytest.mark.parametrize("cls", [GPT, AttnOnly, Looped])
def test_cached_logits_equal_the_full_forward(cls):
    from trainer.models.generate import KVCache

    torch.manual_seed(0)
    model = cls(**SMALL).eval()
    x = torch.randint(0, 50, (2, 14))
    full = model(x)
    cache = KVCache(len(model.block_schedule()), model.config.max_seq_len)
    # A prompt of 5, one token, then 8 at once (the offset mask), as decoding feeds them.
    parts = [model(x[:, :5], cache=cache), model(x[:, 5:6], cache=cache), model(x[:, 6:], cache=cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == 14
    with pytest.raises(ValueError, match="max_seq_len=24"):
        model(torch.zeros(2, 11, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("cls", [GPT, AttnOnly, Looped])
def test_generation_with_the_cache_equals_generation_without(cls):
    torch.manual_seed(0)
    model = cls(**SMALL)
    prompt = torch.randint(0, 50, (3, 4))
    greedy = model.generate(prompt, 30, temperature=0)  # runs past max_seq_len=24: the window slides
    assert greedy.shape == (3, 34) and torch.equal(greedy[:, :4], prompt)
    assert torch.equal(greedy, model.generate(prompt, 30, temperature=0, use_cache=False))
    assert model.training, "generate restores the model's mode"
    sampled = [model.generate(prompt, 12, temperature=1.3, top_k=5, use_cache=use,
                              generator=torch.Generator().manual_seed(7)) for use in (True, False)]
    assert torch.equal(*sampled)
    assert not torch.equal(sampled[0], model.generate(prompt, 12, temperature=1.3, top_k=5,
                                                      generator=torch.Generator().manual_seed(8)))


def test_greedy_generation_is_the_argmax_and_top_k_limits_the_draws():
    torch.manual_seed(0)
    model = GPT(**SMALL).eval()
    prompt = torch.randint(0, 50, (1, 6))
    out = model.generate(prompt, 1, temperature=0)
    assert out[0, -1] == model(prompt)[0, -1].argmax()
    allowed = set(model(prompt)[0, -1].topk(2).indices.tolist())
    draws = {int(model.generate(prompt, 1, top_k=2, generator=torch.Generator().manual_seed(s))[0, -1])
             for s in range(40)}
    assert draws <= allowed and len(draws) == 2


def test_generation_stops_at_eos_and_pads_finished_rows():
    torch.manual_seed(0)
    model = GPT(**SMALL).eval()
    prompt = torch.randint(0, 50, (2, 3))
    eos = int(model.generate(prompt, 1, temperature=0)[0, -1])  # row 0 emits it at once
    out = model.generate(prompt, 10, temperature=0, eos_token_id=eos)
    free = model.generate(prompt, 10, temperature=0)
    assert torch.all(out[0, 3:] == eos)
    row1 = free[1, 3:].tolist()
    if eos in row1:  # row 1 ends too: generation stops there, padded after its eos
        stop = row1.index(eos) + 1
        assert out.shape[1] == 3 + stop and out[1, 3:].tolist() == row1[:stop]
    else:
        assert out.shape[1] == 13 and torch.equal(out[1], free[1])


def test_bad_generate_arguments_name_themselves():
    model = GPT(**SMALL)
    prompt = torch.zeros(1, 3, dtype=torch.long)
    for kwargs, key in [({"temperature": -1.0}, "temperature"), ({"top_k": 0}, "top_k"),
                        ({"eos_token_id": 50}, "eos_token_id"), ({"max_new_tokens": -2}, "max_new_tokens")]:
        with pytest.raises(ValueError, match=key):
            model.generate(prompt, **{"max_new_tokens": 2, **kwargs})
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="vocab_size=50"):
        model.generate(torch.full((1, 2), 50), 2)


def test_head_dim_sets_the_number_of_heads_and_a_size_ladder_spans_10x():
    sizes = []
    for d in (32, 64, 128, 256):
        model = GPT(vocab_size=512, max_seq_len=17, d_model=d, n_layer=2, head_dim=16)
        assert (model.config.n_head, model.config.head_dim) == (d // 16, 16)
        sizes.append(model.num_params())
    assert sizes == sorted(sizes) and sizes[-1] >= 10 * sizes[0]
    with pytest.raises(ValueError, match="model.head_dim=24"):
        GPT(vocab_size=10, max_seq_len=8, d_model=64, head_dim=24)
    # model.json round trip: the resolved fields rebuild the same model
    import dataclasses

    cfg = GPT(vocab_size=10, max_seq_len=8, d_model=64, n_head=4).config
    assert GPT(**dataclasses.asdict(cfg)).config == cfg


def test_mlp_width_rounding_and_flops_follow_the_weights():
    gpt = GPT(vocab_size=64, max_seq_len=16, d_model=128, n_head=4)
    assert gpt.config.mlp_hidden == 344 and gpt.blocks[0].mlp.up.weight.shape == (688, 128)
    assert GPT(vocab_size=64, max_seq_len=16, d_model=128, n_head=4,
               mlp_multiple_of=1).config.mlp_hidden == 341
    # 6 x every applied weight matrix (tied head counted as applied) + 12 L d T
    matrices = sum(p.numel() for p in gpt.blocks.parameters() if p.dim() == 2)
    assert gpt.flops_per_token(16) == 6 * (matrices + 64 * 128) + 12 * 2 * 128 * 16
    looped = Looped(vocab_size=64, max_seq_len=16, d_model=128, n_head=4, n_layer=1, n_loops=3)
    one = sum(p.numel() for p in looped.blocks.parameters() if p.dim() == 2)
    assert looped.flops_per_token(16) == 6 * (3 * one + 64 * 128) + 12 * 3 * 128 * 16


def test_rmsnorm_option_keeps_parameter_names():
    ln = GPT(**SMALL)
    rms = GPT(**SMALL, norm="rmsnorm")
    assert [n for n, _ in ln.named_parameters()] == [n for n, _ in rms.named_parameters()]
    assert isinstance(rms.blocks[0].norm1, torch.nn.RMSNorm)
    with pytest.raises(ValueError, match="model.norm='batch'"):
        GPT(**SMALL, norm="batch")


def test_init_scale_multiplies_the_initial_weights_once_and_spares_the_norms():
    base = GPT(**SMALL)
    torch.manual_seed(0)
    plain = GPT(**SMALL)
    torch.manual_seed(0)
    small = GPT(**SMALL, init_scale=0.25)  # tied embeddings: the shared matrix scaled once
    for (name, p), q in zip(plain.named_parameters(), small.parameters()):
        expected = p if "norm" in name else 0.25 * p
        torch.testing.assert_close(q, expected, msg=name)
    assert base.config.init_scale == 1.0
    with pytest.raises(ValueError, match="model.init_scale=0"):
        GPT(**SMALL, init_scale=0.0)


def test_rope_backward_copies_no_gradient(monkeypatch):
    """The fused RoPE backward reads SDPA's gradients of q and k in place, also with several heads
    (they arrive in the [B, T, H, h] layout of q and k): a copy of each, per layer and step, cost
    gpt_small ~2% of its step when it crept in."""
    torch.manual_seed(0)
    model = GPT(vocab_size=50, max_seq_len=16, n_layer=2, n_head=4, d_model=32)
    loss = model(torch.randint(0, 50, (3, 16))).sum()
    copies = []
    original = torch.Tensor.contiguous

    def counting(self, *args, **kwargs):
        copies.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "contiguous", counting)
    loss.backward()
    monkeypatch.setattr(torch.Tensor, "contiguous", original)
    assert copies == []
    assert model.blocks[0].attn.qkv.weight.grad is not None


def test_rope_backward_takes_gradients_of_any_layout():
    """Gradients of q and k with odd strides (through a cat, here) or transposed reach x and the
    weight as the plain formula's do."""
    from trainer.models.ops import RopeSlice, pair_interleave, rotary_pairs

    torch.manual_seed(0)
    B, T, H, h = 2, 5, 3, 8
    x = torch.randn(B, T, H * h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3 * H * h, H * h, dtype=torch.float64, requires_grad=True)
    angles = torch.rand(T, h // 2, dtype=torch.float64) * 6
    rows = pair_interleave(H, h)

    def loss(q, k, v):
        padded = torch.cat([q, torch.ones(B, H, T, 1, dtype=q.dtype)], dim=-1)  # odd strides
        return (padded.sin().sum() + k.transpose(-2, -1).cos().sum() + (v * v).sum())

    q, k, v = rotary_pairs(x, weight, rows, torch.argsort(rows), RopeSlice(angles.cos(), angles.sin()), H)
    grads = torch.autograd.grad(loss(q, k, v), (x, weight))
    # The same function from the plain formulas: the reference rotation, then the permutation.
    from trainer.models.ops import rope_reference

    plain = (x @ weight.T).view(B, T, 3, H, h).permute(2, 0, 3, 1, 4)
    within = rows[:h]
    ref_q, ref_k = (rope_reference(t, angles.cos(), angles.sin())[..., within] for t in plain[:2])
    expected = torch.autograd.grad(loss(ref_q, ref_k, plain[2]), (x, weight))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("cls", [GPT, AttnOnly, Looped])
def test_mup_at_its_base_width_is_sp(cls):
    """base_width = d_model: the same weights, logits and optimizer as the standard model."""
    torch.manual_seed(0)
    sp = cls(**SMALL, init="gpt2")
    torch.manual_seed(0)
    mup = cls(**SMALL, init="gpt2", parametrization="mup", base_width=SMALL["d_model"])
    ids = torch.randint(0, 50, (2, 24))
    torch.testing.assert_close(mup(ids), sp(ids), rtol=0, atol=0)
    assert [len(g["params"]) for g in mup.optimizer_groups(0.1)] == \
        [len(g["params"]) for g in sp.optimizer_groups(0.1)]


@pytest.mark.parametrize("init", ["gpt2", "torch"])
def test_mup_scales_hidden_init_lr_and_decay_by_the_width_ratio(init):
    """4x the base width: hidden matrices init std / 2 (relative to SP at the base: gpt2 is
    width-independent, torch's default already follows fan_in), lr / 4, decay x 4 (lr x wd
    fixed); embeddings, readout and norms keep SP's lr."""
    base = dict(SMALL, d_model=16, n_head=1, init=init)
    wide = dict(base, d_model=64)
    torch.manual_seed(0)
    small = GPT(**base, parametrization="mup", base_width=16)
    torch.manual_seed(0)
    big = GPT(**wide, parametrization="mup", base_width=16)
    ratio = float(big.blocks[0].attn.qkv.weight.std() / small.blocks[0].attn.qkv.weight.std())
    assert ratio == pytest.approx(0.5, rel=0.1)
    decay, no_decay, hidden = big.optimizer_groups(0.1)
    assert hidden["lr_scale"] == 0.25 and hidden["weight_decay"] == pytest.approx(0.4)
    assert len(hidden["params"]) == 4 * SMALL["n_layer"]  # qkv, proj, up, down per block
    assert any(p is big.tok_emb.weight for p in decay["params"]) and "lr_scale" not in decay
    assert big.blocks[1].attn.scale == pytest.approx(16**0.5 / 64)  # 1/head_dim, 1/sqrt(16) at base


def test_bad_parametrization_names_the_key():
    with pytest.raises(ValueError, match="model.parametrization='mu'"):
        GPT(**SMALL, parametrization="mu")
    with pytest.raises(ValueError, match="model.base_width=None must be an integer >= 1"):
        GPT(**SMALL, parametrization="mup")
    with pytest.raises(ValueError, match="model.base_width=0"):
        GPT(**SMALL, parametrization="mup", base_width=0)
    with pytest.raises(ValueError, match="model.base_width=9 is not divisible by model.n_head=2"):
        GPT(**SMALL, parametrization="mup", base_width=9)
    with pytest.raises(ValueError, match="model.mup_output_mult=2.0 applies only"):
        GPT(**SMALL, mup_output_mult=2.0)
