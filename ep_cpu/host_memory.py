"""Keep freed host memory in the process for the next run (glibc's malloc), as onnxruntime's arena
keeps its blocks.

numpy allocates every output and temporary with malloc. glibc serves blocks from its heap up to
a threshold that it raises as blocks are freed, but it gives the top of the heap back to the
system once more than twice that threshold is free there. A model whose run frees megabytes at
once (a decoder step's outputs: GPT-2's 24 present key/value arrays of 390 KB, freed when the
next run's replace them) then has the pages of the next run's arrays mapped afresh: 1700 page
faults a GPT-2 step, its Concat and Transpose nodes 3.8 and 3.3 ms where the same nodes with the
memory kept took 1.2 and 1.1 (Zen 3, one thread).

`keep_freed_memory()` sets the two thresholds once (blocks up to MMAP_THRESHOLD from the heap,
the heap's top returned past TRIM_THRESHOLD free), unless the user set either through glibc's
environment variables, or EP_CPU_MALLOC=system asks for malloc's own settings. Other C libraries
(musl, macOS, Windows) are left alone.

Where the kernel backs memory with transparent huge pages on request (THP mode "madvise"), the
heap's next HUGE_HEAP_BYTES are marked for them too, as glibc's `glibc.malloc.hugetlb=1` tunable
marks its heap (which only the environment of a starting process can set). A 1x1 conv reads its
input in place, a channel's row every 12 KB (56x56 maps): with 4 KB pages nearly every load of
its tiles missed the TLB (256->64 channels on 56x56 1631 -> 1323 us, 512->128 on 28x28 1604 ->
1251; MobileNetV2 -3%, ResNet-50 -1 to -3%; Intel Xeon, 1 thread). Memory is only committed as it is
touched, 2 MB at a time in that range.
"""
from __future__ import annotations

import ctypes
import os
import threading

MMAP_THRESHOLD = 32 * 1024 * 1024    # glibc's own ceiling for its dynamic threshold
TRIM_THRESHOLD = 256 * 1024 * 1024
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # mallopt parameters (malloc.h)
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "MALLOC_MMAP_MAX_", "GLIBC_TUNABLES")

HUGE_HEAP_BYTES = 240 * 1024 * 1024
_HEAP_BLOCK = 30 * 1024 * 1024       # under MMAP_THRESHOLD: served from the heap
_MADV_HUGEPAGE = 14

_lock = threading.Lock()
_state: dict = {"done": False, "applied": False}


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process (later calls return the first answer); whether
    they were set."""
    with _lock:
        if not _state["done"]:
            _state["done"] = True
            _state["applied"] = _apply()
        return _state["applied"]


def _apply() -> bool:
    if os.environ.get("EP_CPU_MALLOC", "").strip().lower() == "system":
        return False
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):   # not glibc
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # (the mmap threshold first: setting either one fixes both for the rest of the process)
    if not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return False
    if thp_mode() == "madvise":
        advise_huge_pages(libc)
    return True


def thp_mode() -> str:
    """The kernel's transparent huge page mode ("always", "madvise", "never"; "" if unknown)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return ""
    return text[text.index("[") + 1:text.index("]")] if "[" in text and "]" in text else ""


def advise_huge_pages(libc) -> bool:
    """Mark the heap's next HUGE_HEAP_BYTES for transparent huge pages: blocks below the mmap
    threshold are allocated from it, advised, and freed back (the heap's top stays, under
    TRIM_THRESHOLD). Whether the advice was taken."""
    malloc, free, madvise = libc.malloc, libc.free, libc.madvise
    malloc.argtypes, malloc.restype = [ctypes.c_size_t], ctypes.c_void_p
    free.argtypes, free.restype = [ctypes.c_void_p], None
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    page = os.sysconf("SC_PAGE_SIZE")
    blocks: list[int] = []
    try:
        for _ in range(HUGE_HEAP_BYTES // _HEAP_BLOCK):
            at = malloc(_HEAP_BLOCK)
            if not at:
                break
            blocks.append(at)
        if not blocks:
            return False
        lo, hi = min(blocks), max(blocks) + _HEAP_BLOCK
        # one range where the blocks are contiguous (the heap), else each block's own
        ranges = ([(lo, hi)] if hi - lo <= len(blocks) * (_HEAP_BLOCK + page)
                  else [(b, b + _HEAP_BLOCK) for b in blocks])
        ok = True
        for a, b in ranges:
            a, b = -(-a // page) * page, b // page * page
            ok = madvise(a, b - a, _MADV_HUGEPAGE) == 0 and ok
        return ok
    finally:
        for at in reversed(blocks):
            free(at)
