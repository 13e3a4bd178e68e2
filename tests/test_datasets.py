"""Shipped datasets: the loader, documented keys and units, and agreement between the three levels."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units

from pimlip_ase.datasets import available_datasets, cbs_components, component_info_key, load_dataset
from pimlip_ase.errors import ConfigError
from pimlip_ase.keys import ENERGY, FORCES
from pimlip_ase.workflow.cbs import combine, component_key, parse_spec

WATER = ("water_cbs", "water_mp2", "water_xtb")


@pytest.fixture(scope="module")
def water():
    return {name: load_dataset(name) for name in WATER}


def test_water_sets_are_listed_and_unknown_names_are_refused():
    assert set(WATER) <= set(available_datasets())
    with pytest.raises(ConfigError, match="water_cbs"):
        load_dataset("water_ccsd")


def test_water_sets_align_and_hold_the_documented_labels(water):
    n = len(water["water_cbs"])
    assert n >= 250
    for name, structures in water.items():
        assert len(structures) == n, name
        for atoms, ref in zip(structures, water["water_cbs"], strict=True):
            assert isinstance(atoms, Atoms) and atoms.get_chemical_formula() == "H2O"
            assert atoms.info["frame"] == ref.info["frame"]
            np.testing.assert_array_equal(atoms.positions, ref.positions)
            assert isinstance(atoms.info[ENERGY], float)
    assert len({a.info["frame"] for a in water["water_cbs"]}) == n
    assert all(FORCES not in a.arrays for a in water["water_cbs"])  # energies only
    for name in ("water_mp2", "water_xtb"):
        assert all(a.arrays[FORCES].shape == (3, 3) for a in water[name])


def test_units_are_ev_and_ev_per_angstrom(water):
    cbs_eh = np.array([a.info[ENERGY] for a in water["water_cbs"]]) / units.Hartree
    assert np.all((cbs_eh > -76.45) & (cbs_eh < -76.0))  # water near the CCSD(T)/CBS minimum, in Eh
    xtb = np.array([a.info[ENERGY] for a in water["water_xtb"]])
    assert np.all((xtb > -140.0) & (xtb < -135.0))  # GFN2-xTB water, eV
    for name in ("water_mp2", "water_xtb"):
        forces = np.stack([a.arrays[FORCES] for a in water[name]])
        assert np.abs(forces.sum(axis=1)).max() < 1e-4  # no net force on a free molecule
        assert 0.1 < np.abs(forces).mean() < 20.0


def test_cbs_energy_is_recomputed_from_its_stored_components(water):
    for atoms in water["water_cbs"][:20]:
        plan = parse_spec(atoms.info["REF_method"])
        components = cbs_components(atoms)
        assert set(components) >= {component_key(m, b) for m, b in plan.jobs()}
        assert combine(plan, components) * units.Hartree == pytest.approx(atoms.info[ENERGY], abs=1e-8)


def test_mp2_twin_matches_the_mp2_component_of_the_cbs_set(water):
    for cbs, mp2 in zip(water["water_cbs"][:20], water["water_mp2"][:20], strict=True):
        part = cbs_components(cbs)["mp2/cc-pvtz"]
        assert (part["scf"] + part["corr"]) * units.Hartree == pytest.approx(mp2.info[ENERGY], abs=1e-5)


def test_component_keys_round_trip():
    atoms = Atoms("H")
    atoms.info[component_info_key("ccsd(t)", "cc-pvdz", "corr")] = -0.2
    atoms.info[component_info_key("ccsd", "cc-pvdz", "scf")] = -76.0
    assert component_info_key("ccsd(t)", "cc-pvdz", "corr") == "Eh_corr_ccsd_t_cc-pvdz"
    assert cbs_components(atoms) == {"ccsd(t)/cc-pvdz": {"corr": -0.2}, "ccsd/cc-pvdz": {"scf": -76.0}}
    with pytest.raises(ConfigError, match="methods"):
        component_info_key("b3lyp", "cc-pvdz", "corr")


@pytest.mark.slow
@pytest.mark.cbs
@pytest.mark.xtb
def test_generator_writes_aligned_files_and_resumes_without_relabelling(tmp_path):
    """One snapshot per trajectory (6 geometries, about a minute): files align; a rerun labels nothing."""
    import ase.io

    from pimlip_ase.datasets import generate_cbs_water as gen
    from pimlip_ase.workflow.store import Store

    args = ["--n-per-trajectory", "1", "--workdir", str(tmp_path / "work"), "--outdir", str(tmp_path)]
    gen.main(args)

    def label_times(name: str) -> list[float]:
        store = Store(tmp_path / "work" / f"{name}.db")
        assert store.counts() == {"pending": 0, "done": 6, "failed": 0}
        return [store.record(a.info["db_id"])["wall_time_s"] for a in store.labelled_atoms()]

    first = {name: label_times(name) for name in gen.METHODS}
    gen.main(args)
    assert {name: label_times(name) for name in gen.METHODS} == first
    files = {name: ase.io.read(tmp_path / f"water_{name}.extxyz", ":") for name in gen.METHODS}
    assert [a.info["frame"] for a in files["cbs"]] == list(range(6))
    for name in ("mp2", "xtb"):
        assert [a.info["frame"] for a in files[name]] == list(range(6))
        assert files[name][0].arrays[FORCES].shape == (3, 3)
