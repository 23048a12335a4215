"""The worker's helper processes (outline settling, window images): how they are started
and how they end.

They are forked from a fresh server process that has imported what they run (never from
the worker, whose threads and model must not be copied), and each ends when the worker
does, even when the worker is killed outright (a pool's queues would wait for it forever:
the processes hold each other's ends of them); ^C is the worker's to handle.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable

# What the server process imports once, so each process forked from it starts at once.
PRELOAD = ["sam2_refine.outlines", "sam2_refine.nimbus_fetchers"]
WATCH_SECONDS = 0.5        # how often a helper process checks that the worker is still there
# Allocations between the cyclic garbage collector's youngest-generation runs (Python's
# default is 700): a job allocates millions of short-lived objects that reference counting
# frees, and at the default the collector's passes over them cost time (Auto, 4096² × 4000,
# free model: the worker's own process 1.87 s of CPU at 700, 1.76 s at 50,000).
GC_ALLOCATIONS = 50_000


def start_context() -> multiprocessing.context.BaseContext:
    """The context helper pools start their processes with: a fork server where the
    platform has one, else fresh interpreters."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(PRELOAD)
    return context


def fewer_collections() -> None:
    """Run the cyclic garbage collector less often in this process (GC_ALLOCATIONS); cycles
    are still collected."""
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_ALLOCATIONS, second, third)


def watch_worker(worker_pid: int, on_end: Callable[[], None] | None = None) -> None:
    """Run in each helper process as it starts: it ends when process `worker_pid` does
    (calling `on_end` first), and leaves ^C to the worker; its collector runs less often
    (`fewer_collections`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fewer_collections()

    def watch() -> None:
        while not _gone(worker_pid):
            time.sleep(WATCH_SECONDS)
        try:
            if on_end is not None:
                on_end()
        finally:
            os._exit(0)

    threading.Thread(target=watch, name="watch-worker", daemon=True).start()


def _gone(pid: int) -> bool:
    """Whether process `pid` has ended: no longer there, or (Linux) dead but not yet
    reaped by its parent."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
