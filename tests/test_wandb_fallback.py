"""wandb never blocks or kills a run: against a server that accepts connections and never answers,
one that rejects the key (401), or an online start that fails anyway, the tiny run trains and
finishes offline within seconds, with one warning line saying why and how to sync later. A bogus
WANDB_MODE is refused in one line naming it and the allowed values."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import compose_cfg
from trainer import loggers
from trainer.config import ConfigError
from trainer.train import train


class _Silent:
    """Accepts connections on 127.0.0.1 and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=50)
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:  # closed: the test is over
                return

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        for conn in [self.sock, *self.conns]:
            conn.close()


class _Rejects(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 -- http.server's name
        self.send_error(401, "invalid API key")

    do_GET = do_POST

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def wandb_env(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    yield monkeypatch
    import wandb

    wandb.teardown()


def _run_offline(tmp_path, tiny_overrides, caplog) -> tuple[float, str]:
    run = tmp_path / "run"
    start = time.time()
    with caplog.at_level("WARNING", logger="emergence_lab"):
        summary = train(compose_cfg([*tiny_overrides, "callbacks=minimal", "logger=wandb"], run))
    took = time.time() - start
    assert summary["status"] == "completed" and summary["steps"] == 20
    assert list((run / "wandb").glob("offline-run-*/*.wandb")), "an offline run to sync later"
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("wandb:")]
    assert len(warnings) == 1 and "logging offline" in warnings[0] and "wandb sync" in warnings[0]
    return took, warnings[0]


def test_a_server_that_never_answers_costs_seconds_and_the_run_finishes_offline(
        tmp_path, tiny_overrides, wandb_env, caplog):
    server = _Silent()
    url = server.url
    wandb_env.setenv("WANDB_BASE_URL", url)
    try:
        took, warning = _run_offline(tmp_path, tiny_overrides, caplog)
    finally:
        server.close()
    assert f"{url} did not answer within 5 s: logging offline" in warning
    assert took < 45, f"{took:.0f} s: wandb.init waited on the silent server"


def test_a_server_rejecting_the_key_is_named_and_the_run_finishes_offline(
        tmp_path, tiny_overrides, wandb_env, caplog):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Rejects)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wandb_env.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_port}")
    try:
        took, warning = _run_offline(tmp_path, tiny_overrides, caplog)
    finally:
        server.shutdown()
        server.server_close()
    assert "rejected the API key (HTTP 401" in warning and "WANDB_API_KEY" in warning
    assert took < 45, f"{took:.0f} s"


@pytest.mark.slow
def test_an_online_start_that_fails_anyway_falls_back_without_reusing_the_run(
        tmp_path, tiny_overrides, wandb_env, caplog):
    # The preflight passed but wandb.init then times out: the offline run must not hit the
    # failed one's stream ("run ID ... is in use", which used to kill the run).
    server = _Silent()
    wandb_env.setenv("WANDB_BASE_URL", server.url)
    wandb_env.setattr(loggers, "server_problem", lambda: None)
    wandb_env.setattr(loggers, "INIT_TIMEOUT_S", 3.0)
    try:
        _, warning = _run_offline(tmp_path, tiny_overrides, caplog)
    finally:
        server.close()
    assert warning.startswith("wandb: online start failed")


def test_a_bogus_wandb_mode_is_refused_naming_it_and_the_allowed_values(
        tmp_path, tiny_overrides, wandb_env):
    wandb_env.setenv("WANDB_MODE", "bogus")
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="WANDB_MODE='bogus' is not a wandb mode: set one of "
                                          "online, offline, disabled"):
        train(compose_cfg([*tiny_overrides, "callbacks=minimal", "logger=wandb"], run))
    assert not (run / "checkpoints").exists(), "nothing trained"
