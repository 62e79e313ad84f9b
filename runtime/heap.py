"""Keeping the cyclic garbage collector off the serving path."""

from __future__ import annotations

import gc


def settle_heap() -> int:
    """Take every object alive now (torch, kserve, the loaded models: some 250,000 objects)
    out of the cyclic garbage collector's reach. A full collection over them holds the GIL
    for 100-250 ms on a small CPU, stalling the event loop and the latency-critical lane at
    once; frozen, they are still freed by reference counting. Returns how many are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def reclaim_heap(_name: str = "") -> None:
    """After an unload: the model's objects may have been frozen with the rest, and cycles
    among them are only found by a collection over everything (one pause, at the unload
    the operator asked for, instead of one at a random request later)."""
    gc.unfreeze()
    settle_heap()
