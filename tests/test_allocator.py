"""The glibc heap setting: a freed large buffer is reused instead of mapped and page-faulted in afresh.

Its speed effect on training steps is measured by benchmarks/training_cost.py (system malloc rows).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc-only setting"
)

SCRIPT = """
import ctypes, resource, sys
from pimlip_ase.allocator import keep_large_blocks_in_heap
applied = keep_large_blocks_in_heap() if sys.argv[1] == "heap" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def touch():  # a buffer above glibc's largest mmap threshold (32 MB), written through, then freed
    block = libc.malloc(64 * 2**20)
    ctypes.memset(block, 1, 64 * 2**20)
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    touch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 3 * 64 * 2**20 // 4096  # 4 KiB pages written by the three measured rounds


def _faults(mode: str, **env: str) -> tuple[str, int]:
    tuning = ("MALLOC_", "GLIBC_TUNABLES", "PIMLIP_")  # malloc settings of the outer environment
    scrubbed = {k: v for k, v in os.environ.items() if not k.startswith(tuning)}
    env = {**scrubbed, **env}
    cmd = [sys.executable, "-c", SCRIPT, mode]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    out = run.stdout.split()
    return out[0], int(out[1])


def test_large_buffers_are_reused_without_page_faults():
    applied, faults = _faults("heap")
    system_applied, system_faults = _faults("system")
    assert (applied, system_applied) == ("True", "False")
    # glibc's default maps (and page-faults in) the block afresh each round; the heap keeps it
    assert faults < PAGES / 100
    assert system_faults > faults


def test_environment_variable_leaves_the_allocator_alone():
    applied, _ = _faults("heap", PIMLIP_SYSTEM_MALLOC="1")
    assert applied == "False"


def test_the_calculator_switches_it_on(tmp_path):
    from ase.build import bulk

    from pimlip_ase import PIMLIPCalculator, allocator, build_model

    if os.environ.get("PIMLIP_SYSTEM_MALLOC", "") not in ("", "0"):
        pytest.skip("PIMLIP_SYSTEM_MALLOC is set for this test session")
    atoms = bulk("Cu", cubic=True)
    atoms.calc = PIMLIPCalculator(build_model("schnet", species=["Cu"], cutoff=4.0, n_features=8))
    atoms.get_potential_energy()
    assert allocator._applied is True
