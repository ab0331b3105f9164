"""Handing the C heap's free memory back to the system after a run.

A run on the CPU allocates and frees thousands of activations and temporaries of a few KiB to a few
MiB. The C library's allocator (glibc's malloc) keeps what is freed inside its heaps (one per thread
that allocated: ComfyUI runs prompts on a worker thread) for reuse, and gives back to the system only
the free memory at the very top of a heap. Freed blocks below a live one stay resident: memory the
process holds that no tensor uses. In a server with the full-size SDXL stand-in, after three runs of
the two-face photo workflow, that was about 0.8 GiB, against 0.1 GiB after ComfyUI's own sampler; the
next run reuses it, so it does not grow, but it counts against every other program on the machine
until the server stops.

`release_free_heap` asks glibc to hand back every whole free page of all its heaps (``malloc_trim(0)``).
Nothing live moves and no value changes; a page handed back is given again, zeroed, when it is next
written. Where the C library is not glibc (macOS, Windows, musl), there is no such call and it does
nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Callable, Optional


@functools.lru_cache(maxsize=None)
def _malloc_trim() -> Optional[Callable[[int], int]]:
    """glibc's malloc_trim, looked up once; None where the C library has no such call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # no C library found, or not glibc (musl has no malloc_trim)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def can_release() -> bool:
    """Whether this process's C library can hand free heap memory back (glibc)."""
    return _malloc_trim() is not None


def release_free_heap() -> bool:
    """Hand every whole free page of the C library's heaps back to the system. True when some memory was
    handed back, False when none was or the C library has no way to (see the module's docstring)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
