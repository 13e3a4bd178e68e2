"""`pimlip demo`: energy-only training on rattled fcc Cu labelled by ASE's EMT, with and without
PITC+PISC, scored on held-out forces, then 1 ps of Langevin MD with the PIWSL model.

Everything is made here, offline: EMT ships with ASE. The numbers printed are what this run measured.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

from . import keys
from .calculator import PIMLIPCalculator
from .perturb import rattle
from .training import train
from .workflow.generate import make_langevin, thermalize


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
        "model": {"name": "painn", "cutoff": 4.5, "n_features": 16 if quick else 32,
                  "n_interactions": 2},
        "data": {"train": train_set, "valid": 0.2, "test": test_set},
        "loss": {"energy": 1.0, "forces": 0.0, "pitc": 1.0 if piwsl else 0.0,
                 "pisc": 0.01 if piwsl else 0.0, "epsilon": 0.05, "k": 0.5},
        "optim": {"lr": 5e-3, "batch_size": 8, "max_epochs": 3 if quick else 60, "patience": 15,
                  "lr_patience": 5, "ema": 0.95},
        "seed": 0,
        "output": str(output),
    }


def run_demo(output: str | Path = "demo_output", quick: bool = False) -> dict[str, dict[str, float]]:
    """Run the demo; returns the test metrics of both models (eV units)."""
    output = Path(output)
    t_start = time.perf_counter()
    n_train, n_test = (10, 5) if quick else (60, 40)
    print(f"labelling {n_train} training and {n_test} test structures of fcc Cu (32 atoms) with EMT ...")
    train_set = energy_only(cu_structures(n_train, seed=1))
    test_set = cu_structures(n_test, seed=2)
    results = {}
    for name, piwsl in (("plain", False), ("pitc+pisc", True)):
        run_dir = output / name
        shutil.rmtree(run_dir, ignore_errors=True)  # the demo always starts afresh
        print(f"training PaiNN on energies only ({name}) ...")
        t0 = time.perf_counter()
        res = train(_config(train_set, test_set, run_dir, piwsl, quick))
        results[name] = {**res.test_metrics, "train_s": time.perf_counter() - t0, "model": str(res.model_path)}

    zero_force = float(np.mean([np.abs(a.arrays[keys.FORCES]).mean() for a in test_set]))
    print("\nheld-out test set (EMT energies and forces), models trained on energies only:")
    print(f"  {'model':<14}{'E MAE meV/atom':>16}{'F MAE meV/Å':>14}{'F RMSE meV/Å':>14}{'train s':>9}")
    for name, m in results.items():
        print(f"  {name:<14}{m['energy_per_atom_mae'] * 1e3:>16.2f}{m['forces_mae'] * 1e3:>14.1f}"
              f"{m['forces_rmse'] * 1e3:>14.1f}{m['train_s']:>9.1f}")
    print(f"  {'zero forces':<14}{'':>16}{zero_force * 1e3:>14.1f}")

    steps = 50 if quick else 500
    atoms = test_set[0].copy()
    atoms.calc = PIMLIPCalculator(results["pitc+pisc"]["model"])
    rng = np.random.default_rng(0)
    thermalize(atoms, 300, rng)
    dyn = make_langevin(atoms, 2.0, 300, friction=0.02, rng=rng)
    t0 = time.perf_counter()
    dyn.run(steps)
    per_step = (time.perf_counter() - t0) / steps
    print(f"\nLangevin MD with the PIWSL model: {steps * 2.0 / 1000:.1f} ps at 300 K (2 fs steps), "
          f"final T = {atoms.get_temperature():.0f} K, {per_step * 1e3:.1f} ms/step")
    print(f"demo finished in {time.perf_counter() - t_start:.0f} s; runs in {output}/")
    return results
