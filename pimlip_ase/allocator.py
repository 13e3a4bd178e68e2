"""Keep large tensor buffers in the process heap on glibc (Linux), for CPU speed.

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
unmaps it on free, so each training step or MD step on a few hundred atoms page-faults its per-edge
(edges × 3 × features) buffers in from scratch. On an fcc Cu batch of 256 atoms that tripled the
time of a PaiNN energy+force step (benchmarks/training_cost.py). With mmap off and a high trim
threshold, freed buffers stay in the heap and are reused; the process keeps up to ``TRIM_BYTES`` of
freed memory instead of handing it back to the system at once.

Called by :func:`pimlip_ase.train` and by :class:`pimlip_ase.PIMLIPCalculator` on CPU (so by every
``pimlip`` command that trains or runs a model).
Set ``PIMLIP_SYSTEM_MALLOC=1`` to leave the allocator as it is. Other C libraries: no effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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
        libc_name = ctypes.util.find_library("c")
        if libc_name is None or platform.libc_ver()[0] != "glibc":
            return False
        libc = ctypes.CDLL(libc_name)
        _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES))
    return _applied
