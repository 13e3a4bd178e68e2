"""Error metrics of an ASE calculator against labelled structures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.emt import EMT

from pimlip_ase import build_model
from pimlip_ase.data import atoms_to_graph
from pimlip_ase.evaluate import calculator_errors, taylor_consistency
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


@pytest.mark.parametrize(
    ("forces", "k", "order"), [("autograd", 0.5, 3), ("autograd", 0.0, 2), ("direct", 0.5, 1)]
)
def test_taylor_consistency_order_in_epsilon(forces, k, order):
    """Label-free residual of a model's own energies and forces: O(ε³) at k = ½ and O(ε²) at k = 0
    for forces = −∇E, O(ε) for an (untrained) direct force head, which −∇E does not describe."""
    mols = [molecule("CH3CH2OH"), molecule("H2O")]  # no labels: the check needs none
    for m in mols:
        m.rattle(0.05, seed=1)
    graphs = [atoms_to_graph(a, 4.0) for a in mols]
    torch.manual_seed(0)
    model = build_model(
        "painn", species=["C", "H", "O"], cutoff=4.0, n_features=16, n_interactions=2, forces=forces
    )
    # the same seed draws the same directions, so halving ε halves every δ
    big, small = (taylor_consistency(model, graphs, epsilon=eps, k=k) for eps in (0.04, 0.02))
    assert small > 0
    assert big / small == pytest.approx(2.0**order, rel=0.15)
