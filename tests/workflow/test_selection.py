"""Selection: committee disagreement, the radial fingerprint and farthest-point sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from pimlip_ase import PIMLIPCalculator, build_model
from pimlip_ase.errors import ConfigError
from pimlip_ase.workflow.selection import (
    Disagreement,
    above_energy_window,
    committee_disagreement,
    farthest_point_sampling,
    radial_fingerprint,
    select_by_disagreement,
    too_close,
)


def test_fingerprint_is_invariant_and_intensive(ethanol):
    species = ["H", "C", "O"]
    ref = radial_fingerprint(ethanol, species)
    moved = ethanol.copy()
    moved.rotate(37, (1, 2, 3), center="COM")
    moved.translate((1.0, -2.0, 0.5))
    shuffled = moved[np.random.default_rng(0).permutation(len(moved))]
    np.testing.assert_allclose(radial_fingerprint(shuffled, species), ref, atol=1e-12)
    assert ref.shape == (6 * 32,)  # HH HC HO CC CO OO pairs
    cu = bulk("Cu", cubic=True)
    cu.rattle(0.05, seed=1)
    np.testing.assert_allclose(
        radial_fingerprint(cu * (2, 2, 2), ["Cu"]), radial_fingerprint(cu, ["Cu"]), atol=1e-12
    )
    with pytest.raises(ConfigError, match=r"lack \['O'\]"):
        radial_fingerprint(ethanol, ["H", "C"])


def test_farthest_point_sampling_spreads_the_picks():
    points = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [10.0]])
    assert farthest_point_sampling(points, 3, first=1) == [1, 5, 3]
    assert (
        farthest_point_sampling(points, 10, first=0)[:2] == [0, 5]
        and len(farthest_point_sampling(points, 10, 0)) == 6
    )


def test_selection_thresholds_rejection_and_diversity():
    f_std = np.array([0.01, 0.2, 0.21, 0.22, 5.0, 0.3])
    e_std = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    fps = np.array([[0.0], [1.0], [1.01], [1.02], [3.0], [9.0]])  # 1-3 are near-copies of one event
    too_near = np.array([False, False, False, False, False, True])
    sel = select_by_disagreement(
        Disagreement(f_std, e_std), fps, 2, 0.05, 0.01, force_upper=1.0, unphysical=too_near
    )
    assert sel.rejected.tolist() == [False, False, False, False, True, True]
    assert sel.eligible.tolist() == [False, True, True, True, False, False]
    assert sel.chosen[0] == 3 and len(sel.chosen) == 2  # most uncertain first, then the farthest copy
    spread = Disagreement(f_std, e_std)
    top = select_by_disagreement(spread, fps, 2, 0.05, 0.01, force_upper=1.0, pool_factor=1)
    assert sorted(top.chosen) == [3, 5]  # a pool of n: simply the most disputed, near-copies or not
    by_energy = select_by_disagreement(Disagreement(np.zeros(6), np.full(6, 0.02)), fps, 6, 0.05, 0.01)
    assert sorted(by_energy.chosen) == list(range(6))
    assert select_by_disagreement(Disagreement(np.zeros(6), np.zeros(6)), fps, 3, 0.05, 0.01).chosen == []


def test_energy_window_flags_structures_far_above_the_labelled_minimum(ethanol):
    low, high, other = ethanol.copy(), ethanol.copy(), molecule("H2O")
    low.info["REF_energy"], high.info["REF_energy"] = -9.0 * len(low), -8.0 * len(high)
    flags = above_energy_window([ethanol, ethanol, other], np.array([-8.8, -8.7, 50.0]), [low, high], 0.25)
    assert flags.tolist() == [False, True, False]  # -8.7 > -9.0 + 0.25; water was never labelled


def test_too_close_uses_covalent_radii(ethanol):
    assert not too_close(ethanol, 0.5)
    squeezed = ethanol.copy()
    squeezed.positions[1] = squeezed.positions[0] + [0.3, 0.0, 0.0]
    assert too_close(squeezed, 0.5)


def test_committee_disagreement_of_two_models_and_not_of_one():
    water = molecule("H2O")
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model("schnet", species=["H", "O"], cutoff=3.0, n_features=8, n_interactions=1))
    calc = PIMLIPCalculator(models)
    spread = committee_disagreement([water, water], calc)
    assert spread.force_std.shape == (2,) and np.all(spread.force_std > 0) and np.all(spread.energy_std > 0)
    water.calc = calc
    assert spread.energy[0] == pytest.approx(water.get_potential_energy() / 3)
    with pytest.raises(ConfigError, match="two or more models"):
        committee_disagreement([water], PIMLIPCalculator(models[:1]))
