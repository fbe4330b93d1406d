"""The run lock excludes: two starters released together, at the RunLock level (200 times) and
through the real entry point, give exactly one run; a holder is named (host, pid) with a remedy;
a dead holder's lock, or a file naming some other live pid, is free; a `.lock` that is a directory
is refused naming the file."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainer.config import ConfigError
from trainer.runlock import RunDirBusy, RunLock

ENV = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
       "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

# One contestant of the race: for each trial, meet the other contestant (each touches a file and
# waits for the other's), try the lock at once, meet again once both have tried, then release.
CONTESTANT = r"""
import sys, time
from pathlib import Path
from trainer.runlock import RunDirBusy, RunLock
d, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
other, deadline = ("b" if me == "a" else "a"), time.time() + 60
def meet(tag):
    (d / f"{tag}.{me}").touch()
    while not (d / f"{tag}.{other}").exists():
        if time.time() > deadline:
            sys.exit("the other contestant never came")
        time.sleep(0.0002)
held = []
for i in range(n):
    lock = RunLock(d / "run")
    meet(f"go{i}")
    try:
        lock.acquire()
        held.append("1")
    except RunDirBusy:
        held.append("0")
    meet(f"tried{i}")
    lock.release()
print("".join(held))
"""


def test_two_starters_released_together_200_times_exactly_one_holds(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", CONTESTANT, str(tmp_path), me, "200"],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me in "ab"]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    a, b = (out.strip() for out, _ in outs)
    both = sum(x == y == "1" for x, y in zip(a, b))
    neither = sum(x == y == "0" for x, y in zip(a, b))
    assert len(a) == len(b) == 200 and both == 0 and neither == 0, (both, neither)
    assert not (tmp_path / "run" / ".lock").exists(), "the last holder removed its lock"


# The real entry point, imported once, then forked per trial: each child waits for the start
# file, so both children of a trial start `elab-train` into one run dir at the same moment.
ENTRY = r"""
import os, sys, time
from pathlib import Path
from trainer.train import main
go, run, n, args = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
children = []
for i in range(n):
    pid = os.fork()
    if pid == 0:
        while not Path(f"{go}{i}").exists():
            time.sleep(0.001)
        sys.argv = ["elab-train", f"hydra.run.dir={run}{i}", *args]
        try:
            main()
        except SystemExit as exc:
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        os._exit(0)
    children.append(pid)
print("ready", flush=True)
print(" ".join(str(os.waitstatus_to_exitcode(os.waitpid(c, 0)[1])) for c in children))
"""


@pytest.mark.slow
def test_two_elab_train_into_one_dir_released_together_one_runs_the_other_exits_2(tmp_path, tiny_overrides):
    trials = 2
    args = [*tiny_overrides, "callbacks=minimal"]
    procs = [subprocess.Popen([sys.executable, "-c", ENTRY, str(tmp_path / "go"),
                               str(tmp_path / "run"), str(trials), *args],
                              env=ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]
    for i in range(trials):  # the trials run side by side: a start file each
        (tmp_path / f"go{i}").touch()
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = [o.strip().splitlines()[-1].split() for o in outs]
    for i in range(trials):
        assert sorted(c[i] for c in codes) == ["0", "2"], (i, [o[-2000:] for o in outs])
    text = "".join(outs)
    # The loser either met the winner's lock, or (on a loaded machine, where the winner's tiny run
    # can finish before the loser's start) found the finished run: refused either way, named.
    busy = text.count("is in use by another run (pid ")
    finished = text.count("already holds last.ckpt: pass ckpt_path=last to resume it")
    assert busy + finished == trials, (busy, finished, text[-3000:])
    assert "Traceback" not in text  # the holder's naming: test_elab_train_into_a_held_run_dir_...
    assert all((tmp_path / f"run{i}" / "summary.json").is_file() for i in range(trials))


def _holder_process(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from trainer.runlock import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)", str(run)],
        env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_is_named_with_a_remedy_and_a_dead_ones_lock_is_free(tmp_path):
    run = tmp_path / "run"
    holder = _holder_process(run)
    try:
        with pytest.raises(RunDirBusy) as info:
            RunLock(run).acquire()
        message = str(info.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message
        assert str(run) in message and "wait for it" in message and "hydra.run.dir" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / ".lock").is_file(), "kill -9 leaves the file behind"
    with RunLock(run):  # ... but the kernel dropped the lock: free, no takeover needed
        assert f"pid={os.getpid()} " in (run / ".lock").read_text()
    assert not (run / ".lock").exists(), "released on exit"


@pytest.mark.slow
def test_elab_train_into_a_held_run_dir_exits_2_naming_the_holder_and_writes_nothing(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    holder = _holder_process(run)
    try:
        (run / "train.log").write_text("the holder's log\n")
        before = sorted(p.name for p in run.iterdir())
        proc = subprocess.run(
            [sys.executable, "-c", "import sys; from trainer.train import main; main()",
             f"hydra.run.dir={run}", *tiny_overrides, "callbacks=minimal"],
            env=ENV, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=300)
        assert proc.returncode == 2, proc.stdout[-2000:]
        assert f"is in use by another run (pid {holder.pid} on host {socket.gethostname()}" in proc.stdout
        assert "Traceback" not in proc.stdout
        assert sorted(p.name for p in run.iterdir()) == before, "the refused run wrote files into the dir"
        assert (run / "train.log").read_text().startswith("the holder's log\n"), "the holder's log was lost"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_a_lock_file_naming_some_other_live_process_is_free(tmp_path):
    # What an older version left, or a reused pid: only a held lock counts, not what a file says.
    (tmp_path / ".lock").write_text(f"{os.getppid()}\n")
    with RunLock(tmp_path):
        assert f"pid={os.getpid()} " in (tmp_path / ".lock").read_text()


def test_a_lock_that_is_a_directory_is_refused_naming_it(tmp_path):
    (tmp_path / ".lock").mkdir()
    with pytest.raises(ConfigError, match=r"\.lock is a directory, not a run lock: remove it"):
        RunLock(tmp_path).acquire()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_lock_is_refused_naming_it(tmp_path):
    (tmp_path / ".lock").write_text("")
    (tmp_path / ".lock").chmod(0)
    with pytest.raises(ConfigError, match=r"\.lock cannot be opened .*permissions or remove it"):
        RunLock(tmp_path).acquire()
