"""The C heap's free memory is handed back after a run (revpers_core.heap), measured in this process's own
resident memory: blocks a worker thread allocated and freed below one it still holds stay resident until
`release_free_heap`, which hands them back without touching the live block."""
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
