"""Where e-note signatures are computed: off the event loop, in order, chunk by chunk.

A note needs two SM2 signatures: the issuer's over the content, then the supervisor's over
the content and the issuer's signature. Signing is most of a note's cost, so it runs beside
the database work of the same batch.

- `ProcessLine` (software keys, the default): a few signing processes, each holding both
  keys, signing whole chunks. Threads in the worker's own interpreter would contend with the
  event loop for the GIL: tongsuopy makes several cffi calls per signature and re-takes the
  GIL after each, so a busy event loop stalls them (measured: 100 pipelined signatures took
  44 ms instead of 27 while the loop wrote rows).
- `ThreadLine` (any `Signer`, e.g. an HSM client or a test double): one thread per key,
  the supervisor countersigning each note as soon as the issuer has signed it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import queue
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from enotes import sign_worker
from enotes.signing import NoteSigners, Signer, SM2Signer, signed_by_supervisor

Signed = tuple[bytes, datetime, bytes, datetime]
"""issuer signature, when, supervisor signature, when."""


def _stamped(signer: Signer, message: bytes) -> tuple[bytes, datetime]:
    return signer.sign(message), datetime.now(UTC)


class SigningLine(Protocol):
    def sign(self, contents: Sequence[bytes]) -> Future[list[Signed]]:
        """Both signatures of each content, in order; chunks may be signed concurrently."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- processes


class SigningUnavailable(RuntimeError):
    """A signing process died or could not start; the batch fails and is retried."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _parse_reply(body: bytes) -> tuple[int, list[Signed] | str]:
    request_id, status = sign_worker.HEADER.unpack_from(body)
    rest = body[sign_worker.HEADER.size :]
    if status != 0:
        return request_id, rest.decode(errors="replace")
    items = sign_worker.unpack_items(rest)

    def at(stamp: bytes) -> datetime:
        return _EPOCH + timedelta(microseconds=sign_worker.STAMP.unpack(stamp)[0])

    return request_id, [
        (items[i], at(items[i + 1]), items[i + 2], at(items[i + 3]))
        for i in range(0, len(items), 4)
    ]


class _Child:
    """One `enotes.sign_worker` process, a writer thread and a reader thread."""

    def __init__(self, pems: tuple[bytes, bytes], name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enotes.sign_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.pending: dict[int, Future[list[Signed]]] = {}
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._outbox.put(sign_worker.frame(sign_worker.pack_items(list(pems))))
        self.alive = True
        threading.Thread(target=self._write, name=f"{name}-writer", daemon=True).start()
        threading.Thread(target=self._read, name=f"{name}-reader", daemon=True).start()

    def send(
        self, request_id: int, contents: Sequence[bytes], future: Future[list[Signed]]
    ) -> None:
        with self._lock:
            if not self.alive:
                raise SigningUnavailable("the signing process has stopped")
            self.pending[request_id] = future
        payload = sign_worker.REQUEST_ID.pack(request_id) + sign_worker.pack_items(list(contents))
        self._outbox.put(sign_worker.frame(payload))

    def load(self) -> int:
        return len(self.pending)

    def _write(self) -> None:
        # Writes happen here, not on the event loop: a chunk can exceed the pipe's buffer.
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            while (data := self._outbox.get()) is not None:
                stdin.write(data)
                stdin.flush()
        except OSError:
            pass  # the reader sees the process end and fails what is pending
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        while (body := sign_worker.read_frame(stdout)) is not None:
            request_id, result = _parse_reply(body)
            with self._lock:
                future = self.pending.pop(request_id, None)
            if future is None or not future.set_running_or_notify_cancel():
                continue  # cancelled by the caller: the signatures are simply dropped
            if isinstance(result, str):
                future.set_exception(SigningUnavailable(f"signing failed: {result}"))
            else:
                future.set_result(result)
        code = self.proc.wait()
        with self._lock:
            self.alive = False
            orphans, self.pending = list(self.pending.values()), {}
        for future in orphans:
            if future.set_running_or_notify_cancel():
                future.set_exception(SigningUnavailable(f"signing process exited ({code})"))

    def close(self) -> None:
        self._outbox.put(None)  # stdin closes, the process ends, the reader finishes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ProcessLine:
    """Chunks signed by a few `enotes.sign_worker` processes, each holding both keys.

    Each process signs both signatures of its chunk's notes, so n processes sign n chunks
    at once with no GIL shared with the event loop. Processes start together on first use
    (about 0.2 s); one that dies fails its pending chunks (the outbox retries the batch)
    and is replaced by the next chunk.
    """

    def __init__(self, signers: NoteSigners, processes: int | None = None) -> None:
        issuer, supervisor = signers.issuer, signers.supervisor
        if not isinstance(issuer, SM2Signer) or not isinstance(supervisor, SM2Signer):
            raise TypeError("ProcessLine needs software SM2 keys")
        self._pems = (issuer.pem(), supervisor.pem())
        self._size = processes or min(os.cpu_count() or 1, 4)
        self._children: list[_Child] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        # A line dropped without close() still ends its processes (their stdin closes).
        weakref.finalize(self, _close_all, self._children)

    def sign(self, contents: Sequence[bytes]) -> Future[list[Signed]]:
        future: Future[list[Signed]] = Future()
        with self._lock:
            self._children[:] = [c for c in self._children if c.alive]
            while len(self._children) < self._size:
                self._children.append(_Child(self._pems, f"enote-signer-{len(self._children)}"))
            child = min(self._children, key=_Child.load)
            request_id = next(self._ids) % 2**32
        child.send(request_id, contents, future)
        return future

    def pids(self) -> list[int]:
        """The signing processes now running (for operators, and tests that kill one)."""
        with self._lock:
            return [c.proc.pid for c in self._children if c.alive]

    def close(self) -> None:
        """Stop the processes; a later chunk starts new ones."""
        with self._lock:
            children = self._children[:]
            self._children.clear()
        _close_all(children)


def _close_all(children: list[_Child]) -> None:
    for child in children:
        child.close()


# ---------------------------------------------------------------- threads


def _countersigned(
    supervisor: Signer, content: bytes, issued: Future[tuple[bytes, datetime]]
) -> Signed:
    issuer_sig, issuer_at = issued.result()  # FIFO: signed just before, or signing now
    supervisor_sig, supervisor_at = _stamped(supervisor, signed_by_supervisor(content, issuer_sig))
    return issuer_sig, issuer_at, supervisor_sig, supervisor_at


def _cancel_with(issued: Future[Any], note: Future[Signed]) -> None:
    """Cancelling a note not yet signing cancels both of its signatures."""
    if note.cancelled():
        issued.cancel()


class ThreadLine:
    """Two long-lived threads, one per key: the issuer signs note after note and the
    supervisor countersigns each as soon as its issuer signature exists (n + 1 signature
    times for n notes on two cores). One thread per key, as a key object shared by two
    threads serialises inside the C library anyway."""

    def __init__(self, signers: NoteSigners) -> None:
        self._signers = signers
        self._threads: tuple[ThreadPoolExecutor, ThreadPoolExecutor] | None = None
        self._lock = threading.Lock()

    def _executors(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        with self._lock:
            if self._threads is None:
                self._threads = (
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="enote-issuer"),
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix="enote-supervisor"),
                )
            return self._threads

    def sign(self, contents: Sequence[bytes]) -> Future[list[Signed]]:
        issuer, supervisor = self._executors()
        notes: list[Future[Signed]] = []
        for content in contents:
            issued = issuer.submit(_stamped, self._signers.issuer, content)
            notes.append(
                supervisor.submit(_countersigned, self._signers.supervisor, content, issued)
            )
            notes[-1].add_done_callback(functools.partial(_cancel_with, issued))
        chunk: Future[list[Signed]] = Future()

        def collect(_: Future[Signed]) -> None:  # the last note is done, so all are (FIFO)
            with contextlib.suppress(InvalidStateError):  # the chunk was cancelled
                try:
                    chunk.set_result([n.result() for n in notes])
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting caller
                    chunk.set_exception(exc)

        def cancel_notes(f: Future[list[Signed]]) -> None:
            if f.cancelled():
                for n in notes:
                    n.cancel()

        chunk.add_done_callback(cancel_notes)
        if notes:
            notes[-1].add_done_callback(collect)
        else:
            chunk.set_result([])
        return chunk

    def close(self) -> None:
        """Drop queued work and let the threads go; a later chunk starts new ones. A thread
        stuck inside a signer cannot be stopped from here: it is left to finish."""
        with self._lock:
            threads, self._threads = self._threads, None
        for pool in threads or ():
            pool.shutdown(wait=False, cancel_futures=True)


def line_for(signers: NoteSigners, processes: int | None = None) -> SigningLine:
    """Processes for software keys, threads for anything else (an HSM signs elsewhere)."""
    if isinstance(signers.issuer, SM2Signer) and isinstance(signers.supervisor, SM2Signer):
        return ProcessLine(signers, processes)
    return ThreadLine(signers)
