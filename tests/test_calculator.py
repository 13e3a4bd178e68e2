"""The ASE calculator: results, caching, committee, refusals, and energy conservation in NVE MD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.verlet import VelocityVerlet

from pimlip_ase import PIMLIPCalculator, build_model
from pimlip_ase.errors import InvalidStructureError
from pimlip_ase.workflow.generate import thermalize

from .conftest import cu_cell


def _model(seed, species=("Cu",)):
    torch.manual_seed(seed)
    m = build_model("schnet", species=list(species), cutoff=4.0, n_features=16, n_interactions=2)
    m.set_reference([-3.0] * len(species), 1.0, 0.0)
    return m


@pytest.fixture()
def cu():
    atoms = cu_cell()
    atoms.rattle(0.05, seed=0)
    return atoms


def test_results_are_consistent(cu):
    cu.calc = PIMLIPCalculator(_model(0))
    e = cu.get_potential_energy()
    assert cu.get_potential_energy(force_consistent=True) == e  # free_energy
    assert cu.get_potential_energies().sum() == pytest.approx(e, rel=1e-12)
    assert cu.get_forces().shape == (len(cu), 3)
    assert cu.get_stress().shape == (6,)
    assert abs(cu.get_forces().sum(axis=0)).max() < 1e-10  # Newton's third law (translation invariance)


def test_calculation_is_cached_until_atoms_change(cu):
    """One model call serves every property until positions, numbers, cell or pbc change; each of
    those changes gives a fresh calculator's result, and magnetic moments (unread) change nothing."""
    model = _model(0, species=("H", "Cu"))
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    cu.calc = PIMLIPCalculator(model)
    cu.get_potential_energy()
    cu.get_forces()
    cu.get_stress()
    assert len(calls) == 1
    cu.set_initial_magnetic_moments(np.ones(len(cu)))
    cu.get_forces()
    assert len(calls) == 1
    changes = (
        lambda a: a.positions.__setitem__((0, 0), a.positions[0, 0] + 0.01),
        lambda a: a.set_cell(a.cell * 1.01),  # the cell only: the atoms stay put
        lambda a: a.numbers.__setitem__(0, 1),
        lambda a: a.set_pbc((True, True, False)),
    )
    for n_calls, change in enumerate(changes, start=2):
        change(cu)
        forces = cu.get_forces()
        assert len(calls) == n_calls
        fresh = PIMLIPCalculator(_model(0, species=("H", "Cu"))).get_property("forces", cu)
        np.testing.assert_allclose(forces, fresh, atol=1e-12)


def test_neighbour_list_reuse_matches_a_fresh_list(cu):
    calc = PIMLIPCalculator(_model(0), skin=1.0)
    cu.calc = calc
    cu.get_forces()
    cu.positions += np.random.default_rng(0).normal(scale=0.1, size=cu.positions.shape)
    reused = cu.get_forces()
    assert calc.neighbors.n_builds == 1
    fresh = PIMLIPCalculator(_model(0), skin=0.0).get_property("forces", cu)
    np.testing.assert_allclose(reused, fresh, atol=1e-12)


def test_one_calculator_serves_structures_of_other_species_and_sizes(cu):
    """What the calculator keeps between calls (the neighbour list and its tensors) follows the
    structure: swapping atoms, changing size, then going back matches a fresh calculator each time."""
    calc = PIMLIPCalculator(_model(0, species=("H", "Cu")))
    swapped = cu.copy()
    swapped.numbers[:4] = 1
    smaller = cu[:-3]
    for atoms in (cu, swapped, smaller, cu):
        fresh = PIMLIPCalculator(_model(0, species=("H", "Cu")))
        for prop in ("energy", "forces", "stress"):
            expected = fresh.get_property(prop, atoms)
            np.testing.assert_allclose(calc.get_property(prop, atoms), expected, atol=1e-12)


def test_committee_mean_and_spread(cu):
    m1, m2 = _model(1), _model(2)
    single = [PIMLIPCalculator(m).get_property("forces", cu) for m in (m1, m2)]
    energies = [PIMLIPCalculator(m).get_property("energy", cu) for m in (m1, m2)]
    cu.calc = PIMLIPCalculator([m1, m2])
    np.testing.assert_allclose(cu.get_forces(), 0.5 * (single[0] + single[1]), atol=1e-12)
    assert cu.calc.results["energy_std"] == pytest.approx(abs(energies[0] - energies[1]) / 2, rel=1e-10)
    expected = np.linalg.norm(np.abs(single[0] - single[1]) / 2, axis=1)
    np.testing.assert_allclose(cu.calc.results["forces_std"], expected, atol=1e-12)
    same = PIMLIPCalculator([m1, m1])
    same.get_property("energy", cu)
    assert same.results["energy_std"] == 0.0


def test_refusals(cu):
    cu.calc = PIMLIPCalculator(_model(0))
    cu.positions[3, 1] = np.nan
    with pytest.raises(InvalidStructureError, match=r"atoms \[3\]"):
        cu.get_potential_energy()
    mol = molecule("H2O")
    mol.calc = PIMLIPCalculator(_model(0, ("H", "O")))
    assert np.isfinite(mol.get_forces()).all()
    with pytest.raises(PropertyNotImplementedError, match="periodic in all three"):
        mol.get_stress()
    with pytest.raises(ValueError, match="different species"):
        PIMLIPCalculator([_model(0), _model(0, ("H", "O"))])


def test_nve_conserves_energy_with_a_trained_model(trained_cu_model):
    """1 ps of velocity Verlet at 0.5 fs: total energy stays within 1 meV/atom."""
    atoms = cu_cell()
    atoms.rattle(0.05, seed=7)
    atoms.calc = PIMLIPCalculator(trained_cu_model)
    thermalize(atoms, 300, np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    totals = []
    dyn.attach(lambda: totals.append(atoms.get_total_energy()), interval=10)
    dyn.run(2000)
    totals = np.array(totals)
    assert atoms.get_temperature() > 50  # atoms really moved
    assert np.abs(totals - totals[0]).max() / len(atoms) < 1e-3


def test_serves_phonopy_and_cell_relaxation(trained_cu_model):
    from ase.build import bulk
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    from pimlip_ase.workflow.stability import phonons

    calc = PIMLIPCalculator(trained_cu_model)
    result = phonons(bulk("Cu", "fcc", a=3.61), calc, supercell_matrix=[2, 2, 2], mesh=(4, 4, 4))
    assert np.isfinite(result.mesh_frequencies_THz).all()
    assert result.asr_satisfied  # translation invariance of the model's force constants
    atoms = bulk("Cu", "fcc", a=3.55, cubic=True)
    atoms.calc = calc
    opt = BFGS(FrechetCellFilter(atoms), logfile=None)
    assert opt.run(fmax=1e-3, steps=200)
    assert np.abs(atoms.get_stress()).max() < 1e-3
