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

While a run lasts, the opposite is wanted. Every model call casts the UNet's weights to float32 and frees
the casts again, tens of MiB at a time. By default glibc hands the free top of a heap back as soon as it
passes its trim threshold, and deletes a thread's 64 MiB heap as soon as it empties; the next call's casts
then land in fresh pages, and each page costs the kernel a fault (mapping and zeroing it). Measured in one
process on the full-size SDXL stand-in (benchmarks/bench_interleaved_runs.py), ComfyUI's own sampler took
3.7-4.1 million such faults per 10 calls and the pack's runs 8.9-12.6 million, 0.8-1.8 s per million on
this CPU. `freed_pages_kept` holds the freed pages in the heaps for the next call while the run lasts
(glibc's ``M_TOP_PAD`` and ``M_TRIM_THRESHOLD``), then puts those two back to glibc's defaults and hands the
free memory back as above. It also fixes the size from which a block gets its own mapping
(``M_MMAP_THRESHOLD``) at 32 MiB, the largest value glibc's own adjustment of it reaches: glibc stops
adjusting it once any of the three is set, and a process's first run must not freeze it at its
starting value of 128 KiB. That one is not put back.

Blocks over that threshold still got mappings of their own, unmapped again when freed: on SDXL the
float32 casts of the 1280-channel 3x3 convolutions (56.25 MiB) and feed-forward projections (50 MiB), a
dozen or so each per call. Which of them found room in a heap instead depended on what else the heaps
held, and so varied from run to run: counted in one server (munmap calls, with perf), a 20-call run of
ComfyUI's own sampler unmapped 20 of them, one of the pack's 399, about 21 GiB of fresh pages. While
a run lasts no block gets a mapping of its own where a heap can hold it (``M_MMAP_MAX`` 0): a thread's
heap holds up to 64 MiB, so those casts land in a heap that is kept for the next call; larger blocks
are still mapped, as glibc does when no heap can hold them. After the run glibc's default (65536
mappings) is put back. A process started with malloc options of its own
(``MALLOC_TOP_PAD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_MMAP_MAX_``, or
``glibc.malloc`` tunables of those names) is left as it was started.
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
