"""elab-sample: a run dir alone gives back a model that writes text, or answers a probe row."""

from __future__ import annotations

import pickle

import pytest
import torch

from tests.conftest import compose_cfg
from tests.run_dir_factory import bursty_sampler, make_model, make_run, text_sampler
from trainer import sample
from trainer.run_files import load_model


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return text_sampler(tmp_path_factory.mktemp("cache"), "byte")


@pytest.fixture
def text_run(tmp_path, text):
    return make_run(tmp_path / "run", text, make_model("swiglu", text.vocab_size, 64),
                    steps=(3, 8))


def run_cli(args, capsys):
    rc = sample.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def greedy_without_cache(model, ids, n):
    """Greedy decoding the slow way: a full forward pass per token."""
    ids = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0].tolist()


def test_greedy_text_is_the_models_argmax_continuation(text_run, text, capsys):
    rc, out, err = run_cli([text_run, "The capital", "--max-new-tokens", "12"], capsys)
    assert rc == 0 and "checkpoint last.ckpt (step 8)" in err
    model, _ = load_model(text_run)
    prompt = [text.tokenizer.eos_id, *text.tokenizer.encode_batch(["The capital"])[0].tolist()]
    want = greedy_without_cache(model, prompt, 12)
    new = want[len(prompt):]
    if text.tokenizer.eos_id in new:
        new = new[: new.index(text.tokenizer.eos_id)]
    assert out.rstrip("\n") == "The capital" + text.tokenizer.decode(new)


def test_sampling_follows_the_seed(text_run, capsys):
    args = [text_run, "a", "--temperature", "1.5", "--max-new-tokens", "40"]
    first = run_cli([*args, "--seed", "1"], capsys)[1]
    assert run_cli([*args, "--seed", "1"], capsys)[1] == first
    assert run_cli([*args, "--seed", "2"], capsys)[1] != first
    top1 = run_cli([*args, "--seed", "3", "--top-k", "1"], capsys)[1]
    assert top1 == run_cli([text_run, "a", "--max-new-tokens", "40"], capsys)[1]  # top-1 = greedy


def test_checkpoint_picks_a_step_of_the_trail(text_run, capsys):
    rc, out3, err = run_cli([text_run, "x", "--checkpoint", "3", "--max-new-tokens", "30"], capsys)
    assert rc == 0 and "step-3.ckpt (step 3)" in err
    assert out3 != run_cli([text_run, "x", "--max-new-tokens", "30"], capsys)[1]
    rc, _, err = run_cli([text_run, "x", "--checkpoint", "4"], capsys)
    assert rc == 2 and "step-3.ckpt, step-8.ckpt, last.ckpt" in err


def test_bursty_probe_row_shows_context_answer_and_distribution(tmp_path, capsys):
    sampler = bursty_sampler()
    model = make_model("attn_only", sampler.vocab_size, sampler.seq_len)
    run = make_run(tmp_path / "run", sampler, model)
    rc, out, _ = run_cli([run, "--probe", "icl", "--row", "2", "--top", "4"], capsys)
    assert rc == 0
    probe = sampler.probe_sets()[0]
    names = [f"L{k}" for k in range(4)] + [f"c{c}" for c in range(32)]
    context = " ".join(names[i] for i in probe.batch["input_ids"][2])
    right = names[probe.batch["targets"][2, -1]]
    assert f"context: {context}" in out and f"right answer: {right}" in out
    with torch.no_grad():
        probs = model(torch.as_tensor(probe.batch["input_ids"][2:3]))[0, -1].softmax(-1)
    best = probs.argmax().item()
    lines = out.split("model's answers:\n")[1].splitlines()
    assert len(lines) == 4
    assert lines[0].split()[0] == names[best] and float(lines[0].split()[1]) == pytest.approx(
        probs[best].item(), abs=1e-3)
    # Without a prompt, a synthetic run shows its first probe, row 0.
    rc, out, _ = run_cli([run], capsys)
    assert rc == 0 and out.startswith("probe icl, row 0")
    rc, _, err = run_cli([run, "--probe", "icl", "--row", "99"], capsys)
    assert rc == 2 and "--row=99" in err
    rc, _, err = run_cli([run, "--probe", "nope"], capsys)
    assert rc == 2 and "icl, iwl" in err


def test_symbolic_prompt_for_a_synthetic_task(tmp_path, capsys):
    sampler = bursty_sampler()
    run = make_run(tmp_path / "run", sampler, make_model("gelu", sampler.vocab_size, 9))
    rc, out, _ = run_cli([run, "c3 L1 c5", "--max-new-tokens", "2"], capsys)
    assert rc == 0 and out.startswith("c3 L1 c5 ") and len(out.split()) == 5
    rc, _, err = run_cli([run, "c3 L9"], capsys)
    assert rc == 2 and "'L9' is not in this run's vocabulary" in err


def test_an_unsafe_checkpoint_is_refused(text_run, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("ran code",))

    with open(text_run / "checkpoints" / "last.ckpt", "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    rc, out, err = run_cli([text_run, "x"], capsys)
    assert rc == 2 and "cannot load" in err and "ran code" not in out + err


@pytest.mark.slow
def test_a_trained_run_dir_alone_rebuilds_the_model(tmp_path, capsys):
    """End to end: a real (tiny) training run on the knowledge world, then elab-sample reads
    nothing but the run dir -- the Hydra config is removed first."""
    from trainer.train import train

    run = tmp_path / "run"
    overrides = ["pl=cpu", "progress=none", "callbacks=minimal", "data=world",
                 "data.source.n_domains=2", "data.source.entities_per_domain=8",
                 "data.tokenizer.vocab_size=300", "data.seq_len=64", "model=gpt_tiny",
                 "model.d_model=32", "batch.global_size=8", "budget.tokens=5120",
                 "optim.warmup_steps=2", f"paths.cache_dir={tmp_path / 'cache'}"]
    train(compose_cfg(overrides, run))
    for path in (run / ".hydra").iterdir():
        path.unlink()
    capsys.readouterr()  # the training run's own output
    rc, out, err = run_cli([run, "The", "--max-new-tokens", "20"], capsys)
    assert rc == 0 and out.startswith("The") and "step 10" in err
