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
