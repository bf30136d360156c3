"""`paygate bench`: start servers as production would, run scenarios, print one table.

Each scenario compares our figure with a baseline measured in the same run on the same
PostgreSQL and Redis, so the ratio means something on any machine. Results also go to
bench/results/latest.json. Benchmarks never fail the build.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pkgutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gateway.procs import free_port

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    scenario: str
    ours: float
    baseline: float
    unit: str
    goal: str
    """Human form of the goal, e.g. '>= 0.5' (ratio) or '<= 2.0' (time ratio)."""
    higher_is_better: bool = True
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_mb: float | None = None
    notes: str = ""
    ratio: float = field(init=False, default=0.0)
    met: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.ratio = round(self.ours / self.baseline, 3) if self.baseline else 0.0
        op, _, value = self.goal.partition(" ")
        target = float(value)
        self.met = self.ratio >= target if op == ">=" else self.ratio <= target


class PeakRSS:
    """Samples the resident memory of a process tree in a background thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.pid)
            while not self._stop.wait(0.1):
                procs = [root, *root.children(recursive=True)]
                total = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                self.peak = max(self.peak, total)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return round(self.peak / 2**20, 1)


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def server(app: str, *, workers: int = 1, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run an ASGI app factory with the production server settings; yield its port."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})})
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live")
        yield port
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def paygate_server(workers: int | None = None) -> Iterator[tuple[int, int]]:
    """Our service as production runs it; yields (port, pid) for RSS sampling."""
    port = free_port()
    env = {**os.environ, "PAYGATE_PORT": str(port), "PAYGATE_LOG_LEVEL": "WARNING"}
    if workers:
        env["PAYGATE_WORKERS"] = str(workers)
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve"], env=env)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready")
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def load(
    port: int,
    *,
    quick: bool,
    path: str = "/",
    method: str = "GET",
    requests_file: str | None = None,
    connections: int = 32,
    duration: float | None = None,
    max_requests: int | None = None,
) -> dict[str, Any]:
    """Drive load from a separate process (so client CPU is not charged to the server)."""
    duration = duration if duration is not None else (2.0 if quick else 8.0)
    cmd = [
        sys.executable,
        "-m",
        "bench.load",
        "--port",
        str(port),
        "--path",
        path,
        "--method",
        method,
        "--connections",
        str(connections),
        "--duration",
        str(duration),
        "--max-requests",
        str(max_requests or (20_000 if quick else 1_000_000)),
    ]
    if requests_file:
        cmd += ["--requests-file", requests_file]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=duration + 60)
    return dict(json.loads(out.stdout))


def scenario_names() -> list[str]:
    import bench.scenarios as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def _ensure_servers() -> Any:
    """Embedded servers shared by every process of the run when no URLs are set."""
    from gateway import embedded

    root = Path.cwd() / "var" / "bench"
    need_pg = not os.environ.get("DATABASE_URL")
    need_redis = not os.environ.get("REDIS_URL")
    services = embedded.start(
        root / "pg" if need_pg else None, root / "redis" if need_redis else None
    )
    if services.database_url:
        os.environ["DATABASE_URL"] = services.database_url
    if services.redis_url:
        os.environ["REDIS_URL"] = services.redis_url
    from gateway import migrate

    migrate.upgrade(os.environ["DATABASE_URL"])
    return services


def print_table(rows: list[Row]) -> None:
    headers = [
        "scenario",
        "ours",
        "baseline",
        "unit",
        "ratio",
        "goal",
        "met",
        "p50 ms",
        "p99 ms",
        "peak RSS MB",
    ]
    table = [
        [
            r.scenario,
            f"{r.ours:,.1f}",
            f"{r.baseline:,.1f}",
            r.unit,
            f"{r.ratio:.3f}",
            r.goal,
            "yes" if r.met else "NO",
            "" if r.p50_ms is None else f"{r.p50_ms:.2f}",
            "" if r.p99_ms is None else f"{r.p99_ms:.2f}",
            "" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.1f}",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *table, strict=False)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("-" * len(line))
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    for r in rows:
        if r.notes:
            print(f"  {r.scenario}: {r.notes}")


def run(selected: list[str], *, quick: bool = False) -> int:
    names = selected or scenario_names()
    unknown = set(names) - set(scenario_names())
    if unknown:
        print(
            f"unknown scenarios: {', '.join(sorted(unknown))}; have {', '.join(scenario_names())}"
        )
        return 2
    services = _ensure_servers()
    rows: list[Row] = []
    try:
        for name in names:
            module = importlib.import_module(f"bench.scenarios.{name}")
            print(f"== {name}", flush=True)
            try:
                rows += module.run(quick=quick)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the rest
                print(f"   scenario {name} failed: {type(exc).__name__}: {exc}")
    finally:
        services.stop()
    print()
    print_table(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    print(f"\nwritten to {RESULTS / 'latest.json'}")
    return 0
