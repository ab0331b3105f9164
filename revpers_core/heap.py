"""The C heap's free memory during and after a run of the model on the CPU.

A run on the CPU allocates and frees many activations, temporaries and weight casts (every model call
casts the UNet's weights to the compute dtype and frees the casts again, tens of MiB at a time). glibc's
malloc keeps freed blocks inside its heaps, hands back only the free top of a heap once it passes a
threshold, deletes a thread's heap as soon as it empties, and gives blocks above its mmap threshold
mappings of their own that are unmapped when freed. Between model calls of one run that is waste: the
next call's casts land in fresh pages, each of which the kernel must map and zero. After the run it
is the other way round: freed blocks below a live one stay resident, memory the process holds that no
tensor uses, which counts against every other program until the server stops.

`freed_pages_kept` therefore keeps freed pages in the heaps while a run lasts (glibc's ``M_TOP_PAD``,
``M_TRIM_THRESHOLD``; ``M_MMAP_MAX`` 0 so that blocks a heap can hold get no mapping of their own;
``M_MMAP_THRESHOLD`` fixed at 32 MiB, the top of glibc's own adjustment of it, which stops once any of
these is set), then puts glibc's defaults back and hands every whole free page back
(`release_free_heap`, ``malloc_trim(0)``). Nothing live moves and no value changes. Where the C library
is not glibc (macOS, Windows, musl) only nothing happens; a process started with malloc options of its
own (``MALLOC_TOP_PAD_`` and the like, or ``glibc.malloc`` tunables of those names) is left as started.
The pack applies this only to runs whose model computes on the CPU (nodes/_diffusion_runs.py): on a GPU
the weights and their casts live in the card's memory, where these settings do nothing
(benchmarks/bench_interleaved_runs.py measures the CPU case; docs/performance.md has the figures).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Callable, Iterator, Optional

# mallopt's parameters (glibc's malloc.h) and the values used here
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
MMAP_THRESHOLD = 32 * 2**20        # blocks from this size get a mapping of their own (glibc's adjustment's top)
RUN_TOP_PAD = 64 * 2**20           # a thread's heap is at most 64 MiB: with this much kept free, none is deleted
RUN_TRIM_THRESHOLD = 1024 * 2**20  # the main heap's free top is kept up to 1 GiB while the run lasts
RUN_MMAP_MAX = 0                   # while the run lasts, blocks a heap can hold get no mapping of their own
DEFAULT_TOP_PAD = 128 * 2**10      # glibc's defaults, put back after the run
DEFAULT_TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # twice the mmap threshold, as glibc's adjustment sets it
DEFAULT_MMAP_MAX = 65536


@functools.lru_cache(maxsize=None)
def _glibc_call(name: str, argtypes: tuple) -> Optional[Callable[..., int]]:
    """One of glibc's malloc calls (returning int), looked up once; None where the C library is not glibc:
    not Linux, no C library found, or no malloc_trim (musl has none)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # glibc's own: where it is missing, so are glibc's options
        call = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    call.argtypes, call.restype = list(argtypes), ctypes.c_int
    return call


def _malloc_trim() -> Optional[Callable[[int], int]]:
    return _glibc_call("malloc_trim", (ctypes.c_size_t,))


def _mallopt() -> Optional[Callable[[int, int], int]]:
    return _glibc_call("mallopt", (ctypes.c_int, ctypes.c_int))


def can_release() -> bool:
    """Whether this process's C library can hand free heap memory back (glibc)."""
    return _malloc_trim() is not None


def release_free_heap() -> bool:
    """Hand every whole free page of the C library's heaps back to the system. True when some memory was
    handed back, False when none was or the C library has no way to (see the module's docstring)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


# the options a run's settings set
_OWN_OPTIONS = ("top_pad", "trim_threshold", "mmap_threshold", "mmap_max")


def user_tuned() -> bool:
    """Whether whoever started the process set glibc's trim or mmap options themselves (MALLOC_TOP_PAD_ and
    the like, or glibc.malloc tunables of those names): then `freed_pages_kept` leaves the allocator as they
    set it. Other malloc options (MALLOC_ARENA_MAX, say) do not count."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(f"MALLOC_{name.upper()}_" in os.environ or f"glibc.malloc.{name}=" in tunables
               for name in _OWN_OPTIONS)


def _set(options) -> bool:
    set_option = _mallopt()
    if set_option is None:
        return False
    return all(set_option(param, value) == 1 for param, value in options)


@contextlib.contextmanager
def freed_pages_kept() -> Iterator[bool]:
    """While the block lasts, memory the C heap frees stays in its heaps for the next allocation instead of
    going back to the system (see the module's docstring); afterwards glibc's trim settings are put back and
    the free memory is handed back (`release_free_heap`). Yields whether the settings took (False where the
    C library is not glibc, or when the process was started with malloc options of its own: then it changes
    nothing but the hand-back)."""
    ours = _mallopt() is not None and not user_tuned()
    kept = ours and _set([(M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, RUN_TRIM_THRESHOLD),
                          (M_TOP_PAD, RUN_TOP_PAD), (M_MMAP_MAX, RUN_MMAP_MAX)])
    try:
        yield kept
    finally:
        if ours:  # also when only some of the settings took
            _set([(M_MMAP_MAX, DEFAULT_MMAP_MAX), (M_TOP_PAD, DEFAULT_TOP_PAD),
                  (M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)])
        release_free_heap()
