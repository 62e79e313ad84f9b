import gc
import weakref

from runtime.heap import reclaim_heap, settle_heap


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_settle_freezes_what_is_alive_and_reclaim_collects_frozen_cycles():
    try:
        kept = _Cycle()
        frozen = settle_heap()
        assert frozen > 0 and gc.get_freeze_count() == frozen
        # a cycle frozen with the rest is beyond an ordinary full collection...
        dropped = _Cycle()
        settle_heap()
        gone = weakref.ref(dropped)
        del dropped
        gc.collect()
        assert gone() is not None
        # ...until an unload reclaims: unfreeze, collect everything, freeze again
        reclaim_heap("some-model")
        assert gone() is None
        assert kept.me is kept and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
