"""A tiny Cu/EMT recipe (seconds per run) and one finished run of it, shared by the workflow tests."""

from __future__ import annotations

import copy

import pytest

TINY_RECIPE = {
    "name": "tiny",
    "description": "4-atom Cu cells, EMT, two one-layer SchNet members.",
    "structures": [{"bulk": "Cu", "crystal": "fcc", "a": 3.61, "cubic": True}],
    "reference": {"method": "emt", "workers": 0},
    "training": {
        "model": {"name": "schnet", "cutoff": 3.0, "n_features": 8, "n_interactions": 1},
        "loss": {"energy": 1.0, "forces": 10.0},
        "optim": {"max_epochs": 3, "batch_size": 4, "lr": 0.005},
        "data": {"valid": 0.25},
    },
    "active_learning": {
        "committee": 2,
        "initial": [{"type": "rattle", "n": 4, "sigma": 0.05}],
        "test": [
            {
                "type": "md",
                "calculator": "reference",
                "temperature_K": 600,
                "n_snapshots": 3,
                "interval": 5,
                "timestep_fs": 2.0,
            }
        ],
        "candidates": [
            {"type": "rattle", "n": 6, "sigma": 0.15},
            {"type": "md", "temperature_K": [600], "n_snapshots": 3, "interval": 4, "timestep_fs": 2.0},
        ],
        "per_iteration": 3,
        "label_budget": 10,
        "force_threshold": 1e-4,
        "compare_random": True,
    },
    "checks": {
        "relax": {},
        "phonons": {"supercell": [2, 2, 2], "mesh": [4, 4, 4]},
        "nvt": {"temperature_K": 300, "duration_ps": 0.04, "timestep_fs": 2.0},
        "nve": {"temperature_K": 300, "duration_ps": 0.04, "timestep_fs": 2.0},
    },
}


@pytest.fixture
def tiny_recipe() -> dict:
    """A fresh copy of the tiny recipe (a dict in the YAML schema)."""
    return copy.deepcopy(TINY_RECIPE)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny recipe run to the end once (active learning, random baseline, checks, report)."""
    from pimlip_ase.workflow.recipe import load_recipe, run_recipe

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    return run_recipe(load_recipe(copy.deepcopy(TINY_RECIPE)), out)
