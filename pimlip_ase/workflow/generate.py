"""Structure generators: new, unlabelled ``ase.Atoms`` around a parent structure.

Every generator returns a list of fresh ``ase.Atoms`` (no calculator, no labels) and tags each with
``info["generator"]`` (its name), ``info["generator_params"]`` (a JSON string of the parameters of
the call plus the structure's own draw, e.g. its index and strain) and ``info["parent"]`` when the
caller passes a ``parent`` id. A ``seed`` makes every random generator reproducible.

Wherever an ``ase.Atoms`` is accepted, a pymatgen ``Structure`` or ``Molecule`` is accepted too.
Units are ASE's: Å, eV, fs, K.
"""

from __future__ import annotations

import inspect
import json
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ase
import numpy as np
from ase import units
from ase.build import make_supercell
from ase.calculators.calculator import Calculator
from ase.constraints import FixCom
from ase.data import atomic_numbers, covalent_radii
from ase.geometry import get_distances
from ase.md import velocitydistribution
from ase.md.langevin import Langevin
from ase.vibrations import Vibrations
from tqdm.auto import tqdm

from ..errors import ConfigError, InvalidStructureError, PimlipError
from ..perturb import DISTRIBUTIONS, rattle

__all__ = [
    "HarmonicModes",
    "as_atoms",
    "harmonic_modes",
    "interstitial_structures",
    "make_langevin",
    "thermalize",
    "md_structures",
    "normal_mode_structures",
    "rattle_structures",
    "strain_structures",
    "vacancy_structures",
]

#: Frequency conversion: ω in 1/(ASE time unit) -> ν in THz.
_OMEGA_TO_THZ = units.fs * 1e3 / (2.0 * np.pi)
#: ħ in eV · (ASE time unit).
_HBAR = units._hbar * units.J * units.s

StructureLike = Any  # ase.Atoms | pymatgen Structure | pymatgen Molecule


# --------------------------------------------------------------------------- helpers


def as_atoms(structure: StructureLike) -> ase.Atoms:
    """Return a clean ``ase.Atoms`` copy (numbers, positions, cell, pbc, masses; no labels).

    Accepts ``ase.Atoms`` or a pymatgen ``Structure``/``Molecule`` (via ``AseAtomsAdaptor``).
    """
    if not isinstance(structure, ase.Atoms):
        from pymatgen.core import IMolecule, IStructure
        from pymatgen.io.ase import AseAtomsAdaptor

        if isinstance(structure, (IStructure, IMolecule)):
            structure = AseAtomsAdaptor.get_atoms(structure)
        else:
            raise InvalidStructureError(
                f"cannot use a {type(structure).__name__} as a structure; pass an ase.Atoms or a "
                "pymatgen Structure/Molecule"
            )
    new = ase.Atoms(
        numbers=structure.numbers, positions=structure.positions, cell=structure.cell, pbc=structure.pbc
    )
    if "masses" in structure.arrays:
        new.set_masses(structure.get_masses())
    if not np.all(np.isfinite(new.positions)):
        raise InvalidStructureError(f"structure {new.get_chemical_formula()} has NaN/inf positions")
    return new


def _tag(atoms: ase.Atoms, name: str, params: dict[str, Any], parent: int | str | None) -> ase.Atoms:
    atoms.info["generator"] = name
    atoms.info["generator_params"] = json.dumps(params, sort_keys=True)
    if parent is not None:
        atoms.info["parent"] = parent
    return atoms


def _check_count(n: int, what: str = "n") -> None:
    if int(n) < 1:
        raise ConfigError(f"{what} must be a positive number of structures, got {n}")


def _supercell(atoms: ase.Atoms, size: int | Sequence[int] | Sequence[Sequence[int]]) -> ase.Atoms:
    """Repeat ``atoms`` by an int, a (3,) repetition or a (3, 3) integer matrix."""
    arr = np.asarray(size, dtype=int)
    if arr.ndim == 0:
        return atoms.repeat(int(arr))
    if arr.shape == (3,):
        return atoms.repeat(tuple(int(x) for x in arr))
    if arr.shape == (3, 3):
        return make_supercell(atoms, arr)
    raise ConfigError(f"supercell must be an int, 3 ints or a 3x3 matrix, got {size!r}")


def thermalize(atoms: ase.Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Maxwell–Boltzmann momenta at ``temperature_K`` (seeded by ``rng``), zero total momentum."""
    draw = getattr(velocitydistribution, "thermalize_momenta", None)  # ASE ≥ 3.29
    if draw is None:
        draw = velocitydistribution.MaxwellBoltzmannDistribution
    draw(atoms, temperature_K=temperature_K, rng=rng)
    velocitydistribution.Stationary(atoms, preserve_temperature=len(atoms) > 1)


def make_langevin(
    atoms: ase.Atoms, timestep_fs: float, temperature_K: float, friction: float, rng: np.random.Generator
) -> Langevin:
    """ASE ``Langevin`` (friction in 1/fs) with the centre of mass fixed by ``FixCom``.

    ``FixCom`` replaces Langevin's deprecated ``fixcm`` (which does not sample NVT exactly); the
    constraint is added to ``atoms``, which should be a working copy.
    """
    atoms.set_constraint(FixCom())
    kwargs: dict[str, Any] = {"temperature_K": temperature_K, "friction": friction / units.fs, "rng": rng}
    if "fixcm" in inspect.signature(Langevin.__init__).parameters:
        kwargs["fixcm"] = False
    return Langevin(atoms, timestep_fs * units.fs, **kwargs)


def progress_bar(total: int, desc: str, progress: bool | None) -> tqdm:
    """A tqdm bar; ``progress=None`` shows it only on a terminal."""
    return tqdm(total=total, desc=desc, disable=None if progress is None else not progress, leave=False)


# --------------------------------------------------------------------------- rattle / strain


def rattle_structures(
    atoms: StructureLike,
    n: int,
    sigma: float,
    distribution: str = "gaussian",
    seed: int = 0,
    parent: int | str | None = None,
) -> list[ase.Atoms]:
    """Return ``n`` copies of ``atoms`` with zero-mean random displacements (``perturb.rattle``).

    Args:
        sigma: displacement scale in Å: the standard deviation per Cartesian component for
            ``"gaussian"``, the half-width ε of U(−ε, ε) for ``"uniform"``.
        distribution: ``"gaussian"`` or ``"uniform"``.
        seed: seed of the draws; the same seed gives the same structures.
    """
    _check_count(n)
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"unknown rattle distribution {distribution!r}; use one of {DISTRIBUTIONS}")
    base = as_atoms(atoms)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        new = base.copy()
        new.positions = rattle(base, sigma, distribution, seed=rng).positions
        params = {"sigma": sigma, "distribution": distribution, "seed": seed, "index": i}
        out.append(_tag(new, "rattle", params, parent))
    return out


def strain_structures(
    atoms: StructureLike,
    n: int,
    max_strain: float,
    rattle_sigma: float = 0.0,
    distribution: str = "gaussian",
    seed: int = 0,
    parent: int | str | None = None,
) -> list[ase.Atoms]:
    """Return ``n`` copies with a random symmetric strain, scaled positions kept, optionally rattled.

    Each of the six independent components of the symmetric strain tensor ε is drawn uniformly in
    [−max_strain, max_strain] (dimensionless, so max |ε_ij| ≤ max_strain). The cell and the positions
    are deformed by (1 + ε): ``cell' = cell (1 + ε)`` with fractional coordinates unchanged (for a
    structure without a cell the positions are deformed the same way). The strain is stored in the
    structure's ``generator_params`` as a 3x3 list. ``rattle_sigma`` (Å) > 0 then adds a zero-mean
    rattle of that scale and ``distribution`` (see :func:`rattle_structures`).
    """
    _check_count(n)
    if not 0.0 <= max_strain < 1.0:
        raise ConfigError(f"max_strain must be in [0, 1), got {max_strain}")
    base = as_atoms(atoms)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        upper = np.triu(rng.uniform(-max_strain, max_strain, size=(3, 3)))
        eps = upper + np.triu(upper, 1).T
        deform = np.eye(3) + eps
        new = base.copy()
        new.set_cell(base.cell.array @ deform, scale_atoms=False)
        new.positions = base.positions @ deform
        if rattle_sigma > 0.0:
            new.positions = rattle(new, rattle_sigma, distribution, seed=rng).positions
        params = {
            "max_strain": max_strain,
            "rattle_sigma": rattle_sigma,
            "distribution": distribution,
            "seed": seed,
            "index": i,
            "strain": eps.round(12).tolist(),
        }
        out.append(_tag(new, "strain", params, parent))
    return out


# --------------------------------------------------------------------------- normal modes


@dataclass
class HarmonicModes:
    """Harmonic vibrational modes of a structure (rigid translations/rotations projected out).

    Attributes:
        omega2: (M,) eigenvalues ω² of the mass-weighted Hessian in eV/(Å² amu), ascending;
            negative values are imaginary modes.
        vectors: (3N, M) orthonormal mass-weighted eigenvectors (columns), atom-major (x0 y0 z0 x1 ...).
        masses: (N,) masses in amu.
        n_zero: number of translational/rotational zero modes removed (3N = M + n_zero).
        hessian: (3N, 3N) finite-difference Hessian in eV/Å².
    """

    omega2: np.ndarray
    vectors: np.ndarray
    masses: np.ndarray
    n_zero: int
    hessian: np.ndarray

    @property
    def frequencies_THz(self) -> np.ndarray:
        """(M,) frequencies in THz; imaginary modes are returned negative."""
        return np.sign(self.omega2) * np.sqrt(np.abs(self.omega2)) * _OMEGA_TO_THZ


def _rigid_basis(atoms: ase.Atoms, masses: np.ndarray) -> np.ndarray:
    """Orthonormal (3N, k) basis of rigid translations (and rotations if not periodic), mass-weighted."""
    sqm = np.sqrt(masses)[:, None]
    vecs = [np.repeat(sqm, 3, axis=1) * np.eye(3)[a] for a in range(3)]
    if not atoms.pbc.any():
        rel = atoms.positions - atoms.get_center_of_mass()
        vecs += [sqm * np.cross(np.eye(3)[a], rel) for a in range(3)]
    mat = np.stack([v.ravel() for v in vecs], axis=1)
    u, s, _ = np.linalg.svd(mat, full_matrices=False)
    rank = int(np.sum(s > 1e-8 * s.max()))
    return u[:, :rank]


def harmonic_modes(atoms: StructureLike, calc: Calculator, delta: float = 0.01) -> HarmonicModes:
    """Finite-difference Hessian (``ase.vibrations``, central differences of ``delta`` Å) and modes.

    The structure should be at a minimum of ``calc``. For structures without periodicity the three
    translations and three rotations (two for a linear molecule) are projected out; with any
    periodic direction only the three translations are.
    """
    work = as_atoms(atoms)
    work.calc = calc
    with tempfile.TemporaryDirectory(prefix="pimlip_vib_") as tmp:
        vib = Vibrations(work, name=f"{tmp}/vib", delta=delta)
        vib.run()
        hessian = vib.get_vibrations().get_hessian_2d()
    hessian = 0.5 * (hessian + hessian.T)
    masses = work.get_masses()
    inv_sqm = np.repeat(1.0 / np.sqrt(masses), 3)
    dyn = hessian * inv_sqm[:, None] * inv_sqm[None, :]
    rigid = _rigid_basis(work, masses)
    proj = np.eye(len(dyn)) - rigid @ rigid.T
    w2, vec = np.linalg.eigh(proj @ dyn @ proj)
    overlap = np.linalg.norm(rigid.T @ vec, axis=0)
    keep = np.argsort(overlap)[: len(dyn) - rigid.shape[1]]
    keep = keep[np.argsort(w2[keep])]
    return HarmonicModes(w2[keep], vec[:, keep], masses, rigid.shape[1], hessian)


def normal_mode_structures(
    atoms: StructureLike,
    calc: Calculator,
    n: int,
    temperature_K: float,
    seed: int = 0,
    delta: float = 0.01,
    quantum: bool = False,
    min_frequency_THz: float = 0.05,
    modes: HarmonicModes | None = None,
    parent: int | str | None = None,
) -> list[ase.Atoms]:
    """Sample ``n`` structures from the harmonic (normal-mode) distribution at ``temperature_K``.

    Each mode k with ω_k > 0 gets a Gaussian normal coordinate Q_k of variance kT/ω_k² (classical)
    or ħ/(2ω_k)·coth(ħω_k/2kT) (``quantum=True``); displacements are ``M^{-1/2} Σ_k e_k Q_k`` in Å.
    In the harmonic limit this gives ⟨E_pot − E_0⟩ = (number of modes)/2 · kT. Rigid translations
    and rotations are skipped (see :func:`harmonic_modes`), as are modes below
    ``min_frequency_THz`` (imaginary ones with a warning: relax the structure first).

    Args:
        calc: any ASE calculator, used for the finite-difference Hessian (6N force calls).
        delta: finite-difference step in Å.
        modes: precomputed :func:`harmonic_modes` of the same structure (skips the Hessian).
    """
    _check_count(n)
    if temperature_K <= 0.0:
        raise ConfigError(f"temperature_K must be positive, got {temperature_K}")
    base = as_atoms(atoms)
    modes = harmonic_modes(base, calc, delta) if modes is None else modes
    if modes.vectors.shape[0] != 3 * len(base):
        raise ConfigError(
            f"the modes given are for {modes.vectors.shape[0] // 3} atoms, not the {len(base)} of "
            f"{base.get_chemical_formula()}; compute harmonic_modes on this structure"
        )
    freqs = modes.frequencies_THz
    n_imag = int(np.sum(freqs < -min_frequency_THz))
    if n_imag:
        warnings.warn(
            f"{base.get_chemical_formula()}: {n_imag} imaginary mode(s) down to {freqs.min():.3f} THz "
            "skipped; relax the structure with the same calculator first",
            stacklevel=2,
        )
    use = freqs > min_frequency_THz
    omega = np.sqrt(modes.omega2[use])
    kt = units.kB * temperature_K
    if quantum:
        var = _HBAR / (2.0 * omega) / np.tanh(_HBAR * omega / (2.0 * kt))
    else:
        var = kt / omega**2
    vec = modes.vectors[:, use] * np.repeat(1.0 / np.sqrt(modes.masses), 3)[:, None]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q = rng.standard_normal(len(omega)) * np.sqrt(var)
        new = base.copy()
        new.positions = base.positions + (vec @ q).reshape(-1, 3)
        params = {
            "temperature_K": temperature_K,
            "quantum": quantum,
            "delta": delta,
            "n_modes": int(use.sum()),
            "seed": seed,
            "index": i,
        }
        out.append(_tag(new, "normal_modes", params, parent))
    return out


# --------------------------------------------------------------------------- molecular dynamics


def md_structures(
    atoms: StructureLike,
    calc: Calculator,
    temperature_K: float,
    n_snapshots: int,
    interval: int = 10,
    timestep_fs: float = 1.0,
    friction: float = 0.01,
    equilibration_steps: int = 0,
    seed: int = 0,
    parent: int | str | None = None,
    progress: bool | None = None,
    stop_on_failure: bool = False,
) -> list[ase.Atoms]:
    """Langevin MD at ``temperature_K`` with ``calc``; a snapshot every ``interval`` steps.

    Velocities start from a Maxwell–Boltzmann draw at ``temperature_K`` (seeded), then
    ``equilibration_steps`` steps are run and discarded. ``friction`` is in 1/fs (0.01 = 100 fs
    relaxation time), ``timestep_fs`` in fs. Raises ``InvalidStructureError`` if the dynamics
    produce NaN/inf energies or positions — or, with ``stop_on_failure``, ends the run there and
    returns the snapshots taken so far (what an active-learning loop wants from a model that fails).
    """
    _check_count(n_snapshots, "n_snapshots")
    if interval < 1 or timestep_fs <= 0.0:
        raise ConfigError(f"interval must be ≥ 1 and timestep_fs > 0, got {interval}, {timestep_fs}")
    work = as_atoms(atoms)
    work.calc = calc
    rng = np.random.default_rng(seed)
    thermalize(work, temperature_K, rng)
    dyn = make_langevin(work, timestep_fs, temperature_K, friction, rng)
    params = {
        "temperature_K": temperature_K,
        "interval": interval,
        "timestep_fs": timestep_fs,
        "friction": friction,
        "equilibration_steps": equilibration_steps,
        "seed": seed,
    }
    out = []
    total = equilibration_steps + n_snapshots * interval
    with progress_bar(total, "md sampling", progress) as bar:
        for step in range(1, total + 1):
            try:
                dyn.step()
            except PimlipError:  # e.g. the calculator refusing NaN positions
                if stop_on_failure:
                    break
                raise
            bar.update()
            if step > equilibration_steps and (step - equilibration_steps) % interval == 0:
                if not (np.all(np.isfinite(work.positions)) and np.isfinite(work.get_potential_energy())):
                    if stop_on_failure:
                        break
                    raise InvalidStructureError(
                        f"MD of {work.get_chemical_formula()} at {temperature_K} K produced NaN/inf at "
                        f"step {step}; check the calculator or lower the time step"
                    )
                snap = as_atoms(work)
                snap_params = dict(params, index=len(out), step=step, time_fs=step * timestep_fs)
                out.append(_tag(snap, "md", snap_params, parent))
    return out


# --------------------------------------------------------------------------- point defects


def _unique_sites(atoms: ase.Atoms, symprec: float = 1e-3) -> list[int]:
    """One representative index per symmetry-distinct site (all indices without 3D periodicity)."""
    if not atoms.pbc.all():
        return list(range(len(atoms)))
    import spglib

    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    with warnings.catch_warnings():  # spglib's notice about its error-handling switch
        warnings.simplefilter("ignore", DeprecationWarning)
        data = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if data is None:
        return list(range(len(atoms)))
    return sorted({int(i) for i in data.equivalent_atoms})


def vacancy_structures(
    atoms: StructureLike,
    supercell: int | Sequence[int] | Sequence[Sequence[int]] = 1,
    indices: Sequence[int] | None = None,
    parent: int | str | None = None,
) -> list[ase.Atoms]:
    """Supercells with one atom removed each.

    Args:
        supercell: repetition of ``atoms`` (int, 3 ints or a 3x3 integer matrix).
        indices: supercell indices of the atoms to remove, one structure each; by default one
            per symmetry-distinct site (spglib) for 3D-periodic cells, every atom otherwise.
    """
    sc = _supercell(as_atoms(atoms), supercell)
    if len(sc) < 2:
        raise InvalidStructureError(f"{sc.get_chemical_formula()}: too few atoms for a vacancy; enlarge it")
    chosen = _unique_sites(sc) if indices is None else [int(i) for i in indices]
    out = []
    for idx in chosen:
        if not 0 <= idx < len(sc):
            raise ConfigError(f"vacancy index {idx} out of range for {sc.get_chemical_formula()}")
        new = sc.copy()
        symbol = new[idx].symbol
        del new[idx]
        params = {"supercell": np.asarray(supercell).tolist(), "removed_index": idx, "element": symbol}
        out.append(_tag(new, "vacancy", params, parent))
    return out


def _candidate_points(atoms: ase.Atoms, m: int, rng: np.random.Generator) -> np.ndarray:
    if atoms.cell.rank == 3:
        return rng.random((m, 3)) @ atoms.cell.array
    lo, hi = atoms.positions.min(axis=0), atoms.positions.max(axis=0)
    return lo + rng.random((m, 3)) * (hi - lo)


def interstitial_structures(
    atoms: StructureLike,
    element: str,
    n: int,
    supercell: int | Sequence[int] | Sequence[Sequence[int]] = 1,
    placement: str = "void",
    min_distance: float | None = None,
    n_candidates: int = 500,
    seed: int = 0,
    parent: int | str | None = None,
) -> list[ase.Atoms]:
    """Supercells with one extra ``element`` atom each.

    ``placement="void"`` puts it at the candidate (of ``n_candidates`` uniform random points) that
    is farthest from every atom (a void); ``"random"`` at the first candidate at least
    ``min_distance`` Å from every atom. ``min_distance`` defaults to 0.6 × the smallest covalent
    bond length to the host elements; a placement closer than it raises ``InvalidStructureError``.
    Distances use the minimum-image convention.
    """
    _check_count(n)
    if placement not in ("void", "random"):
        raise ConfigError(f"unknown interstitial placement {placement!r}; use 'void' or 'random'")
    if element not in atomic_numbers:
        raise ConfigError(f"unknown element {element!r} for an interstitial")
    sc = _supercell(as_atoms(atoms), supercell)
    if min_distance is None:
        r_host = min(covalent_radii[z] for z in set(sc.numbers))
        min_distance = 0.6 * (covalent_radii[atomic_numbers[element]] + r_host)
    rng = np.random.default_rng(seed)
    pbc = sc.pbc if sc.cell.rank == 3 else None
    out = []
    for i in range(n):
        cand = _candidate_points(sc, n_candidates, rng)
        _, dist = get_distances(cand, sc.positions, cell=sc.cell, pbc=pbc)
        nearest = dist.min(axis=1)
        ok = np.flatnonzero(nearest >= min_distance)
        pick = int(np.argmax(nearest)) if placement == "void" else (int(ok[0]) if len(ok) else -1)
        if pick < 0 or nearest[pick] < min_distance:
            raise InvalidStructureError(
                f"no site for a {element} interstitial in {sc.get_chemical_formula()} at least "
                f"{min_distance:.2f} Å from every atom; lower min_distance or use a larger supercell"
            )
        new = sc.copy()
        new.append(ase.Atom(element, cand[pick]))
        params = {
            "element": element,
            "supercell": np.asarray(supercell).tolist(),
            "placement": placement,
            "min_distance": float(min_distance),
            "nearest_distance": float(nearest[pick]),
            "seed": seed,
            "index": i,
        }
        out.append(_tag(new, "interstitial", params, parent))
    return out
