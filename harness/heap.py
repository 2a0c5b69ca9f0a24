"""Give the C heap's freed pages back to the operating system between large phases of work.

glibc keeps memory that tensors freed in its heap (only allocations above its dynamic mmap threshold, up to
32 MB, go back at once), so the pages a finished phase used stay resident and the next phase's peak lands on
top of them. :func:`trim` calls ``malloc_trim(0)``, which returns every free page; it costs a walk of the free
lists (milliseconds) and changes no value. Elsewhere (another C library, Windows, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> object | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        log.debug("no malloc_trim in this C library: heap trimming is off")
        return None


def trim() -> bool:
    """Return the C heap's free pages to the OS; True when the C library could (glibc)."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
