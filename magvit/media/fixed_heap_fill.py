"""Repeatable video encodes: x264 / x265 read a few heap bytes they never wrote.

On small frames libx264 and libx265 read uninitialised heap memory (valgrind shows it), so
the same frames can encode to slightly different bitstreams from run to run, whatever the
thread settings: the corpus's MP4s, the codec baselines of the compression evaluation.
Encoding inside `fixed_heap_fill` makes those reads see zeros, as in a fresh process.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

MALLOPT = getattr(ctypes.CDLL(None), "mallopt", None)  # glibc; None elsewhere
_M_PERTURB = -6  # glibc mallopt: fill new heap blocks with byte ^ 0xFF, freed ones with byte
_ZERO_FILL = 0xFF  # new blocks read 0, as fresh pages from the kernel do (0 would mean off)


@contextlib.contextmanager
def fixed_heap_fill() -> Iterator[None]:
    """Within the block, glibc zero-fills newly allocated heap memory, so code that reads
    memory it never wrote reads the same values every run (those of a fresh process). A no-op
    without glibc's `mallopt`. The setting is process-wide while it lasts (other threads'
    blocks are filled too, which costs only time)."""
    if MALLOPT is None:
        yield
        return
    MALLOPT(_M_PERTURB, _ZERO_FILL)
    try:
        yield
    finally:
        MALLOPT(_M_PERTURB, 0)
