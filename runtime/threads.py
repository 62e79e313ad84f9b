"""OS threads and torch's intra-op (OpenMP) threads: a thread's team size and OS priority.

Linux schedules threads, not processes, and OpenMP sizes a team per calling thread: both
settings made here apply to the calling thread only (and to the OpenMP workers it starts).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import logging
import os
import sys
import threading

import torch

log = logging.getLogger(__name__)


@functools.cache
def _openmp() -> ctypes.CDLL | None:
    here = os.path.join(os.path.dirname(torch.__file__), "lib")
    for path in sorted(glob.glob(os.path.join(here, "libgomp*.so*"))):
        return ctypes.CDLL(path)
    found = ctypes.util.find_library("gomp")
    return ctypes.CDLL(found) if found else None


def limit_intra_op_threads(threads: int) -> None:
    """Give the calling thread's torch ops ``threads`` OpenMP threads, leaving every other
    thread's setting alone (``torch.set_num_threads`` also changes the process default that
    ATen applies to each thread on its first op, e.g. to the batch executor's)."""
    current = torch.get_num_threads()  # first: ATen initialises this thread's team size
    if current == threads:
        return
    gomp = _openmp()
    if gomp is None:
        log.warning("cannot size this thread's OpenMP team; it keeps %d threads", current)
        return
    gomp.omp_set_num_threads(threads)


def lower_thread_priority(name: str, nice: int, idle: bool) -> str:
    """Lowers the OS priority of the calling thread; returns what was applied.

    Linux schedules threads, not processes: the policy and nice value set here apply to this
    thread, and torch's OpenMP workers, which this thread creates on its first parallel op,
    inherit them. ``idle`` asks for ``SCHED_IDLE``: the thread runs only on cores nothing
    else wants, and any other thread of the server that wakes up (the event loop, the
    latency-critical lane) takes the core at once rather than at the next time slice. Where
    that policy is refused, nice 19 is the nearest thing.
    """
    tid = threading.get_native_id()
    if idle:
        try:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            return "idle"
        except (OSError, AttributeError):
            log.warning("SCHED_IDLE refused for the %s thread; using nice 19", name)
            nice = 19
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
            return f"nice {nice}"
        except (OSError, AttributeError):
            log.warning("cannot lower the priority of the %s thread", name)
    return "normal"


def set_switch_interval(ms: float | None) -> float:
    """Set the interpreter's thread switch interval to ``ms`` (None: leave Python's own,
    5 ms): the longest a serving thread waits for the interpreter lock while the executor
    thread holds it between torch calls (on CUDA, launching kernels). Returns the interval in
    force, in seconds."""
    if ms is not None:
        sys.setswitchinterval(ms / 1000.0)
        log.info("thread switch interval %.3g ms", ms)
    return sys.getswitchinterval()
