"""A process pool map with a progress bar, used for per-image work (probe, transform)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from catsdogs.console import progress

T = TypeVar("T")
R = TypeVar("R")

SERIAL_BELOW = 64  # fewer items than this: a pool costs more than it saves


def worker_count(requested: int = 0) -> int:
    """`requested`, or one per usable core when 0."""
    if requested > 0:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parallel_map(func: Callable[[T], R], items: Sequence[T], desc: str,
                 workers: int = 0) -> list[R]:
    """`[func(x) for x in items]` in order, over a process pool (forkserver: safe with threads)."""
    count = worker_count(workers)
    if count == 1 or len(items) < SERIAL_BELOW:
        return [func(item) for item in progress(items, desc=desc, total=len(items))]
    chunksize = max(1, min(64, len(items) // (count * 8)))
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
        return list(progress(pool.map(func, items, chunksize=chunksize), desc=desc,
                             total=len(items)))
