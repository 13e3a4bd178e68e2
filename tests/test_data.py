"""Data: reading labels, masks, E0 fit, splits, units."""

from __future__ import annotations

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase.build import molecule

from pimlip_ase.data import (
    LabelKeys,
    atoms_to_graph,
    build_graphs,
    collate,
    fit_reference_energies,
    fit_scale_shift,
    read_structures,
    require_labels,
    split_indices,
)
from pimlip_ase.errors import ConfigError, MissingLabelError, PimlipError

from .conftest import cu_cell


def test_e0_fit_recovers_additive_energies():
    e0_true = {"H": -13.6, "C": -1030.0, "O": -2040.0}
    mols = [molecule(n) for n in ("H2O", "CH4", "CH3OH", "CO2", "H2", "C2H6")]
    for m in mols:
        m.info["REF_energy"] = sum(e0_true[s] for s in m.get_chemical_symbols())
    e0 = fit_reference_energies(build_graphs(mols, 4.0), ["H", "C", "O"])
    np.testing.assert_allclose(e0, [-13.6, -1030.0, -2040.0], atol=1e-8)


def test_scale_from_forces_or_energies():
    atoms = cu_cell((1, 1, 1))
    atoms.info["REF_energy"] = -10.0
    atoms.arrays["REF_forces"] = np.full((4, 3), 0.5)
    shift, scale = fit_scale_shift(build_graphs([atoms], 4.0), ["Cu"], np.array([-2.0]))
    assert shift == pytest.approx(-0.5) and scale == pytest.approx(0.5)


def test_masks_follow_labels_and_missing_labels_are_not_zero_filled():
    a, b = cu_cell((1, 1, 1)), cu_cell((1, 1, 1))
    a.info["REF_energy"] = -1.0
    b.arrays["REF_forces"] = np.ones((4, 3))
    b.info["REF_stress"] = np.arange(6.0)
    g = collate(build_graphs([a, b], 4.0))
    assert g.energy_mask.tolist() == [True, False]
    assert g.forces_mask.tolist() == [False] * 4 + [True] * 4
    assert g.stress_mask.tolist() == [False, True]
    assert torch.equal(g.stress[1], torch.tensor([[0.0, 5, 4], [5, 1, 3], [4, 3, 2]], dtype=torch.float64))
    with pytest.raises(MissingLabelError, match="REF_stress"):
        require_labels(build_graphs([a], 4.0), True, False, True, LabelKeys())


def test_stress_label_ignored_without_full_periodicity():
    m = molecule("H2O")
    m.info["REF_stress"] = np.zeros(6)
    assert not bool(atoms_to_graph(m, 4.0).stress_mask[0])


def test_wrong_force_shape_names_structure():
    b = cu_cell((1, 1, 1))
    b.new_array("REF_forces", np.ones((4, 2)))
    with pytest.raises(PimlipError, match=r"structure 0.*shape \(4, 2\)"):
        build_graphs([b], 4.0)


def test_split_is_seeded_and_disjoint():
    tr, va = split_indices(50, 0.2, seed=3)
    assert len(va) == 10 and not set(tr) & set(va) and sorted(tr + va) == list(range(50))
    assert split_indices(50, 0.2, seed=3) == (tr, va)
    assert split_indices(50, 0.2, seed=4) != (tr, va)
    with pytest.raises(ConfigError):
        split_indices(5, 1.0, 0)


def test_read_extxyz_and_database(tmp_path):
    a = cu_cell((1, 1, 1))
    a.rattle(0.05, seed=0)
    a.info["REF_energy"] = -12.5
    a.arrays["REF_forces"] = np.arange(12.0).reshape(4, 3)
    ase.io.write(tmp_path / "d.extxyz", [a, a])
    back = read_structures(tmp_path / "d.extxyz")
    assert len(back) == 2 and back[0].info["REF_energy"] == -12.5
    np.testing.assert_array_equal(back[1].arrays["REF_forces"], a.arrays["REF_forces"])
    with ase.db.connect(tmp_path / "d.db") as db:
        db.write(a, REF_energy=-12.5, data={"REF_forces": a.arrays["REF_forces"]})
    row = read_structures(tmp_path / "d.db")[0]
    assert row.info["REF_energy"] == -12.5
    np.testing.assert_array_equal(row.arrays["REF_forces"], a.arrays["REF_forces"])
    with pytest.raises(PimlipError, match="does not exist"):
        read_structures(tmp_path / "missing.extxyz")
