"""Group commit: concurrent calls that would each run one small statement run as one batch.

A statement that writes a dozen rows spends most of the database's effort on the statement
itself — locking and opening every table and index, setting up the executor, committing —
not on the rows. `GroupCommit` lets callers submit items; at most `lanes` batches run at
once, and a lane that finishes takes everything that queued meanwhile (up to `max_batch`).
With no load a call runs alone at once (no timer, no added latency); under load the
batches grow by themselves, as PostgreSQL's own commit grouping does.

One state per event loop (`PerLoop`), as asyncio primitives belong to one loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = [
    "GroupCommit",
    "PerLoop",
]

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")


class PerLoop(Generic[S]):
    """One `S` per running event loop, made on first use there: asyncio primitives belong
    to the loop they were made in. A process has one loop; tests make many, and the states
    of closed ones are dropped."""

    def __init__(self, make: Callable[[], S]) -> None:
        self._make = make
        self._by_loop: dict[asyncio.AbstractEventLoop, S] = {}

    def get(self) -> S:
        loop = asyncio.get_running_loop()
        state = self._by_loop.get(loop)
        if state is None:
            self._by_loop = {k: v for k, v in self._by_loop.items() if not k.is_closed()}
            state = self._by_loop[loop] = self._make()
        return state


@dataclass
class _LoopState(Generic[T, R]):
    pending: list[tuple[T, asyncio.Future[R]]] = field(default_factory=list)
    busy: int = 0
    lanes: set[asyncio.Task[None]] = field(default_factory=set)


class GroupCommit(Generic[T, R]):
    """`submit(item)` → `run(batch)[i]` for its item, batches formed from concurrent calls.

    `run` gets distinct items by `key` (a second item with a key already in the batch waits
    for the next batch: two copies of one thing are never in one statement) and returns one
    result per item, in order. If `run` raises, every caller in that batch gets the error.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Awaitable[list[R]]],
        *,
        lanes: int,
        max_batch: int,
        key: Callable[[T], Hashable] = id,
    ) -> None:
        self._run = run
        self.lanes = lanes
        self.max_batch = max_batch
        self._key = key
        self._states: PerLoop[_LoopState[T, R]] = PerLoop(_LoopState)

    def resize(self, lanes: int) -> None:
        self.lanes = lanes

    async def submit(self, item: T) -> R:
        state = self._states.get()
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        state.pending.append((item, future))
        if state.busy < self.lanes:
            state.busy += 1
            lane = asyncio.get_running_loop().create_task(self._lane(state))
            state.lanes.add(lane)
            lane.add_done_callback(state.lanes.discard)
        return await future

    def _take(self, state: _LoopState[T, R]) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        later: list[tuple[T, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        for entry in state.pending:
            if entry[1].done():  # its caller went away before it ran
                continue
            k = self._key(entry[0])
            if len(batch) < self.max_batch and k not in keys:
                keys.add(k)
                batch.append(entry)
            else:
                later.append(entry)
        state.pending = later
        return batch

    async def _lane(self, state: _LoopState[T, R]) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while batch := self._take(state):
                try:
                    results = await self._run([item for item, _ in batch])
                except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        except BaseException:  # cancelled (shutdown): no caller may wait forever
            for _, future in [*batch, *state.pending]:
                if not future.done():
                    future.set_exception(RuntimeError("group commit lane stopped"))
            state.pending = []
            raise
        finally:
            state.busy -= 1
