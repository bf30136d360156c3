"""The service as `make run` starts it: embedded servers, ready, and nothing orphaned."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from bench.runner import wait_http
from gateway.procs import free_port


def _processes_using(path: Path, parent: int | None = None) -> list[psutil.Process]:
    """Embedded servers under `path`, and children started with `--parent <parent>`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "name", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if str(path) in cmd or (parent is not None and f"--parent {parent}" in cmd):
            found.append(proc)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_serve_embedded_ready_and_no_orphans(tmp_path: Path, how: signal.Signals) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env |= {
        "PAYGATE_PORT": str(port),
        "PAYGATE_PG_DIR": str(tmp_path / "pg"),
        "PAYGATE_REDIS_DIR": str(tmp_path / "redis"),
    }
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--demo"],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=90)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready") as resp:
            assert resp.status == 200
            assert b'"postgres":"up"' in resp.read()
        running = _processes_using(tmp_path, proc.pid)
        cmds = " ".join(" ".join(p.cmdline()) for p in running)
        assert "postgres" in cmds, "embedded postgres should be running"
        assert "gateway.cli worker" in cmds, "demo mode starts the worker"
        assert "simulator alipay" in cmds, "demo mode starts the Alipay simulator"
        assert "simulator kiosk" in cmds, "demo mode starts the kiosk simulator"
        assert "simulator pos-terminal" in cmds, "demo mode starts the card terminal page"
        _demo_devices_answer(log.read_text())
    finally:
        proc.send_signal(how)
        proc.wait(timeout=60)
    assert f"serving on http://127.0.0.1:{port}" in log.read_text()
    deadline = time.monotonic() + 60
    while _processes_using(tmp_path, proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_using(tmp_path, proc.pid) == []


def _demo_devices_answer(log: str) -> None:
    """The printed kiosk and terminal pages are up, hold the demo keys the seed made (a bill
    lookup is a signed message the service verifies) and show a demo bill."""
    kiosk = re.search(r"kiosk \(demo\): (\S+)", log)
    terminal = re.search(r"card terminal \(demo\): (\S+)", log)
    codes = re.findall(r"demo bill DEMO-JJ-\d+: payment code (\d{20})", log)
    assert kiosk is not None, log
    assert terminal is not None, log
    assert codes, log
    for url, lookup in ((kiosk[1], "query"), (f"{terminal[1]}/POS00001", "inquiry")):
        wait_http(url, timeout=30)
        body = f"code={codes[0]}".encode()
        with urllib.request.urlopen(f"{url}/{lookup}", data=body, timeout=30) as resp:
            page = resp.read().decode()
        assert codes[0] in page, page
        assert "¥200.00" in page, page  # DEMO-JJ-0001's fine; a refused lookup shows no bill
    # The terminals' acquirer is played in the terminal page's process.
    acquirer = terminal[1].removesuffix("/pos")
    with urllib.request.urlopen(f"{acquirer}/control/state", timeout=30) as resp:
        assert json.loads(resp.read())["sales"] == []
