"""The glibc heap setting: a training step reuses its buffers instead of page-faulting them in afresh."""

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
import resource, sys, torch
from ase.build import bulk
from pimlip_ase import build_model
from pimlip_ase.allocator import keep_large_blocks_in_heap
from pimlip_ase.data import build_graphs, collate
applied = keep_large_blocks_in_heap() if sys.argv[1] == "heap" else False
torch.set_num_threads(1)
cells = [bulk("Cu", cubic=True).repeat(2) for _ in range(2)]
for i, atoms in enumerate(cells):
    atoms.rattle(0.1, seed=i)
model = build_model("painn", species=["Cu"], cutoff=5.0, n_features=64)
graph = collate(build_graphs(cells, 5.0))
def step():  # one energy+force training step's worth of tensors
    out = model(graph, forces=True, create_graph=True)
    (out["energy"].sum() + out["forces"].square().sum()).backward()
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


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
    # the system allocator maps (and page-faults in) its large buffers afresh at every step
    assert faults < system_faults / 4


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
