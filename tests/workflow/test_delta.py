"""Δ-learning: exact Δ-labels and the summed cheap + correction calculator (FD forces and stress)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.calculators.lj import LennardJones
from ase.calculators.mixing import SumCalculator

from pimlip_ase import PIMLIPCalculator, build_model
from pimlip_ase.errors import ConfigError
from pimlip_ase.keys import ENERGY, FORCES, STRESS
from pimlip_ase.workflow.delta import (
    CHEAP_ENERGY,
    CHEAP_METHOD,
    delta_calculator,
    delta_labels,
    subtract_labels,
)
from pimlip_ase.workflow.label import ASELabeller
from tests.conftest import cu_cell, label_with


def _reference_calc():
    """A 'reference' level that differs from EMT by a known term: EMT + a weak Lennard-Jones."""
    return SumCalculator([EMT(), LennardJones(sigma=2.3, epsilon=0.01, rc=4.0, smooth=True)])


def _cells(n: int) -> list:
    cells = []
    for i in range(n):
        atoms = cu_cell((1, 1, 2))
        atoms.rattle(0.08, seed=i)
        cells.append(atoms)
    return cells


def _correction_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("schnet", species=["Cu"], cutoff=4.0, n_features=16, n_interactions=2)
    model.set_reference([0.1], 0.5, 0.02)
    return model


def test_delta_labels_equal_the_known_difference():
    reference = label_with(_cells(3), _reference_calc, forces=True, stress=True)
    deltas = delta_labels(reference, EMT())
    for ref, delta in zip(reference, deltas, strict=True):
        lj = ref.copy()
        lj.calc = LennardJones(sigma=2.3, epsilon=0.01, rc=4.0, smooth=True)
        assert delta.info[ENERGY] == pytest.approx(lj.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(delta.arrays[FORCES], lj.get_forces(), atol=1e-12)
        np.testing.assert_allclose(delta.info[STRESS], lj.get_stress(), atol=1e-12)
        assert delta.info[ENERGY] + delta.info[CHEAP_ENERGY] == pytest.approx(ref.info[ENERGY], abs=1e-12)
        np.testing.assert_array_equal(delta.positions, ref.positions)


def test_labeller_and_calculator_give_the_same_delta_labels():
    reference = label_with(_cells(2), _reference_calc, forces=True)
    for atoms in reference:
        atoms.info["REF_method"] = "emt+lj"
    by_calc = delta_labels(reference, EMT())
    by_labeller = delta_labels(reference, ASELabeller("emt"))
    assert by_labeller[0].info[CHEAP_METHOD] == "emt" and by_calc[0].info[CHEAP_METHOD] == "EMT"
    assert by_labeller[0].info["REF_method"] == "emt+lj - emt"
    for a, b in zip(by_calc, by_labeller, strict=True):
        assert a.info[ENERGY] == b.info[ENERGY]
        np.testing.assert_array_equal(a.arrays[FORCES], b.arrays[FORCES])


def test_missing_reference_labels_stay_missing():
    energy_only = label_with(_cells(2), _reference_calc, forces=False)
    energy_only[1].info.pop(ENERGY)
    deltas = delta_labels(energy_only, EMT())
    assert ENERGY in deltas[0].info and ENERGY not in deltas[1].info
    assert all(FORCES not in d.arrays and STRESS not in d.info for d in deltas)
    assert CHEAP_ENERGY in deltas[1].info


def test_subtract_labels_refuses_mismatched_twins():
    reference = label_with(_cells(2), _reference_calc, forces=False)
    cheap = label_with(_cells(2), EMT, forces=False)
    cheap[1].positions[0, 0] += 0.01
    with pytest.raises(ConfigError, match="structure 1"):
        subtract_labels(reference, cheap)
    with pytest.raises(ConfigError, match="one cheap twin"):
        subtract_labels(reference, cheap[:1])


def test_summed_calculator_is_the_sum_with_fd_forces_and_stress():
    atoms = _cells(1)[0]
    calc = delta_calculator(EMT(), _correction_model())
    atoms.calc = calc
    energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()

    parts = []
    for part in (EMT(), PIMLIPCalculator(_correction_model())):
        work = atoms.copy()
        work.calc = part
        parts.append((work.get_potential_energy(), work.get_forces(), work.get_stress()))
    assert energy == pytest.approx(parts[0][0] + parts[1][0], abs=1e-10)
    np.testing.assert_allclose(forces, parts[0][1] + parts[1][1], atol=1e-10)
    np.testing.assert_allclose(stress, parts[0][2] + parts[1][2], atol=1e-10)
    assert np.abs(parts[1][1]).max() > 1e-3  # the correction contributes forces

    fd = calculate_numerical_forces(atoms, 1e-4, iatoms=[0, 5])
    np.testing.assert_allclose(forces[[0, 5]], fd, atol=1e-6)
    fd_stress = calculate_numerical_stress(atoms, 1e-5, force_consistent=False)
    np.testing.assert_allclose(stress, fd_stress, atol=1e-6)


def test_delta_calculator_refuses_a_non_calculator():
    with pytest.raises(ConfigError, match="ASE calculator"):
        delta_calculator(ASELabeller("emt"), _correction_model())


@pytest.mark.xtb
def test_summed_calculator_with_tblite_has_fd_forces():
    tblite = pytest.importorskip("tblite.ase")
    torch.manual_seed(1)
    model = build_model("schnet", species=["H", "O"], cutoff=4.0, n_features=16, n_interactions=2)
    model.set_reference([0.0, 0.0], 0.5, 0.0)
    water = molecule("H2O")
    water.rattle(0.05, seed=3)
    calc = delta_calculator(tblite.TBLite(method="GFN2-xTB", verbosity=0), model)
    water.calc = calc
    forces = water.get_forces()
    assert set(calc.implemented_properties) >= {"energy", "forces", "stress"}
    assert len(calc.results["energy_contributions"]) == 2
    np.testing.assert_allclose(forces, calculate_numerical_forces(water, 1e-4), atol=1e-5)
