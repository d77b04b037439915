"""Pause Python's cyclic garbage collector over a burst of allocations.

Building a model's channel graph or a compact copy allocates hundreds of thousands of small
containers (ids, dict entries, copied module dicts) while the model's own objects are alive.
The collector runs whenever allocations outnumber deallocations by a threshold, and its older
generations scan every tracked object; on ResNet-50 that made grouping the channels 6x slower
(0.20 s against 0.03 s). Nothing in such a burst needs collecting before it ends: cycles it
leaves are collected as usual once the collector runs again."""
import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The collector off inside (as a context manager or a decorator), back as it was after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
