"""Regenerate the shipped water sets: CCSD(T)/CBS energies, MP2 energies + forces, GFN2-xTB.

Geometries of one water molecule are sampled by Langevin MD with GFN2-xTB (tblite) at 600, 1000 and
1500 K, two seeds each, so the set spans strongly distorted bonds and angles. The same geometries are
then labelled three times, each method in its own resumable :class:`~pimlip_ase.workflow.store.Store`
(an ``ase.db`` file under ``--workdir``):

* ``cbs``: ``mp2/cc-pv[tq]z + d:ccsd(t)/cc-pvtz`` — SCF at cc-pVQZ, MP2 correlation extrapolated
  from cc-pVTZ/cc-pVQZ (Helgaker X⁻³), plus CCSD(T) − MP2 in cc-pVTZ; frozen core; energies only.
  Every single-point component (Eh) is kept, so another extrapolation can be recomputed;
* ``mp2``: MP2/cc-pVTZ (frozen core) energies and analytic forces — the "MP2 twin";
* ``xtb``: GFN2-xTB energies and forces — the cheap method for Δ-learning and pretraining.

A killed run restarted with the same arguments labels only what is still pending. The export writes
only geometries labelled by all three methods, in the same order, with ``info["frame"]`` the
geometry's index, so the three files align line by line. Units: eV, eV/Å; components in Hartree.

Run (300 geometries took 47 min of wall time, one worker, on a busy shared 2-core machine)::

    OMP_NUM_THREADS=1 nice -n 15 python -m pimlip_ase.datasets.generate_cbs_water --workers 1
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import ase.io
from ase import Atoms
from ase.build import molecule

from pimlip_ase.datasets import component_info_key
from pimlip_ase.keys import ENERGY, FORCES
from pimlip_ase.workflow.generate import md_structures
from pimlip_ase.workflow.label import make_labeller
from pimlip_ase.workflow.store import METHOD_KEY, Store, label_pending

#: Dataset name -> (labeller spec, labeller options).
METHODS: dict[str, tuple[str, dict]] = {
    "xtb": ("gfn2-xtb", {}),
    "mp2": ("pyscf:mp2/cc-pvtz", {"forces": True}),
    "cbs": ("pyscf:mp2/cc-pv[tq]z + d:ccsd(t)/cc-pvtz", {}),
}
#: MD temperatures (K) and seeds; one trajectory per pair.
TEMPERATURES_K = (600.0, 1000.0, 1500.0)
SEEDS = (0, 1)
#: ``atoms.info`` keys kept in the exported files besides the labels.
KEPT_INFO = ("frame", "md_temperature_K", "md_seed", "md_time_fs")


def sample_geometries(
    n_per_trajectory: int,
    interval: int = 20,
    timestep_fs: float = 0.5,
    temperatures_K: Sequence[float] = TEMPERATURES_K,
    seeds: Sequence[int] = SEEDS,
) -> list[Atoms]:
    """Water snapshots from GFN2-xTB Langevin MD, ``n_per_trajectory`` per (temperature, seed).

    A snapshot every ``interval`` steps of ``timestep_fs`` fs, after 400 steps of equilibration;
    friction 0.02 / fs. Each snapshot carries ``frame``, ``md_temperature_K``, ``md_seed``,
    ``md_time_fs`` in ``info``.
    """
    from tblite.ase import TBLite

    frames: list[Atoms] = []
    for temperature in temperatures_K:
        for seed in seeds:
            calc = TBLite(method="GFN2-xTB", verbosity=0)
            snaps = md_structures(
                molecule("H2O"),
                calc,
                temperature,
                n_per_trajectory,
                interval=interval,
                timestep_fs=timestep_fs,
                friction=0.02,
                equilibration_steps=400,
                seed=seed,
                progress=False,
            )
            for snap in snaps:
                time_fs = float(json.loads(snap.info["generator_params"])["time_fs"])
                snap.info.update(
                    frame=len(frames), md_temperature_K=temperature, md_seed=seed, md_time_fs=time_fs
                )
                frames.append(snap)
    return frames


def open_stores(
    workdir: Path, geometries_factory: Callable[[], list[Atoms]], names: Sequence[str]
) -> dict[str, Store]:
    """One store per method under ``workdir``; empty stores receive the geometries, sampled once
    (the seeded MD gives the same geometries on a rerun, so a store added later still aligns)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stores = {name: Store(workdir / f"{name}.db") for name in names}
    empty = [name for name, store in stores.items() if sum(store.counts().values()) == 0]
    if empty:
        geometries = geometries_factory()
        for name in empty:
            stores[name].add(geometries, generator="md")
    return stores


def _by_frame(store: Store) -> dict[int, Atoms]:
    return {int(a.info["frame"]): a for a in store.labelled_atoms()}


def _clean(atoms: Atoms, forces: bool) -> Atoms:
    """A copy with only the labels and :data:`KEPT_INFO` (drops store ids and provenance JSON)."""
    out = Atoms(atoms.numbers, atoms.positions)
    out.info.update({k: atoms.info[k] for k in (*KEPT_INFO, ENERGY, METHOD_KEY)})
    if forces:
        out.arrays[FORCES] = atoms.arrays[FORCES]
    return out


def export(stores: dict[str, Store], outdir: Path, prefix: str = "water") -> dict[str, float]:
    """Write ``{prefix}_{name}.extxyz`` for the frames every method labelled, in frame order.

    Returns, per method, the summed wall time of its labels (s, as each worker measured it).
    """
    labelled = {name: _by_frame(store) for name, store in stores.items()}
    common = sorted(set.intersection(*(set(d) for d in labelled.values())))
    seconds: dict[str, float] = {}
    for name, frames in labelled.items():
        out = []
        for frame in common:
            atoms = frames[frame]
            record = stores[name].record(atoms.info["db_id"])
            clean = _clean(atoms, forces=FORCES in atoms.arrays)
            for key, parts in record.get("components", {}).items():
                method, basis = key.split("/")
                for part in ("scf", "corr"):
                    clean.info[component_info_key(method, basis, part)] = float(parts[part])
            out.append(clean)
        seconds[name] = sum(
            float(stores[name].record(f.info["db_id"])["wall_time_s"]) for f in frames.values()
        )
        ase.io.write(outdir / f"{prefix}_{name}.extxyz", out, format="extxyz")
    return seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--n-per-trajectory",
        type=int,
        default=50,
        help="snapshots per MD trajectory (6 trajectories; default 50 -> 300 geometries)",
    )
    parser.add_argument("--workers", type=int, default=1, help="labelling processes (default 1)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("runs/water_cbs_labels"),
        help="folder of the resumable ase.db stores",
    )
    parser.add_argument(
        "--outdir",
        type=Path,
        default=Path(__file__).parent,
        help="where the extxyz files go (default: this package folder)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=list(METHODS),
        help="label only these (the export needs all three)",
    )
    args = parser.parse_args(argv)

    stores = open_stores(args.workdir, lambda: sample_geometries(args.n_per_trajectory), args.methods)
    for name, store in stores.items():
        spec, options = METHODS[name]
        labeller = make_labeller(spec, **options)
        start = time.perf_counter()
        counts = label_pending(store, labeller, workers=args.workers)
        print(f"{name}: {counts} ({time.perf_counter() - start:.0f} s wall)", flush=True)
        for row_id, error in store.failures().items():
            print(f"  failed row {row_id}: {error}")
    if set(stores) == set(METHODS):
        seconds = export(stores, args.outdir)
        print("summed label time per method (s):", {k: round(v) for k, v in seconds.items()})


if __name__ == "__main__":
    main()
