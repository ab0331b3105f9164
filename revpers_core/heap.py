"""Handing the C heap's free memory back to the system after a run.

A run on the CPU allocates and frees thousands of activations and temporaries of a few KiB to a few
MiB. The C library's allocator (glibc's malloc) keeps what is freed inside its heaps (one per thread
that allocated: ComfyUI runs prompts on a worker thread) for reuse, and gives back to the system only
the free memory at the very top of a heap. Freed blocks below a live one stay resident: memory the
process holds that no tensor uses. On the full-size SDXL stand-in that was about 0.8 GiB after a pack
run against 0.1 GiB after ComfyUI's own sampler, and it is the same 0.8 GiB whether the run had one
face or more; the next run reuses it, so it does not grow, but it counts against every other program
on the machine until the server stops.

`release_free_heap` asks glibc to hand back every whole free page of all its heaps (``malloc_trim(0)``).
Nothing live moves and no value changes; a page handed back is given again, zeroed, when it is next
written. Where the C library is not glibc (macOS, Windows, musl), there is no such call and it does
nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Optional

_TRIM = None  # the C library's malloc_trim, once looked up; False where there is none


def _malloc_trim() -> Optional[object]:
    global _TRIM
    if _TRIM is None:
        _TRIM = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                trim = libc.malloc_trim  # glibc only: musl and others have no such symbol
            except (OSError, AttributeError):
                trim = None
            if trim is not None:
                trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
                _TRIM = trim
    return _TRIM or None


def can_release() -> bool:
    """Whether this process's C library can hand free heap memory back (glibc)."""
    return _malloc_trim() is not None


def release_free_heap() -> bool:
    """Hand every whole free page of the C library's heaps back to the system. True when some memory was
    handed back, False when none was or the C library has no way to (see the module's docstring)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
