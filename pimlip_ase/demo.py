"""`pimlip demo`: the shipped Cu/EMT active-learning recipe on a small budget, ending with the
stability verdict and the report path; then the energy-only comparison of plain training against
PITC+PISC on held-out EMT forces.

Everything is made here, offline: EMT ships with ASE. The numbers printed are what this run measured.
The recipe is ``workflows/cu_emt_active_learning.yaml`` of the source tree, with ``DEMO_OVERRIDES``
merged in (fewer labels and epochs, a 2 ps NVT check, no random baseline) to fit in about five
minutes on two cores.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from . import keys
from .errors import ConfigError
from .perturb import rattle
from .training import train

#: The shipped recipe the demo runs (source tree: ``pimlip demo`` is run from a checkout via ``make demo``).
RECIPE = Path(__file__).resolve().parent.parent / "workflows" / "cu_emt_active_learning.yaml"

#: A small budget: 16 + 3 × 8 labels, short trainings, 2 ps of NVT, no random baseline.
DEMO_OVERRIDES = {
    "training": {"optim": {"max_epochs": 40, "patience": 10}},
    "active_learning": {
        "label_budget": 40, "max_iterations": 3, "warm_start_epochs": 15, "compare_random": False,
        "candidates": [{"type": "md", "temperature_K": [300, 900], "n_snapshots": 8, "interval": 10,
                        "timestep_fs": 2.0},
                       {"type": "strain", "n": 8, "max_strain": 0.03, "rattle_sigma": 0.05}],
    },
    "checks": {"nvt": {"duration_ps": 2.0}, "nve": {"duration_ps": 0.5}},
}  # fmt: skip

#: Seconds instead of minutes, for tests: tiny cells and models, a few epochs, 40 fs of MD.
QUICK_OVERRIDES = {
    "structures": [{"bulk": "Cu", "crystal": "fcc", "a": 3.61, "cubic": True}],
    "training": {"model": {"name": "schnet", "cutoff": 3.0, "n_features": 8, "n_interactions": 1},
                 "loss": {"stress": 0.0}, "optim": {"max_epochs": 2, "batch_size": 4}},
    "active_learning": {
        "committee": 2, "label_budget": 8, "per_iteration": 3, "max_iterations": 1, "warm_start_epochs": 1,
        "workers": 1, "compare_random": False,
        "initial": [{"type": "rattle", "n": 4, "sigma": 0.05}],
        "test": [{"type": "rattle", "n": 2, "sigma": 0.1}],
        "candidates": [{"type": "md", "temperature_K": 600, "n_snapshots": 3, "interval": 3,
                        "timestep_fs": 2.0}],
    },
    "checks": {"phonons": {"supercell": [2, 2, 2], "mesh": [4, 4, 4]},
               "nvt": {"duration_ps": 0.04}, "nve": {"duration_ps": 0.04}},
}  # fmt: skip


def cu_structures(n: int, seed: int, size: int = 2, rattle_sigma: float = 0.1, strain: float = 0.02):
    """``n`` rattled and strained fcc Cu cells (4·size³ atoms) labelled with EMT energy, forces, stress."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (size, size, size)
        eps = strain * rng.uniform(-1, 1, (3, 3))
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.5 * (eps + eps.T)), scale_atoms=True)
        atoms = rattle(atoms, rattle_sigma, "gaussian", seed=rng)
        atoms.calc = EMT()
        atoms.info[keys.ENERGY] = atoms.get_potential_energy()
        atoms.arrays[keys.FORCES] = atoms.get_forces()
        atoms.info[keys.STRESS] = atoms.get_stress()
        atoms.calc = None
        out.append(atoms)
    return out


def energy_only(structures):
    """Copies that keep only the energy label (what a CCSD(T)/CBS user has)."""
    out = []
    for a in structures:
        b = a.copy()
        del b.arrays[keys.FORCES]
        del b.info[keys.STRESS]
        out.append(b)
    return out


def _config(train_set, test_set, output: Path, piwsl: bool, quick: bool) -> dict:
    return {
        "model": {"name": "painn", "cutoff": 4.5, "n_features": 8 if quick else 16, "n_interactions": 2},
        "data": {"train": train_set, "valid": 0.2, "test": test_set},
        "loss": {
            "energy": 1.0,
            "forces": 0.0,
            "pitc": 1.0 if piwsl else 0.0,
            "pisc": 0.01 if piwsl else 0.0,
            "epsilon": 0.05,
            "k": 0.5,
        },
        "optim": {
            "lr": 5e-3,
            "batch_size": 8,
            "max_epochs": 2 if quick else 25,
            "patience": 10,
            "lr_patience": 5,
            "ema": 0.95,
        },
        "seed": 0,
        "output": str(output),
    }


def compare_energy_only(output: Path, quick: bool = False) -> dict[str, dict[str, float]]:
    """Train PaiNN on EMT energies only, plain and with PITC+PISC; print both models' held-out errors."""
    n_train, n_test = (6, 3) if quick else (24, 16)
    print(
        f"\nenergy-only training: {n_train} fcc Cu cells (32 atoms, EMT energies only), scored on "
        f"{n_test} held-out cells with EMT forces"
    )
    train_set, test_set = energy_only(cu_structures(n_train, seed=1)), cu_structures(n_test, seed=2)
    results = {}
    for name, piwsl in (("plain", False), ("pitc+pisc", True)):
        run_dir = output / name
        shutil.rmtree(run_dir, ignore_errors=True)  # the demo always starts afresh
        t0 = time.perf_counter()
        res = train(_config(train_set, test_set, run_dir, piwsl, quick))
        results[name] = {**res.test_metrics, "train_s": time.perf_counter() - t0}
    zero_force = float(np.mean([np.abs(a.arrays[keys.FORCES]).mean() for a in test_set]))
    print(f"  {'model':<14}{'E MAE meV/atom':>16}{'F MAE meV/Å':>14}{'F RMSE meV/Å':>14}{'train s':>9}")
    for name, m in results.items():
        print(
            f"  {name:<14}{m['energy_per_atom_mae'] * 1e3:>16.2f}{m['forces_mae'] * 1e3:>14.1f}"
            f"{m['forces_rmse'] * 1e3:>14.1f}{m['train_s']:>9.1f}"
        )
    print(f"  {'zero forces':<14}{'':>16}{zero_force * 1e3:>14.1f}")
    return results


def run_demo(output: str | Path = "demo_output", quick: bool = False) -> dict:
    """Run the demo in ``output``; returns ``{"recipe": RecipeResult, "energy_only": metrics}``."""
    from .workflow.recipe import load_recipe, run_recipe

    if not RECIPE.is_file():
        raise ConfigError(
            f"the demo runs the shipped recipe {str(RECIPE)!r}, which is missing; run the demo "
            "from a source checkout (make demo)"
        )
    output = Path(output)
    t_start = time.perf_counter()
    # The demo's models are tiny: a force call costs ~10 ms of per-call overhead, which extra
    # intra-op threads do not shorten but, on a busy machine, can stretch tenfold while the
    # committee trains in worker processes; parallelism comes from those processes instead.
    torch.set_num_threads(1)
    recipe = load_recipe(RECIPE, overrides=QUICK_OVERRIDES if quick else DEMO_OVERRIDES)
    run_dir = output / "cu_emt_active_learning"
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"active learning of fcc Cu from EMT ({RECIPE.name}, small budget) ...")
    result = run_recipe(recipe, run_dir)
    print("\n".join(result.summary_lines()))
    metrics = compare_energy_only(output, quick)
    print(
        f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; stability verdict: {result.verdict}; "
        f"report: {result.report}"
    )
    return {"recipe": result, "energy_only": metrics}
