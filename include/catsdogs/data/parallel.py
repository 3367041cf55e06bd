"""A process pool map with a progress bar, used for per-image work (probe, transform).

Workers die with the process that made the pool. With the forkserver start method a worker's
parent is the fork server, not the stage, so `prctl(PR_SET_PDEATHSIG)` cannot tie it to the stage,
and the standard library does nothing: when the stage is SIGKILLed its workers sleep forever on the
task queue, and they in turn keep the fork server and the resource tracker alive (each holds the
other's pipe open). So every worker starts a daemon thread that waits on a pidfd of the stage
(`os.pidfd_open`, Linux >= 5.3) and ends the worker when the stage is gone; with the workers gone
the fork server and the resource tracker see end-of-file and exit on their own.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import select
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

from catsdogs.console import progress

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

SERIAL_BELOW = 64  # fewer items than this: a pool costs more than it saves
OWNER_GONE_EXIT_CODE = 70  # a worker's exit code when the process that made the pool is gone


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def _cgroup_cpus() -> int | None:
    """The CPU limit of this process's cgroup (a container's `--cpus`, a pod's CPU limit), rounded
    up to whole cores; None when there is none or it cannot be read."""
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def worker_count(requested: int = 0) -> int:
    """`requested`, or, when 0, one per usable core: the cores this process may run on, capped
    by its cgroup's CPU limit (so a pod or container does not start a process per host core)."""
    if requested > 0:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = _cgroup_cpus()
    return min(cores, limit) if limit else cores


def exit_with(owner: int) -> None:
    """Pool initializer: end this worker process as soon as process `owner` has ended.

    Raises nothing: without pidfds (not Linux, kernel < 5.3) the worker just runs unwatched.
    """
    try:
        pidfd = os.pidfd_open(owner)
    except ProcessLookupError:  # the owner died before this worker started
        os._exit(OWNER_GONE_EXIT_CODE)
    except (AttributeError, OSError) as exc:
        log.debug("pool worker %d cannot watch process %d: %s", os.getpid(), owner, exc)
        return

    def watch() -> None:
        select.select([pidfd], [], [])  # readable once the owner has exited
        os._exit(OWNER_GONE_EXIT_CODE)

    threading.Thread(target=watch, name=f"exit-with-{owner}", daemon=True).start()


def parallel_map(func: Callable[[T], R], items: Sequence[T], desc: str,
                 workers: int = 0) -> list[R]:
    """`[func(x) for x in items]` in order, over a process pool (forkserver: safe with threads).

    The workers end when this process ends, however it ends (see the module docstring).
    """
    count = worker_count(workers)
    if count == 1 or len(items) < SERIAL_BELOW:
        return [func(item) for item in progress(items, desc=desc, total=len(items))]
    chunksize = max(1, min(64, len(items) // (count * 8)))
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=count, mp_context=context, initializer=exit_with,
                             initargs=(os.getpid(),)) as pool:
        return list(progress(pool.map(func, items, chunksize=chunksize), desc=desc,
                             total=len(items)))
