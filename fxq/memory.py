"""Give freed heap memory back to the OS between pipeline stages.

glibc keeps freed blocks in its heap (its mmap threshold grows after large frees), so activations of
the calibration passes and the tracer's temporaries stay in the process's RSS and stack up with the
export's own peak. malloc_trim returns them; elsewhere (no glibc) this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.lru_cache(maxsize=1)
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> bool:
    """Collect garbage and trim the heap; True when the heap could be trimmed."""
    gc.collect()
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))
