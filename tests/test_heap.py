"""The C heap's free memory is handed back after a run (revpers_core.heap), measured in this process's own
resident memory: blocks a worker thread allocated and freed below one it still holds stay resident until
`release_free_heap`, which hands them back without touching the live block. While a run lasts
(`freed_pages_kept`), memory a worker thread frees is reused by its next allocations without a page fault,
counted in the thread's own minor faults; afterwards it goes back to the system."""
import resource
import sys
import threading
from pathlib import Path

import pytest

from revpers_core import heap

BLOCK = 96 * 1024   # under glibc's smallest mmap threshold (128 KiB): these come from a heap, not their own mapping
BLOCKS = 3072       # 288 MiB in all


def anonymous_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


pytestmark = pytest.mark.skipif(not (sys.platform.startswith("linux") and heap.can_release()),
                                reason="needs glibc's malloc_trim and /proc (Linux)")

needs_untuned_malloc = pytest.mark.skipif(heap.user_tuned(), reason="the process was started with malloc "
                                          "options of its own, which freed_pages_kept leaves as they are")


def test_freed_heap_memory_below_a_live_block_goes_back_to_the_system_and_the_live_block_keeps_its_bytes():
    held = {}
    heap.release_free_heap()  # start from a heap with nothing free in it
    baseline = anonymous_bytes()

    def worker():  # ComfyUI runs prompts on a worker thread, whose allocations have a heap of their own
        blocks = [bytearray(BLOCK) for _ in range(BLOCKS)]
        for b in blocks:
            b[::4096] = b"\x07" * len(b[::4096])  # touch every page: resident
        held["last"] = blocks[-1]                 # the last block stays live, above the freed ones
        del blocks

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    before = anonymous_bytes()
    # the freed blocks are still resident: what the release is for (glibc keeps free memory below a live block)
    assert before - baseline >= 0.7 * BLOCK * BLOCKS, (
        f"only {(before - baseline) / 2**20:.0f} MiB stayed resident: this C library already gave the freed "
        "blocks back, so the test cannot tell whether the release works")
    assert heap.release_free_heap() is True
    after = anonymous_bytes()
    freed = before - after
    assert freed >= 0.7 * BLOCK * BLOCKS, (
        f"only {freed / 2**20:.0f} MiB of {BLOCK * BLOCKS / 2**20:.0f} MiB freed below a live block went back")
    assert after - baseline < 0.3 * BLOCK * BLOCKS
    assert held["last"][::4096] == b"\x07" * len(held["last"][::4096])


CALL_BLOCK = 1 * 2**20   # under the 32 MiB mmap threshold the run sets: from a heap
CALL_BLOCKS = 192        # 192 MiB "freed by one model call": several of a thread's 64 MiB heaps, over the trim threshold
PAGES = CALL_BLOCK * CALL_BLOCKS // 4096


def one_call(block=CALL_BLOCK, blocks=CALL_BLOCKS):
    """What a model call does to the heap: allocate blocks, write every page, free them all."""
    held = [bytearray(block) for _ in range(blocks)]
    for b in held:
        b[::4096] = b"\x05" * len(b[::4096])
    del held


def faults_of_second_call(block=CALL_BLOCK, blocks=CALL_BLOCKS):
    """Minor page faults of this thread during a call made right after an identical one."""
    one_call(block, blocks)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    one_call(block, blocks)
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before


FRESH = 64 * 2**20  # over any mmap threshold: a mapping of its own


def faults_of_fresh_mapping():
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    block = bytearray(FRESH)  # zero-filled: every page written
    faults = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
    del block
    return faults


def on_thread(function):
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("value", function()))
    t.start()
    t.join()
    return result["value"]


@needs_untuned_malloc
def test_while_a_run_lasts_freed_pages_are_reused_without_faults_and_go_back_to_the_system_after():
    def run():
        with heap.freed_pages_kept() as kept:
            faults = faults_of_second_call()
            resident = anonymous_bytes()
        return kept, faults, resident, anonymous_bytes()

    kept, faults_in_run, resident_in_run, resident_after = on_thread(run)
    assert kept is True
    assert faults_in_run < 0.05 * PAGES, (
        f"{faults_in_run} page faults for {PAGES} pages of a call whose memory the call before had just freed")
    # the count can see faults: a block with a mapping of its own is all fresh pages
    fresh = on_thread(faults_of_fresh_mapping)
    assert fresh > 0.9 * FRESH // 4096, f"only {fresh} page faults for {FRESH // 4096} fresh pages"
    # and afterwards the run's freed memory has gone back to the system
    assert resident_in_run - resident_after > 0.5 * CALL_BLOCK * CALL_BLOCKS, (
        f"only {(resident_in_run - resident_after) / 2**20:.0f} MiB of the run's freed "
        f"{CALL_BLOCK * CALL_BLOCKS / 2**20:.0f} MiB went back after it")


CONV_CAST = 1280 * 1280 * 3 * 3 * 4  # SDXL's 1280-channel 3x3 convolution cast to float32: 56.25 MiB,
CONV_CASTS = 2                       # over the run's mmap threshold (32 MiB), under a thread heap's 64 MiB


@needs_untuned_malloc
def test_while_a_run_lasts_a_freed_block_over_the_mmap_threshold_is_reused_without_faults():
    # by default such a block gets a mapping of its own, unmapped when freed: all fresh pages every call
    def run():
        with heap.freed_pages_kept():
            return faults_of_second_call(CONV_CAST, CONV_CASTS)

    pages = CONV_CAST * CONV_CASTS // 4096
    faults = on_thread(run)
    assert faults < 0.05 * pages, (
        f"{faults} page faults for {pages} pages of {CONV_CASTS} blocks of {CONV_CAST / 2**20} MiB that the call "
        "before had just freed")


def test_a_process_started_with_malloc_options_of_its_own_is_left_as_it_was(monkeypatch):
    monkeypatch.setenv("MALLOC_TOP_PAD_", "131072")
    assert heap.user_tuned()
    with heap.freed_pages_kept() as kept:
        assert kept is False
    monkeypatch.delenv("MALLOC_TOP_PAD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576")
    assert heap.user_tuned()
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # options the run does not touch: its own
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert not heap.user_tuned()
