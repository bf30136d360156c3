"""Two processes sharing the embedded servers (`paygate serve` and `paygate worker` started
apart): killing the one that started them leaves them running for the other; they stop
when the last user is gone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.runner import wait_http
from gateway import embedded
from gateway.procs import free_port


def _pg_running(data_dir: Path) -> bool:
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.exists() else None
    return info is not None and info.is_running()


def _redis_running(data_dir: Path) -> bool:
    return embedded._redis_alive(embedded._redis_socket(data_dir.resolve()))


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def var_dir() -> Iterator[Path]:
    """Under the checkout, like var/test: postgres runs as its own system user when we are
    root, and pytest's tmp_path (0700, root's) is closed to it."""
    path = ROOT / "var" / f"shared-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_killing_serve_leaves_the_servers_to_the_worker_until_it_exits(var_dir: Path) -> None:
    tmp_path = var_dir
    port = free_port()
    pg, redis = tmp_path / "pg", tmp_path / "redis"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env |= {
        "PAYGATE_PORT": str(port),
        "PAYGATE_PG_DIR": str(pg),
        "PAYGATE_REDIS_DIR": str(redis),
        "PAYGATE_LOG_FORMAT": "json",
    }
    cli = [sys.executable, "-m", "gateway.cli"]
    serve_log, worker_log = (tmp_path / "serve.log").open("w"), (tmp_path / "worker.log").open("w")
    serve = subprocess.Popen([*cli, "serve"], env=env, stdout=serve_log, stderr=subprocess.STDOUT)
    worker: subprocess.Popen[bytes] | None = None
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=120)
        worker = subprocess.Popen(
            [*cli, "worker"], env=env, stdout=worker_log, stderr=subprocess.STDOUT
        )
        assert _wait(lambda: "worker started" in (tmp_path / "worker.log").read_text(), 60)

        serve.send_signal(signal.SIGKILL)
        serve.wait(timeout=30)
        time.sleep(3)  # the old watchdog stopped the servers within a second or two
        assert _pg_running(pg), "the database was stopped under the worker"
        assert _redis_running(redis)
        assert worker.poll() is None
        log = (tmp_path / "worker.log").read_text()
        assert "database unavailable" not in log, log[-2000:]

        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        assert _wait(lambda: not _pg_running(pg) and not _redis_running(redis), 60), (
            "the servers outlived their last user"
        )
    finally:
        for proc in (serve, worker):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
