"""Data for data_efficiency.py: labelled pools per system, cached under results/work/ (not committed).

Each pool is shuffled once with a fixed seed and split into held-out structures (first N_TEST), a
pretraining set labelled by the cheap method (next N_PRETRAIN) and the training pool (the rest), so the
three never share a structure. The test set is the held-out part topped up to TEST_SIZE with snapshots
of further MD runs (other seeds), so that it can grow without changing any training split.
Reference labels: REF_energy / REF_forces; cheap labels: CHEAP_energy / CHEAP_forces.
"""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.morse import MorsePotential

from pimlip_ase.data import LabelKeys, dataset_fingerprint
from pimlip_ase.workflow.generate import make_langevin, thermalize

WORK = Path(__file__).parent / "results" / "work"
CUTOFF = {"cu": 5.0, "ethanol": 5.0, "water": 5.0}
N_TEST = 500  # held out of the pool (set by data_efficiency.py; it fixes the training splits)
TEST_SIZE = 500  # the test set: held-out structures plus extra MD snapshots (water: what it ships)
N_PRETRAIN = 200
EXTRA_SEEDS = 100  # MD seeds of the extra test runs start here (the pool's runs use 0, 1, ...)
WORKERS = 1  # processes labelling water structures with MP2 (set by data_efficiency.py: --threads)
POOL = 2000  # set by data_efficiency.py to what the preset needs
#: Water's pool: "shipped" (the shipped MP2 set, 300 structures, in file order) or "md" (POOL new
#: geometries made and labelled as the shipped set, at all three of its temperatures, MD seeds
#: WATER_POOL_SEEDS, shuffled); set by data_efficiency.py from the preset.
WATER_POOL = "shipped"
WATER_POOL_SEEDS = (10, 11)


def cheap_calc(system: str):
    """The cheap method's ASE calculator: Morse for Cu, GFN1-xTB for ethanol, GFN2-xTB for water."""
    if system == "cu":  # Girifalco–Weizer Morse parameters for Cu (ε eV, r0 Å, ρ0 = α r0)
        return MorsePotential(epsilon=0.3429, r0=2.866, rho0=1.3588 * 2.866, rcut1=5.0, rcut2=6.0)
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB" if system == "water" else "GFN1-xTB", verbosity=0)


def _ref_calc(system: str):
    if system == "cu":
        return EMT()
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def _label(atoms, calc, prefix: str) -> None:
    atoms.calc = calc
    atoms.info[f"{prefix}_energy"] = atoms.get_potential_energy()
    atoms.arrays[f"{prefix}_forces"] = atoms.get_forces()
    atoms.calc = None


def _md_snapshots(start, system: str, temperature: float, n: int, seed: int, every: int = 10):
    atoms = start.copy()
    atoms.calc = _ref_calc(system)
    rng = np.random.default_rng(seed)
    thermalize(atoms, temperature, rng)
    dyn = make_langevin(atoms, 2.0 if system == "cu" else 0.5, temperature, 0.02, rng)
    dyn.run(10 * every)
    out = []
    for _ in range(n):
        dyn.run(every)
        snap = atoms.copy()
        snap.constraints = []
        snap.calc = None
        out.append(snap)
    return out


def _build_pool(system: str, size: int, first_seed: int = 0) -> list:
    """At least ``size`` labelled MD snapshots, shuffled; run k of the system uses seed first_seed + k."""
    if system == "cu":
        cells = [bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)]
        vac = cells[0].copy()
        del vac[0]
        cells.append(vac)
        runs = [(c, t) for c in cells for t in (300, 600, 900, 1200)]
    elif system == "ethanol":
        runs = [(molecule("CH3CH2OH"), 500.0)] * 4
    else:
        raise ValueError(system)
    per_run = -(-size // len(runs))
    pool = []
    for k, (start, temp) in enumerate(runs):
        pool += _md_snapshots(start, system, temp, per_run, seed=first_seed + k)
    for atoms in pool:
        _label(atoms, _ref_calc(system), "REF")
        _label(atoms, cheap_calc(system), "CHEAP")
    rng = np.random.default_rng(12345)
    return [pool[i] for i in rng.permutation(len(pool))]


def _cached(path: Path, build) -> list:
    """Structures from an extxyz cache file, built (and written atomically) when missing."""
    if not path.exists():
        WORK.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(path) + ".tmp.extxyz")
        ase.io.write(tmp, build())
        tmp.rename(path)
    return list(ase.io.read(path, ":"))


def _with_cheap(ref: list, cheap: list) -> list:
    """``ref`` (MP2-labelled water) with the REF labels of ``cheap`` (the same geometries, GFN2-xTB)
    as its CHEAP labels."""
    for a, b in zip(ref, cheap, strict=True):
        a.info["CHEAP_energy"], a.arrays["CHEAP_forces"] = b.info["REF_energy"], b.arrays["REF_forces"]
    return ref


def pool(system: str) -> list:
    if system == "water" and WATER_POOL == "md":
        from pimlip_ase.datasets.generate_cbs_water import TEMPERATURES_K

        build = lambda: _water_labelled(WORK / f"water_pool_{POOL}", POOL, TEMPERATURES_K, WATER_POOL_SEEDS)  # noqa: E731
        return _cached(WORK / f"pool_water_md_{POOL}.extxyz", build)
    if system == "water":
        from pimlip_ase.datasets import load_dataset

        return _with_cheap(load_dataset("water_mp2"), load_dataset("water_xtb"))
    return _cached(WORK / f"pool_{system}_{POOL}.extxyz", lambda: _build_pool(system, POOL))


def _splits(system: str):
    p = pool(system)
    enough = len(p) >= N_TEST + N_PRETRAIN + 25  # a fixed shipped set may be smaller than asked
    n_test = N_TEST if enough else len(p) // 2
    n_pre = N_PRETRAIN if enough else len(p) // 4
    return p[:n_test], p[n_test : n_test + n_pre], p[n_test + n_pre :]


def _water_labelled(folder: Path, n: int, temperatures: tuple, seeds: tuple) -> list:
    """n water geometries made as the shipped set was (GFN2-xTB MD, one trajectory per temperature K
    and seed), labelled with MP2/cc-pVTZ energies + forces (REF) and GFN2-xTB (CHEAP) through resumable
    stores under ``folder`` (about 1 s per MP2 gradient and worker), shuffled."""
    from pimlip_ase.datasets import generate_cbs_water as gen
    from pimlip_ase.workflow.label import make_labeller
    from pimlip_ase.workflow.store import label_pending

    per_run = -(-n // (len(temperatures) * len(seeds)))
    geometries = lambda: gen.sample_geometries(per_run, temperatures_K=temperatures, seeds=seeds)  # noqa: E731
    stores = gen.open_stores(folder, geometries, ["mp2", "xtb"])
    for name, store in stores.items():
        spec, options = gen.METHODS[name]
        label_pending(store, make_labeller(spec, **options), workers=WORKERS, progress=False)
        if store.failures():
            raise RuntimeError(f"{name} labels failed for rows {sorted(store.failures())}: see {folder}")
    gen.export(stores, folder, prefix="water")
    mp2 = _with_cheap(*(list(ase.io.read(folder / f"water_{name}.extxyz", ":")) for name in ("mp2", "xtb")))
    rng = np.random.default_rng(12345)
    return [mp2[i] for i in rng.permutation(len(mp2))][:n]


def _water_extra(n: int) -> list:
    """n more water test structures at 600 and 1000 K — the temperatures of the shipped set's
    held-out half — from MD seeds neither the shipped set nor the generated pool uses."""
    return _water_labelled(WORK / f"water_test_extra_{n}", n, (600.0, 1000.0), (EXTRA_SEEDS, EXTRA_SEEDS + 1))


def test_set(system: str) -> list:
    """The held-out structures, topped up to TEST_SIZE with snapshots of MD runs of seeds the pool
    does not use (water: new geometries labelled with MP2, see :func:`_water_extra`)."""
    held_out = _splits(system)[0]
    missing = TEST_SIZE - len(held_out)
    if missing <= 0:
        return held_out
    path = WORK / f"test_extra_{system}_{missing}.extxyz"
    extra = (
        (lambda: _water_extra(missing))
        if system == "water"
        else (lambda: _build_pool(system, missing, EXTRA_SEEDS)[:missing])
    )
    return held_out + _cached(path, extra)


def test_fingerprint(system: str) -> str:
    """Identifies the test set by its structures and reference labels (not by its size), so that rows
    scored on another test set (another pool, other top-up runs) are never tabulated together."""
    return dataset_fingerprint(test_set(system), LabelKeys())


def train_pool_id(system: str) -> str:
    """Identifies the structures training draws from (training pool and pretraining set): a preset
    with a larger pool has other splits, and its runs must not reuse or join another pool's."""
    _, pretrain, rest = _splits(system)
    return dataset_fingerprint(pretrain + rest, LabelKeys())[:8]


def cheap_pool(system: str, seed: int) -> list:
    """Pretraining structures with the cheap method's energies and forces as REF labels."""
    out = []
    for a in _splits(system)[1]:
        b = a.copy()
        b.info["REF_energy"], b.arrays["REF_forces"] = a.info["CHEAP_energy"], a.arrays["CHEAP_forces"]
        out.append(b)
    return out


def n_available(system: str) -> int:
    """How many training structures the system's pool holds (after test and pretraining sets)."""
    return len(_splits(system)[2])


def train_pool(system: str, n: int, seed: int) -> list:
    """n training structures (seeded subset) with REF energies and forces."""
    rest = _splits(system)[2]
    if n > len(rest):
        raise ValueError(f"{system}: only {len(rest)} training structures, {n} asked")
    idx = np.random.default_rng(seed).choice(len(rest), n, replace=False)
    return [rest[i] for i in idx]


def delta_labels(system: str, structures: list) -> list:
    """Copies labelled with REF − CHEAP (energies and forces)."""
    out = []
    for a in structures:
        b = a.copy()
        b.info["REF_energy"] = a.info["REF_energy"] - a.info["CHEAP_energy"]
        b.arrays["REF_forces"] = a.arrays["REF_forces"] - a.arrays["CHEAP_forces"]
        out.append(b)
    return out


def baselines(system: str) -> str:
    test = test_set(system)
    ref = np.concatenate([a.arrays["REF_forces"].ravel() for a in test])
    cheap = np.concatenate([a.arrays["CHEAP_forces"].ravel() for a in test])
    return (
        f"zero-force predictor F MAE {1e3 * np.abs(ref).mean():.1f} meV/Å; cheap method alone F MAE "
        f"{1e3 * np.abs(cheap - ref).mean():.1f} meV/Å ({len(test)} test structures)"
    )


def available(system: str) -> bool:
    try:
        if system == "water":
            from pimlip_ase.datasets import load_dataset

            load_dataset("water_mp2")
            import pyscf  # noqa: F401 - labels the extra test structures
        elif system == "ethanol":
            import tblite.ase  # noqa: F401
    except Exception as err:  # noqa: BLE001 - report why a system is skipped
        available.reason = f"{type(err).__name__}: {err}"
        return False
    return True


def describe() -> str:
    return (
        "Cu: EMT Langevin MD of a 32-atom cell and a 31-atom vacancy cell at 300/600/900/1200 K "
        "(2 fs, every 10th step); ethanol: GFN2-xTB Langevin MD at 500 K (0.5 fs, every 10th step); "
        + (
            f"water: {POOL} geometries from GFN2-xTB Langevin MD at 600/1000/1500 K (MD seeds "
            f"{WATER_POOL_SEEDS}, 0.5 fs, every 20th step) labelled with MP2/cc-pVTZ, as the shipped set. "
            if WATER_POOL == "md"
            else "water: shipped MP2 set. "
        )
        + f"Test sets of {max(N_TEST, TEST_SIZE)} structures: the pool's held-out "
        "structures plus snapshots of further MD runs with other seeds (water: GFN2-xTB MD at 600 and "
        "1000 K labelled with MP2/cc-pVTZ), disjoint from training"
    )
