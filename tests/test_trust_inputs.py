"""Trust, second pass: broken files, unwritable paths and values that ran for hours or measured
nothing now stop with exit 2 and one line naming the file, path or key. The broken files are made
here: a real tiny run's checkpoints truncated, emptied or replaced by a pickle that would run code.
(Tests run as root, where a read-only mode does not stop writes: an unwritable path is one under a
file, which fails with ENOTDIR or EEXIST for everyone.)"""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from data_mixers.base import DataConfigError
from data_mixers.sources.hf import HFSource
from data_mixers.text_mixer import TextMixer
from tests.conftest import compose_cfg
from tests.run_dir_factory import SMALL_WORLD, bursty_sampler, make_model, make_run
from tests.test_analysis import write_run
from trainer import sample
from trainer.analysis import analyze_sweep_main, plot_run_main
from trainer.config import ConfigError, check_probes_fit
from trainer.export.cli import main as export_main
from trainer.retro import main as retro_main
from trainer.retro_lock import lock_retro
from trainer.run_dir import trail_steps

TINY = ["pl=cpu", "progress=none", "data=modular_arithmetic", "data.p=13", "model=gpt_tiny",
        "model.n_layer=1", "model.d_model=32", "batch.global_size=16", "budget.tokens=1280",
        "log_every_n_steps=1", "checkpoint_every_n_steps=5", "optim.warmup_steps=5"]


class Payload:
    """What a crafted checkpoint would run if it were unpickled: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real tiny run (20 steps, a trail of checkpoints); tests break copies of it."""
    from trainer.train import train

    base = tmp_path_factory.mktemp("trained")
    train(compose_cfg([*TINY, f"paths.cache_dir={base / 'cache'}"], base / "run"))
    return base / "run"


@pytest.fixture
def run(trained, tmp_path):
    return shutil.copytree(trained, tmp_path / "run")


def retro(run, capsys, *args):
    rc = retro_main([str(run), "--no-progress", "--monitors", "probes", *map(str, args)])
    return rc, capsys.readouterr().err


@pytest.mark.slow
def test_retro_names_an_empty_truncated_or_crafted_checkpoint(run, capsys, tmp_path):
    trail = trail_steps(run / "checkpoints")
    first, second, third = list(trail)[:3]
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(b"")
    rc, err = retro(run, capsys, "--all")
    assert rc == 2 and f"checkpoint {last} is empty" in err and "killed while writing" in err
    assert "Traceback" not in err
    last.write_bytes(data)

    trail[first].write_bytes(trail[first].read_bytes()[:1000])
    rc, err = retro(run, capsys, "--steps", first)
    assert rc == 2 and f"checkpoint {trail[first]} is truncated" in err

    marker = tmp_path / "payload-ran"
    trail[second].write_bytes(pickle.dumps({"state_dict": Payload(marker), "global_step": 2}))
    rc, err = retro(run, capsys, "--steps", second)
    assert rc == 2 and str(trail[second]) in err and "nothing in it was run" in err
    assert not marker.exists()
    assert retro(run, capsys, "--steps", third)[0] == 0  # the sound ones still measure


@pytest.mark.slow
def test_retro_names_a_malformed_config_or_events_file(run, capsys):
    events = run / "events.jsonl"
    events.write_text("[1, 2]\n")
    rc, err = retro(run, capsys)
    assert rc == 2 and f"{events}, event 1" in err
    events.write_text('{"series": "probe/x/acc", "onset_step": \n{}\n')
    rc, err = retro(run, capsys)
    assert rc == 2 and f"{events}, line 1" in err
    events.write_text("")
    config = run / ".hydra" / "config.yaml"
    for broken in ("model: [unclosed\n", "- a list\n- not a config\n"):
        config.write_text(broken)
        rc, err = retro(run, capsys, "--steps", 20)
        assert rc == 2 and str(config) in err and "Traceback" not in err


@pytest.mark.slow
def test_a_second_retro_is_refused_and_a_vanished_checkpoint_skipped(run, capsys, monkeypatch,
                                                                    caplog):
    (run / "retro").mkdir()
    held = lock_retro(run / "retro")
    try:
        rc, err = retro(run, capsys, "--steps", 20)
        assert rc == 2 and "another elab-retro" in err
    finally:
        held.close()
    # The run thins its trail between the listing and the loading: skipped with a warning.
    import trainer.retro as retro_module

    real = retro_module.checkpoints
    gone = run / "checkpoints" / "step-4.ckpt"
    monkeypatch.setattr(retro_module, "checkpoints",
                        lambda d: (real(d), gone.unlink(missing_ok=True))[0])
    rc, err = retro(run, capsys, "--all")
    assert rc == 0 and "step-4.ckpt vanished" in err + caplog.text
    steps = [int(line.split(",")[1]) for line in
             (run / "retro" / "metrics.csv").read_text().splitlines()[1:]]
    assert 4 not in steps and {3, 6, 20} <= set(steps)
    assert sorted(p.name for p in (run / "retro").iterdir() if "tmp" in p.name) == []


@pytest.mark.slow
def test_unwritable_output_paths_exit_2_naming_the_path(run, capsys, tmp_path):
    (run / "retro").write_text("a file where retro/ belongs")
    rc, err = retro(run, capsys, "--steps", 20)
    assert rc == 2 and str(run / "retro") in err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc = export_main([str(run), "--to", "hf", str(blocker / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and str(blocker / "out") in err and "Traceback" not in err


def test_plot_and_analyze_to_an_unwritable_path_exit_2_naming_it(tmp_path, capsys):
    write_run(tmp_path / "sweep" / "0", ["data.n_classes=16"], jumps=True)
    write_run(tmp_path / "sweep" / "1", ["data.n_classes=64"], jumps=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert plot_run_main([str(tmp_path / "sweep" / "0"), "-o", str(blocker / "run.png")]) == 2
    assert f"{blocker / 'run.png'}" in capsys.readouterr().err
    assert analyze_sweep_main([str(tmp_path / "sweep"), "-o", str(blocker / "out")]) == 2
    assert str(blocker / "out") in capsys.readouterr().err


@pytest.fixture
def bursty_run(tmp_path):
    sampler = bursty_sampler()
    return make_run(tmp_path / "run", sampler, make_model("attn_only", sampler.vocab_size,
                                                          sampler.seq_len))


def sample_cli(capsys, *args):
    rc = sample.main([str(a) for a in args])
    return rc, capsys.readouterr().err


def test_sample_caps_max_new_tokens_naming_the_limit(bursty_run, capsys):
    rc, err = sample_cli(capsys, bursty_run, "c3 L1", "--max-new-tokens", 10_000_000)
    limit = sample.max_new_tokens_limit(bursty_sampler().seq_len)
    assert rc == 2 and "--max-new-tokens=10000000" in err and f"at most {limit}" in err
    assert sample_cli(capsys, bursty_run, "c3 L1", "--max-new-tokens", 200)[0] == 0  # default


def test_run_files_that_are_torn_or_of_the_wrong_shape_are_named(bursty_run, capsys):
    model_json = bursty_run / "model.json"
    good = model_json.read_text()
    for broken in ('["a", "list"]', good[: len(good) // 2]):
        model_json.write_text(broken)
        rc, err = sample_cli(capsys, bursty_run)
        assert rc == 2 and str(model_json) in err and "Traceback" not in err
    model_json.write_text(good)
    probes = bursty_run / "probes.npz"
    probes.write_bytes(probes.read_bytes()[:200])
    rc, err = sample_cli(capsys, bursty_run, "--probe", "icl")
    assert rc == 2 and str(probes) in err
    with open(probes, "wb") as f:
        np.savez(f, **{"icl/input_ids": np.array([{"a": 1}], dtype=object)})
    rc, err = sample_cli(capsys, bursty_run, "--probe", "icl")
    assert rc == 2 and str(probes) in err


def test_an_empty_last_checkpoint_says_what_happened(bursty_run, capsys):
    from trainer.resume import resume_check

    last = bursty_run / "checkpoints" / "last.ckpt"
    last.write_bytes(b"")
    rc, err = sample_cli(capsys, bursty_run)
    assert rc == 2 and f"checkpoint {last} is empty" in err and "killed while writing" in err
    with pytest.raises(ConfigError, match=r"ckpt_path='last': checkpoint .* is empty .*killed"):
        resume_check(last, "last", {})  # elab-train ckpt_path=last


@pytest.fixture(scope="module")
def world_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("world-cache")


def test_holding_out_more_documents_than_a_domain_has_is_refused(world_cache):
    mixer = TextMixer(source=SMALL_WORLD, seq_len=64, tokenizer={"kind": "byte"},
                      cache_dir=world_cache, heldout_docs_per_domain=100000)
    with pytest.raises(DataConfigError, match=r"data.heldout_docs_per_domain=100000 .*at most \d+"):
        mixer.prepare()


def test_a_window_too_short_for_the_questions_is_refused_when_probing(world_cache, tmp_path):
    short = TextMixer(source=SMALL_WORLD, seq_len=8, tokenizer={"kind": "byte"},
                      cache_dir=world_cache)
    short.prepare()
    with pytest.raises(ConfigError, match=r"data.seq_len=8 .*world_facts.*data.seq_len >= \d+"):
        check_probes_fit(compose_cfg(["data=world"], tmp_path), short)
    check_probes_fit(compose_cfg(["data=world", "callbacks=minimal"], tmp_path), short)
    wide = TextMixer(source=SMALL_WORLD, seq_len=64, tokenizer={"kind": "byte"},
                     cache_dir=world_cache)
    wide.prepare()  # world_recall completes descriptions longer than 64 bytes: cut as training cuts
    check_probes_fit(compose_cfg(["data=world"], tmp_path), wide)


@pytest.mark.parametrize("content,word", [(b"", "is empty"),
                                          (b'{"text": "caf\xe9 \xff"}\n', "not valid UTF-8")])
def test_an_empty_or_undecodable_hf_file_is_named(tmp_path, content, word):
    path = tmp_path / "notes.jsonl"
    path.write_bytes(content)
    source = HFSource(data_files=str(path), load_kwargs={"cache_dir": str(tmp_path / "hf")})
    with pytest.raises(DataConfigError, match=word) as info:
        list(source.documents())
    assert str(path) in str(info.value)


@pytest.mark.parametrize("overrides,key", [
    (["callbacks.trail.budget_mb=0"], "callbacks.trail.budget_mb"),
    (["+callbacks.llc._target_=trainer.monitors.llc.LLCMonitor", "+callbacks.llc.chains=0"],
     "callbacks.llc.chains"),
])
def test_a_callback_setting_it_refuses_is_named_before_training(tmp_path, overrides, key):
    from trainer.train import train

    with pytest.raises(ConfigError, match=key):
        train(compose_cfg([*TINY, f"paths.cache_dir={tmp_path / 'cache'}", *overrides],
                          tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("overrides,key", [
    (["model.d_model=4096", "model.n_layer=4"], "model.d_model=4096"),
    (["batch.global_size=10000000", "budget.tokens=1000000000"], "batch.global_size=10000000"),
])
def test_a_run_too_large_for_memory_is_refused_naming_the_sizes(tmp_path, monkeypatch,
                                                                 overrides, key):
    import trainer.memory
    from trainer.train import train

    monkeypatch.setattr(trainer.memory, "available_bytes", lambda: 2**30)  # a 1 GiB machine
    with pytest.raises(ConfigError, match=f"more than the 1.0 GiB .*{key}"):
        train(compose_cfg([*TINY, f"paths.cache_dir={tmp_path / 'cache'}", *overrides],
                          tmp_path / "run"))
    assert not (tmp_path / "run" / "model.json").exists()  # refused before anything was written


@pytest.mark.slow
def test_a_sweep_into_a_busy_sweep_dir_says_so_in_one_line(tmp_path):
    """Job 0's dir is locked by a live process (another sweep's job): that job is refused, the
    other runs, and the sweep ends with exit 2 and one line, not a traceback."""
    import subprocess
    import sys

    from tests.test_faults import _cli

    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    lock = sweep / "0" / ".lock"
    holder = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
              "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid=%d' % os.getpid()); "
              "print('held', flush=True); time.sleep(300)")
    other = subprocess.Popen([sys.executable, "-c", holder, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"  # the lock is taken before the sweep starts
        proc = _cli(["-m", *TINY, "callbacks=minimal", f"paths.cache_dir={tmp_path / 'cache'}",
                     f"hydra.sweep.dir={sweep}", "data.p=13,17"], tmp_path)
        out, _ = proc.communicate(timeout=600)
    finally:
        other.kill()
        other.wait()
    assert proc.returncode == 2 and "Traceback" not in out
    assert "error: a job of the sweep refused its input" in out and str(sweep / "0") in out
    assert json.loads((sweep / "1" / "summary.json").read_text())["status"] == "completed"
