"""Run a command's entry point in this process and stop the MLflow server at a chosen moment
(used by the MLflow-outage tests), as

    python -m tests.outage_probe PGID SIGNAL MODULE:FUNCTION ENTRY_MODULE [ARGS...]

`MODULE:FUNCTION` is wrapped: after it returns the first time (before it runs, for a SIGNAL
written `before-SIGNAL`) (e.g. `catsdogs.tracking:connect`,
once the server answered the probe) the server's process group `PGID` gets `SIGNAL` (`SIGKILL`:
stopped; `SIGSTOP`: hangs, accepting connections but never answering), or with SIGNAL `self` this
process ends at once as a SIGKILL would end it (`os._exit`, nothing cleaned up). Then
`ENTRY_MODULE.main(ARGS)`'s exit code is this process's."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import Any


def main() -> int:
    pgid, how, hook, entry, *args = sys.argv[1:]
    module_name, function = hook.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, function)
    done = []

    _, before, sig = how.rpartition("before-")

    def stop() -> None:
        if not done:
            done.append(True)
            if sig == "self":
                os._exit(137)
            os.killpg(int(pgid), getattr(signal, sig))

    def hooked(*a: Any, **k: Any) -> Any:
        if before:
            stop()
        result = original(*a, **k)
        stop()
        return result

    setattr(module, function, hooked)
    return importlib.import_module(entry).main(args)


if __name__ == "__main__":
    sys.exit(main())
