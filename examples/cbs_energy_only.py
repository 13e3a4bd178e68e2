"""Energy-only CCSD(T)/CBS training, end to end: geometries → CBS labels → PIWSL training → model
file → relaxation and MD through the ASE calculator.

1. sample water geometries from GFN2-xTB Langevin MD (tblite);
2. label them with a CCSD(T)/CBS composite in PySCF (energies only; every component is kept in the
   resumable store ``WORKDIR/labels.db``: rerun after a kill and only missing labels are computed);
3. train a small PaiNN on the energies alone, with PITC + PISC (k = ½);
4. load the model file into ``PIMLIPCalculator``, relax the molecule and run Langevin MD at 300 K
   that stops at the first broken bond (``nvt_stability``).

On the tiny default (16 geometries, a cc-pV[DT]Z composite) this takes a couple of minutes on one
core; ``--method "pyscf:mp2/cc-pv[tq]z + d:ccsd(t)/cc-pvtz" --n 300`` is the shipped set's level.
Energy-only training fixes forces only through the energies: validation energies cannot show a
force error, so check forces on a labelled set (see ``benchmarks/cbs_routes.py``) before production.

    OMP_NUM_THREADS=1 python examples/cbs_energy_only.py [--workdir runs/cbs_example]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ase.build import molecule
from ase.optimize import BFGS

from pimlip_ase import PIMLIPCalculator, train
from pimlip_ase.workflow.generate import md_structures
from pimlip_ase.workflow.label import make_labeller
from pimlip_ase.workflow.stability_md import nvt_stability
from pimlip_ase.workflow.store import Store, label_pending


def geometries(n: int, temperature_K: float = 1500.0) -> list:
    """``n`` water snapshots from GFN2-xTB Langevin MD (one every 10 fs); hot, so that bonds and angle
    span well beyond what 300 K MD visits (a model cannot be trusted outside its data)."""
    from tblite.ase import TBLite

    return md_structures(molecule("H2O"), TBLite(method="GFN2-xTB", verbosity=0), temperature_K, n,
                         interval=20, timestep_fs=0.5, friction=0.02, equilibration_steps=200, seed=0)


def geometry_report(atoms) -> str:
    """O–H bond lengths (Å) and H–O–H angle (degrees) of a water molecule (O first)."""
    return (f"O-H {atoms.get_distance(0, 1):.4f} / {atoms.get_distance(0, 2):.4f} Å, "
            f"H-O-H {atoms.get_angle(1, 0, 2):.2f}°")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/cbs_example"))
    parser.add_argument("--n", type=int, default=30, help="number of geometries to label")
    parser.add_argument("--method", default="pyscf:mp2/cc-pv[dt]z + d:ccsd(t)/cc-pvdz",
                        help="labelling method (see pimlip_ase.workflow.label.make_labeller)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--md-ps", type=float, default=1.0, help="length of the NVT check, ps")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    # 1-2. geometries and CBS labels in a resumable store
    store = Store(args.workdir / "labels.db")
    if sum(store.counts().values()) == 0:
        store.add(geometries(args.n), generator="md")
    counts = label_pending(store, make_labeller(args.method), workers=args.workers)
    print(f"labels: {counts}; failures: {store.failures() or 'none'}")
    labelled = store.labelled_atoms()

    # 3. energy-only training with PITC + PISC
    result = train({
        "model": {"name": "painn", "cutoff": 4.0, "n_features": 32, "n_interactions": 2},
        "data": {"train": labelled, "valid": 0.25},
        "loss": {"energy": 1.0, "pitc": 1.0, "pisc": 0.1, "k": 0.5, "epsilon": 0.05},
        "optim": {"lr": 3e-3, "batch_size": 4, "max_epochs": args.epochs, "patience": 30},
        "seed": 0,
        "output": str(args.workdir / "train"),
    }, resume=(args.workdir / "train" / "checkpoints" / "last.pt").exists())
    print(f"model {result.model_path}: validation energy MAE "
          f"{1e3 * result.valid_metrics['energy_mae']:.1f} meV (best epoch {result.best_epoch})")

    # 4. the model file as an ASE calculator: relax, then Langevin MD at 300 K that stops when a bond
    #    deviates by more than 0.5 Å from the relaxed structure's
    water = molecule("H2O")
    calc = PIMLIPCalculator(result.model_path)
    water.calc = calc
    BFGS(water, logfile=None).run(fmax=0.01, steps=200)
    print(f"relaxed: {geometry_report(water)} (experimental r_e 0.9578 Å, 104.48°)")
    md = nvt_stability(water, calc, 300.0, timestep_fs=0.5, duration_ps=args.md_ps, friction=0.02)
    verdict = "stable" if md.stable else f"unstable ({md.reason}: {md.message})"
    print(f"NVT at 300 K: {verdict} for {md.stable_time_ps:.2f} of {args.md_ps} ps; largest bond "
          f"deviation {md.max_bond_deviation.max():.3f} Å")


if __name__ == "__main__":
    main()
