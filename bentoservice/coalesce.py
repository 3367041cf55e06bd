"""Joins the pictures of concurrent requests into fewer, larger calls to the model service."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np

ModelCall = Callable[[np.ndarray], Awaitable[np.ndarray | None]]
Waiting = tuple[np.ndarray, "asyncio.Future[np.ndarray | None]"]


class Coalescer:
    """Sends a request's pixel batch on at once while fewer than `max_in_flight` model calls are
    out; otherwise it waits, and the next free slot takes everything waiting (up to `max_images`
    pictures; a bigger single batch goes alone) as one call, whose rows are handed back in order.

    Nothing waits at low load; under load the model service gets a few large calls instead of
    one per request. Each call costs about 2 ms of CPU across the two processes (HTTP, pickling,
    tracing, the batching queue), as much as decoding a photo. The model service's adaptive
    batching still joins calls from several API workers. `call` returns None when the model
    cannot answer; every request in that call then gets None."""

    def __init__(self, call: ModelCall, max_images: int, max_in_flight: int = 2) -> None:
        self.call = call
        self.max_images = max_images
        self.max_in_flight = max(1, max_in_flight)
        self.in_flight = 0
        self.waiting: deque[Waiting] = deque()
        self._tasks: set[asyncio.Task[None]] = set()

    async def infer(self, pixels: np.ndarray) -> np.ndarray | None:
        """The model's answer for `pixels` (N,H,W,3 uint8), or None when it cannot answer."""
        future: asyncio.Future[np.ndarray | None] = asyncio.get_running_loop().create_future()
        self.waiting.append((pixels, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self.in_flight < self.max_in_flight and self._drop_abandoned():
            taken = [self.waiting.popleft()]
            images = len(taken[0][0])
            while self._drop_abandoned() and images + len(self.waiting[0][0]) <= self.max_images:
                taken.append(self.waiting.popleft())
                images += len(taken[-1][0])
            self.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(taken))
            self._tasks.add(task)  # the loop keeps only a weak reference to tasks
            task.add_done_callback(self._tasks.discard)

    def _drop_abandoned(self) -> bool:
        """Forget waiting requests whose client went away; True while any request waits."""
        while self.waiting and self.waiting[0][1].done():
            self.waiting.popleft()
        return bool(self.waiting)

    async def _send(self, taken: list[Waiting]) -> None:
        try:
            pixels = taken[0][0] if len(taken) == 1 else np.concatenate([p for p, _ in taken])
            answer = await self.call(pixels)
        except Exception as exc:  # noqa: BLE001 (handed to every request of this call)
            for _, future in taken:
                if not future.done():
                    future.set_exception(exc)
        else:
            start = 0
            for part, future in taken:
                if not future.done():  # a request whose client went away is cancelled
                    future.set_result(None if answer is None else answer[start:start + len(part)])
                start += len(part)
        finally:
            self.in_flight -= 1
            self._dispatch()
