"""elab-export: the exported model, reloaded from disk by the other library, gives the lab's
logits (max |difference| <= 1e-4, float32) for every model family, or is refused clearly."""

from __future__ import annotations

import importlib.util
import json
import warnings

import pytest
import torch

from tests.run_dir_factory import bursty_sampler, make_model, make_run, text_sampler
from trainer.export import cli, common
from trainer.run_files import load_model

pytest.importorskip("transformers")
pytest.importorskip("transformer_lens")
warnings.filterwarnings("ignore", category=DeprecationWarning)  # HookedTransformer in TL 3.x
FAMILIES = ("swiglu", "gelu", "attn_only", "looped", "rmsnorm", "mup")


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return text_sampler(tmp_path_factory.mktemp("cache"), "bpe")


def reload(target: str, out):
    """The exported model as a user of that library opens it, and its logits function."""
    if target == "hf":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(out).eval()
        return model, lambda ids: model(ids).logits
    spec = importlib.util.spec_from_file_location("load_tl", out / "load_tl.py")
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    model = loader.load(out)
    return model, lambda ids: model(ids, return_type="logits")


def lab_and_exported(run, target, out):
    lab, _ = load_model(run)
    _, logits = reload(target, out)
    ids = torch.randint(0, lab.config.vocab_size, (3, lab.config.max_seq_len),
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return lab(ids), logits(ids)


@pytest.mark.parametrize("target", ["hf", "transformer_lens"])
@pytest.mark.parametrize("family", FAMILIES)
def test_exported_logits_equal_the_labs(tmp_path, text, family, target, capsys):
    model = make_model(family, text.vocab_size, text.seq_len)
    run = make_run(tmp_path / "run", text, model)
    out = tmp_path / "out"
    assert cli.main([str(run), "--to", target, str(out)]) == 0
    want, got = lab_and_exported(run, target, out)
    assert want.abs().max() > 1.0  # random weights: logits far from zero, so 1e-4 means something
    assert (want - got).abs().max() <= common.TOLERANCE
    record = json.loads((out / "elab_export.json").read_text())
    assert record["max_abs_logit_diff"] <= common.TOLERANCE
    printed = capsys.readouterr().out
    if family == "looped":
        assert "unrolled into 3 layers" in printed and record["note"]
    expected = {"hf": {"gelu": "GPTNeoXForCausalLM", "rmsnorm": "LlamaForCausalLM"},
                "transformer_lens": {}}[target]
    default = "StableLmForCausalLM" if target == "hf" else "HookedTransformer"
    assert record["architecture"] == expected.get(family, default)


def test_an_attention_only_hf_export_loads_without_warnings(tmp_path, text):
    model = make_model("attn_only", text.vocab_size, text.seq_len)
    run = make_run(tmp_path / "run", text, model)
    assert cli.main([str(run), "--to", "hf", str(tmp_path / "out")]) == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reload("hf", tmp_path / "out")
    assert not [w for w in caught if "zero-element" in str(w.message)], [str(w.message) for w in caught]


def test_a_wrong_mapping_is_caught(tmp_path, text, monkeypatch):
    """The export's own check refuses a model whose logits do not match (here: a transposed
    output projection), instead of leaving a silently wrong directory behind."""
    from trainer.export import hf

    original = hf._stablelm

    def transposed_o(model, blocks, eos):
        cls, config, sd = original(model, blocks, eos)
        sd["model.layers.0.self_attn.o_proj.weight"] = sd["model.layers.0.self_attn.o_proj.weight"].T
        return cls, config, sd

    monkeypatch.setattr(hf, "_stablelm", transposed_o)
    run = make_run(tmp_path / "run", text, make_model("swiglu", text.vocab_size, text.seq_len))
    with pytest.raises(RuntimeError, match="differ from the lab's"):
        cli.main([str(run), "--to", "hf", str(tmp_path / "out")])


def test_hf_export_carries_the_runs_tokenizer(tmp_path, text):
    from transformers import AutoTokenizer

    run = make_run(tmp_path / "run", text, make_model("swiglu", text.vocab_size, text.seq_len))
    assert cli.main([str(run), "--to", "hf", str(tmp_path / "out")]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    sentence = "The capital of the north is Velmora."
    assert tokenizer(sentence)["input_ids"] == text.tokenizer.encode_batch([sentence])[0].tolist()
    assert tokenizer.eos_token_id == text.tokenizer.eos_id


def test_byte_runs_get_an_equivalent_tokenizer_json(tmp_path):
    from transformers import AutoTokenizer

    sampler = text_sampler(tmp_path / "cache", "byte")
    run = make_run(tmp_path / "run", sampler, make_model("gelu", sampler.vocab_size, 64))
    assert cli.main([str(run), "--to", "hf", str(tmp_path / "out")]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    for sentence in ["plain ascii", "héllo wörld 日本"]:
        want = sampler.tokenizer.encode_batch([sentence])[0].tolist()
        assert tokenizer(sentence)["input_ids"] == want
        assert tokenizer.decode(want) == sentence


def test_transformer_lens_attention_pattern_is_the_labs(tmp_path, text):
    """Open the export in TransformerLens, read an attention pattern from run_with_cache."""
    model = make_model("swiglu", text.vocab_size, text.seq_len)
    run = make_run(tmp_path / "run", text, model)
    out = tmp_path / "tl"
    assert cli.main([str(run), "--to", "transformer_lens", str(out)]) == 0
    tl_model, _ = reload("transformer_lens", out)
    tokens = tl_model.to_tokens("Velmora is the capital")
    assert tokens[0, 0].item() == text.tokenizer.eos_id  # BOS is <|eos|>, as in training
    _, cache = tl_model.run_with_cache(tokens)
    pattern = cache["pattern", 1]  # [batch, head, query, key]
    T = tokens.shape[1]
    assert pattern.shape == (1, 2, T, T)
    assert torch.allclose(pattern.sum(-1), torch.ones(1, 2, T), atol=1e-5)
    assert pattern.triu(1).abs().max() == 0  # causal
    with torch.no_grad():
        lab_attn = model(tokens, return_attn=True)["attn"][1]
    assert (pattern - lab_attn).abs().max() < 1e-5


@pytest.mark.parametrize("target", ["hf", "transformer_lens"])
def test_item_vector_models_are_refused(tmp_path, target, capsys):
    sampler = bursty_sampler(item_mode="vector", item_dim=8)
    model = make_model("attn_only", sampler.vocab_size, sampler.seq_len, item_dim=8)
    run = make_run(tmp_path / "run", sampler, model)
    assert cli.main([str(run), "--to", target, str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "item_dim=8" in err and "cannot express" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "config.json").exists()


def test_rmsnorm_with_gelu_goes_to_transformer_lens_only(tmp_path, text, capsys):
    run = make_run(tmp_path / "run", text, make_model("rmsnorm_gelu", text.vocab_size, 64))
    assert cli.main([str(run), "--to", "hf", str(tmp_path / "hf")]) == 2
    assert "--to transformer_lens expresses it" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
    assert cli.main([str(run), "--to", "transformer_lens", str(tmp_path / "tl")]) == 0
    want, got = lab_and_exported(run, "transformer_lens", tmp_path / "tl")
    assert (want - got).abs().max() <= common.TOLERANCE


def test_synthetic_task_exports_with_its_vocabulary(tmp_path):
    sampler = bursty_sampler()
    model = make_model("attn_only", sampler.vocab_size, sampler.seq_len)
    run = make_run(tmp_path / "run", sampler, model)
    assert cli.main([str(run), "--to", "transformer_lens", str(tmp_path / "out")]) == 0
    vocab = json.loads((tmp_path / "out" / "vocabulary.json").read_text())
    assert vocab["names"][:4] == ["L0", "L1", "L2", "L3"] and vocab["names"][4] == "c0"
    want, got = lab_and_exported(run, "transformer_lens", tmp_path / "out")
    assert (want - got).abs().max() <= common.TOLERANCE


def test_all_checkpoints_exports_the_trail(tmp_path, text):
    model = make_model("swiglu", text.vocab_size, text.seq_len)
    run = make_run(tmp_path / "run", text, model, steps=(2, 5, 9))
    out = tmp_path / "trail"
    assert cli.main([str(run), "--to", "hf", str(out), "--all-checkpoints"]) == 0
    index = json.loads((out / "checkpoints.json").read_text())
    assert [e["step"] for e in index] == [2, 5, 9]  # last.ckpt is step 9 again: not twice
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, text.vocab_size, (1, 16))
    outputs = []
    for entry in index:
        lab, step = load_model(run, entry["step"])
        exported = AutoModelForCausalLM.from_pretrained(out / entry["dir"]).eval()
        with torch.no_grad():
            want, got = lab(ids), exported(ids).logits
        assert step == entry["step"] and (want - got).abs().max() <= common.TOLERANCE
        outputs.append(got)
    assert (outputs[0] - outputs[1]).abs().max() > 1.0  # different checkpoints, different models


def test_missing_extra_says_how_to_install(tmp_path, text, monkeypatch, capsys):
    run = make_run(tmp_path / "run", text, make_model("swiglu", text.vocab_size, text.seq_len))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real(name, *a))
    assert cli.main([str(run), "--to", "hf", str(tmp_path / "out")]) == 2
    assert "pip install -e '.[interp]'" in capsys.readouterr().err
