"""Recipes: the shipped ones load, and every malformed key is named with the valid ones."""

from __future__ import annotations

from pathlib import Path

import ase.io
import pytest
from ase.build import molecule

from pimlip_ase.errors import ConfigError
from pimlip_ase.workflow.recipe import build_structure, load_recipe

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def test_shipped_recipes_load_with_their_comment_header():
    cu = load_recipe(WORKFLOWS / "cu_emt_active_learning.yaml")
    assert cu.method == "emt" and len(cu.structures[0]) == 32 and cu.structures[0].pbc.all()
    assert {"phonons", "nvt", "nve"} <= set(cu.checks) and cu.active_learning.compare_random
    xtb = load_recipe(WORKFLOWS / "molecule_xtb_active_learning.yaml")
    assert xtb.train_on == ["energy"] and xtb.method == "xtb" and not xtb.structures[0].pbc.any()
    assert xtb.training["loss"].get("forces", 0.0) == 0.0 and xtb.training["loss"]["pitc"] > 0
    assert xtb.checks["nvt"].temperature_K == 500 and xtb.checks["nvt"].duration_ps == 10
    for name in ("cu_emt_active_learning", "molecule_xtb_active_learning"):
        header = (WORKFLOWS / f"{name}.yaml").read_text().split("\nname:")[0]
        assert all(word in header for word in ("What it does", "Expected runtime", "Outputs")), name
    for path in WORKFLOWS.glob("*.yaml"):  # every shipped recipe, the CBS one included
        if "pyscf:" in path.read_text():
            pytest.importorskip("pyscf")
        assert path.read_text().startswith("#") and load_recipe(path).name == path.stem


def test_energy_only_cbs_labels_are_expressible(tiny_recipe):
    pytest.importorskip("pyscf")
    tiny_recipe["structures"] = [{"molecule": "H2O"}]
    tiny_recipe["reference"] = {"method": "pyscf:mp2/cc-pv[dt]z", "train_on": ["energy"], "workers": 1}
    tiny_recipe["training"]["loss"] = {"energy": 1.0, "pitc": 0.1, "pisc": 0.01, "k": 0.5}
    recipe = load_recipe(tiny_recipe)
    assert recipe.labeller.method.startswith("mp2/cc-pv[dt]z") and recipe.train_on == ["energy"]
    tiny_recipe["reference"]["options"] = {"frozen": True}
    with pytest.raises(ConfigError, match="reference.options do not fit method 'pyscf:mp2/cc-pv"):
        load_recipe(tiny_recipe)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"outputs": "x"},
            r"\['outputs'\] in the recipe; valid keys: \['active_learning', 'checks', 'description'",
        ),
        (
            {"reference": {"method": "emt", "worker": 2}},
            r"\['worker'\] in reference; valid keys: \['method', 'options'",
        ),
        ({"reference": {"method": "dft"}}, r"unknown labelling method 'dft'"),
        ({"reference": {"method": "emt", "train_on": ["forces"]}}, r"train_on must include 'energy'"),
        (
            {"active_learning": {"label_budjet": 3}},
            r"\['label_budjet'\] in active_learning; valid keys: .*'label_budget'",
        ),
        (
            {"active_learning": {"selection": "greedy"}},
            r"selection='greedy'; use one of \('disagreement', 'random'\)",
        ),
        (
            {"active_learning": {"initial": [{"type": "shake", "n": 1}]}},
            r"initial\[0\]: unknown generator type 'shake'",
        ),
        ({"checks": {"phonon": {}}}, r"unknown check 'phonon'; valid checks: \['nve', 'nvt', 'phonons'"),
        (
            {"checks": {"nvt": {"temperature": 300}}},
            r"\['temperature'\] in checks.nvt; valid keys: .*'temperature_K'",
        ),
        ({"training": {"optim": {"learning_rate": 1}}}, r"\['learning_rate'\] in config section 'optim'"),
        ({"training": {"data": {"train": "x.extxyz"}}}, r"data.train/data.test are set by the loop"),
        (
            {
                "training": {"loss": {"energy": 1.0, "forces": 10.0}},
                "reference": {"method": "emt", "train_on": ["energy"]},
            },
            r"loss.forces > 0 but reference.train_on is \['energy'\]",
        ),
        (
            {"structures": [{"bulk": "Cu", "lattice": 3.6}]},
            r"\['lattice'\] in structure .*valid keys: \['a', 'alpha'",
        ),
        (
            {"structures": [{"bulk": "Cu", "molecule": "H2O"}]},
            r"exactly one of \['bulk', 'molecule', 'file'\]",
        ),
        ({"structures": ["missing.extxyz"]}, r"missing.extxyz' does not exist"),
    ],
)
def test_malformed_recipes_name_the_key_and_the_valid_ones(tiny_recipe, change, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(tiny_recipe, overrides=change)


def test_missing_sections_and_files(tmp_path, tiny_recipe):
    del tiny_recipe["reference"]
    with pytest.raises(ConfigError, match="the recipe needs 'reference'"):
        load_recipe(tiny_recipe)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "none.yaml")


def test_structures_from_build_specs_and_files(tmp_path):
    cu = build_structure({"bulk": "Cu", "crystal": "fcc", "a": 3.61, "cubic": True, "repeat": [2, 1, 1]})
    assert len(cu) == 8 and cu.cell.lengths()[0] == pytest.approx(7.22)
    assert build_structure({"molecule": "CH3CH2OH"}).get_chemical_formula() == "C2H6O"
    ase.io.write(tmp_path / "w.extxyz", [molecule("H2O"), molecule("NH3")])
    assert build_structure({"file": "w.extxyz", "index": 1}, tmp_path).get_chemical_formula() == "H3N"
    assert build_structure("w.extxyz", tmp_path).get_chemical_formula() == "H2O"


def test_overrides_merge_nested_keys(tiny_recipe):
    recipe = load_recipe(
        tiny_recipe, overrides={"active_learning": {"label_budget": 7}, "checks": {"nvt": None}}
    )
    assert recipe.active_learning.label_budget == 7 and recipe.active_learning.per_iteration == 3
    assert recipe.checks["nvt"].temperature_K == 300.0  # a null section means the check's defaults
