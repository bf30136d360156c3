"""Process plumbing. Child processes of `paygate serve --demo` (worker, channel simulators)
must never outlive it, even when it is killed with SIGKILL and has no chance to clean up."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import threading

__all__ = [
    "exit_with_parent",
    "free_port",
    "freeze_startup_heap",
    "spawn_child",
    "stop_children",
]


def exit_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """SIGTERM ourselves (a graceful stop) once `parent_pid` is no longer our parent."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            threading.Event().wait(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def spawn_child(*args: str) -> subprocess.Popen[bytes]:
    """Run `paygate ARGS… --parent <our pid>`; it inherits our environment (server URLs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *args, "--parent", str(os.getpid())]
    )


def stop_children(children: list[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()


def free_port() -> int:
    """A loopback port nobody listens on right now (for simulators, tests, benchmarks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def freeze_startup_heap() -> None:
    """Hide what start-up allocated (modules, SQLAlchemy metadata, caches) from the cyclic
    garbage collector: a long-running process's full collections then scan only what it
    made since. In the e-note worker a full collection took ~50 ms with the GIL held,
    stalling the signing line's reader threads; frozen, ~12 ms. Call once, when start-up
    is done (what is frozen is never collected)."""
    gc.collect()
    gc.freeze()
