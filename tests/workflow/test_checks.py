"""Checks of a recipe, run with EMT as the "potential" so the verdicts are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from pimlip_ase.errors import ConfigError
from pimlip_ase.workflow.checks import load_checks, primitive_cell, run_checks
from pimlip_ase.workflow.reference import reference_calculator


def test_emt_against_itself_passes_every_check(tmp_path):
    checks = load_checks(
        {
            "relax": {"fmax": 0.01},
            "phonons": {"supercell": [2, 2, 2], "mesh": [4, 4, 4]},
            "nvt": {"temperature_K": 300, "duration_ps": 0.05, "timestep_fs": 2.0},
            "nve": {"temperature_K": 300, "duration_ps": 0.05, "timestep_fs": 2.0},
        }
    )
    start = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    outcomes = run_checks(checks, EMT(), start, reference_calculator("emt"), tmp_path)
    by_name = {o.name: o for o in outcomes}
    assert [o.name for o in outcomes] == ["relax", "phonons", "nvt", "nve"] and all(
        o.passed for o in outcomes
    )
    assert by_name["relax"].values["lattice_constant_A"] == pytest.approx(3.5898, abs=2e-3)  # conventional a
    assert by_name["relax"].values["lattice_error_pct"] == pytest.approx(0.0, abs=1e-6)
    assert by_name["phonons"].values["mae_THz"] == pytest.approx(0.0, abs=1e-6)
    assert by_name["phonons"].values["n_primitive_atoms"] == 1
    saved = json.loads((tmp_path / "checks.json").read_text())
    assert saved["verdict"] == "PASS" and saved["checks"][2]["values"]["stable"] is True
    arrays = np.load(tmp_path / "checks.npz")
    assert {"phonon_bands", "phonon_reference_bands", "nvt_temperature", "nve_etot"} <= set(arrays.files)


def test_a_softened_potential_fails_the_phonon_check(tmp_path):
    class SoftEMT(EMT):  # forces and energy scaled down: frequencies drop by sqrt(0.7)
        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            for key in ("energy", "free_energy", "forces", "stress", "energies"):
                if key in self.results:
                    self.results[key] = 0.7 * self.results[key]

    checks = load_checks({"phonons": {"supercell": [2, 2, 2], "mesh": [4, 4, 4], "max_mae_THz": 0.3}})
    [outcome] = run_checks(
        checks, SoftEMT(), bulk("Cu", "fcc", a=3.59), reference_calculator("emt"), tmp_path
    )
    assert outcome.passed is False and outcome.values["mae_THz"] > 0.3
    assert json.loads((tmp_path / "checks.json").read_text())["verdict"] == "FAIL: phonons"


def test_molecule_vibrations_and_check_errors(tmp_path):
    checks = load_checks({"relax": {"fmax": 0.01}, "vibrations": {"max_mae_THz": 0.1, "fmax": 1e-4}})
    outcomes = run_checks(checks, EMT(), molecule("H2O"), reference_calculator("emt"), tmp_path)
    vib = outcomes[1]
    assert vib.values["n_modes"] == 3 and vib.values["mae_THz"] == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ConfigError, match="needs a 3D-periodic structure"):
        run_checks(load_checks({"phonons": {}}), EMT(), molecule("H2O"), None, tmp_path)
    with pytest.raises(ConfigError, match=r"checks.nve must be a mapping"):
        load_checks({"nve": 3})
    assert len(primitive_cell(bulk("Cu", cubic=True) * 2)) == 1


def test_reference_calculator_serves_labels_and_refuses_missing_ones():
    from ase.calculators.calculator import PropertyNotImplementedError

    from pimlip_ase.workflow.label import LabelResult
    from pimlip_ase.workflow.reference import ReferenceCalculator

    class EnergyOnly:
        method = "energy-only"

        def label(self, atoms):
            return LabelResult(-1.5 * len(atoms))

    water = molecule("H2O")
    water.calc = ReferenceCalculator(EnergyOnly())
    assert water.get_potential_energy() == -4.5 and water.calc.n_calls == 1
    with pytest.raises(PropertyNotImplementedError, match="'energy-only' gives no forces for H2O"):
        water.get_forces()
    cu = bulk("Cu", cubic=True)
    cu.calc, reference = reference_calculator("emt"), EMT()
    np.testing.assert_allclose(cu.get_forces(), reference.get_forces(cu), atol=1e-12)
    assert cu.get_stress().shape == (6,)
