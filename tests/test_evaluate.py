"""Error metrics of an ASE calculator against labelled structures."""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.emt import EMT

from pimlip_ase.evaluate import calculator_errors
from pimlip_ase.keys import ENERGY, FORCES


def test_calculator_errors_of_the_reference_and_of_a_shifted_copy(cu_dataset):
    frames = cu_dataset[:4]
    exact = calculator_errors(EMT(), frames)
    assert exact["energy_mae"] == pytest.approx(0.0, abs=1e-10)
    assert exact["forces_mae"] == pytest.approx(0.0, abs=1e-10)
    shifted = calculator_errors(EMT(), frames, offset=0.64)  # eV per structure, 32 atoms each
    assert shifted["energy_mae"] == pytest.approx(0.64)
    assert shifted["energy_per_atom_mae"] == pytest.approx(0.02)
    bent = [a.copy() for a in frames]
    for a in bent:
        a.arrays[FORCES] = a.arrays[FORCES] + 0.1  # every force label off by +0.1 eV/Å
    bent_err = calculator_errors(EMT(), bent)
    assert bent_err["forces_mae"] == pytest.approx(0.1) and bent_err["forces_rmse"] == pytest.approx(0.1)


def test_calculator_errors_without_force_labels_reports_energies_only(cu_dataset):
    frames = [a.copy() for a in cu_dataset[:2]]
    for a in frames:
        del a.arrays[FORCES]
    out = calculator_errors(EMT(), frames)
    assert set(out) == {"energy_mae", "energy_per_atom_mae"}
    assert np.isfinite(out["energy_mae"]) and ENERGY in frames[0].info
