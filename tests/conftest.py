"""Shared fixtures: small structures labelled by EMT and a quickly trained model."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from pimlip_ase.perturb import rattle

torch.set_num_threads(int(os.environ.get("PIMLIP_TEST_THREADS", "1")))


def label_with(atoms_list, calc_factory=EMT, forces=True, stress=False):
    """Attach REF_energy (and REF_forces / REF_stress) computed by an ASE calculator."""
    out = []
    for atoms in atoms_list:
        a = atoms.copy()
        a.calc = calc_factory()
        a.info["REF_energy"] = a.get_potential_energy()
        if forces:
            a.arrays["REF_forces"] = a.get_forces()
        if stress:
            a.info["REF_stress"] = a.get_stress()
        a.calc = None
        out.append(a)
    return out


def cu_cell(size=(2, 2, 2), a=3.61):
    return bulk("Cu", "fcc", a=a, cubic=True) * size


@pytest.fixture(scope="session")
def cu_dataset():
    """40 rattled 32-atom Cu cells (EMT energies, forces, stress), some strained."""
    rng = np.random.default_rng(0)
    structures = []
    for i in range(40):
        atoms = cu_cell()
        strain = np.eye(3) + 0.02 * rng.uniform(-1, 1, (3, 3))
        atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
        structures.append(rattle(atoms, 0.12, "gaussian", seed=i))
    return label_with(structures, forces=True, stress=True)


@pytest.fixture(scope="session")
def trained_cu_model(cu_dataset, tmp_path_factory):
    """A small PaiNN trained for a few epochs on EMT Cu energies and forces (model file path)."""
    from pimlip_ase import train

    out = tmp_path_factory.mktemp("trained_cu")
    result = train(
        {
            "model": {"name": "painn", "cutoff": 4.0, "n_features": 16, "n_interactions": 2},
            "data": {"train": cu_dataset, "valid": 0.2},
            "loss": {"energy": 1.0, "forces": 10.0},
            "optim": {"max_epochs": 8, "lr": 5e-3, "batch_size": 4},
            "output": str(out / "run"),
        }
    )
    return result.model_path


@pytest.fixture()
def ethanol():
    return molecule("CH3CH2OH")
