"""Keep large tensor buffers in the process heap on glibc (Linux), for CPU speed.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
unmaps it on free, so each training step or MD step on a few hundred atoms page-faults its per-edge
(edges × 3 × features) buffers in from scratch. On an fcc Cu batch of 256 atoms that made a PaiNN
energy+force step 2.6× slower (benchmarks/training_cost.py). With mmap off and a high trim
threshold, freed buffers stay in the heap and are reused (when a free block, alone or merged with
its free neighbours, fits the next request with torch's 64-byte alignment padding). The price is
memory: the process keeps its peak heap (freed blocks below the top are not returned to the system),
and the peak itself is higher (3.1 instead of 1.9 GB for that step). A later large job in the same
process has that much less free memory (MACE on 10,000 Cu atoms ran out of 24 GB after our model in
one process).

Called by :func:`pimlip_ase.train` and by :class:`pimlip_ase.PIMLIPCalculator` on CPU (so by every
``pimlip`` command that trains or runs a model).
Set ``PIMLIP_SYSTEM_MALLOC=1`` to leave the allocator as it is. Other C libraries: no effect.
"""

from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, <malloc.h>
TRIM_BYTES = 512 * 2**20
_applied: bool | None = None


def keep_large_blocks_in_heap() -> bool:
    """Switch glibc's malloc to heap-only allocation (idempotent). Returns whether it is in effect."""
    global _applied
    if _applied is None:
        _applied = False
        if os.environ.get("PIMLIP_SYSTEM_MALLOC", "") not in ("", "0") or platform.system() != "Linux":
            return False
        libc = ctypes.CDLL(None)  # the symbols the process already has: its C library
        if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
            return False  # musl and other C libraries: leave them alone
        _applied = bool(libc.mallopt(_M_MMAP_MAX, 0))
        if _applied:
            libc.mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)
    return _applied
