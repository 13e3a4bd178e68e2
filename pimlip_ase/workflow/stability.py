"""Physical checks of a potential that take any ASE calculator.

This module holds relaxation, lattice constants, vacancy formation energies and the softening slope,
and re-exports the MD checks (:mod:`.stability_md`: ``nve_drift``, ``nvt_stability``) and phonons
(:mod:`.stability_phonons`: ``phonons``), so ``from pimlip_ase.workflow.stability import ...``
reaches all of them. Units: eV, Å, eV/Å, eV/Å³, GPa for pressures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ase
import numpy as np
from ase import units
from ase.calculators.calculator import Calculator
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE, LBFGS
from tqdm.auto import tqdm

from ..errors import ConfigError, InvalidStructureError
from .generate import StructureLike, as_atoms
from .stability_md import (
    NVEResult,
    NVTResult,
    hr_error,
    max_bond_deviation,
    nve_drift,
    nvt_stability,
    pair_distance_histogram,
)
from .stability_phonons import PhononResult, phonons

__all__ = [
    "NVEResult",
    "NVTResult",
    "PhononResult",
    "RelaxResult",
    "VacancyResult",
    "hr_error",
    "lattice_constant",
    "max_bond_deviation",
    "nve_drift",
    "nvt_stability",
    "pair_distance_histogram",
    "phonons",
    "relax",
    "softening_slope",
    "vacancy_formation_energy",
]

OPTIMIZERS = {"BFGS": BFGS, "FIRE": FIRE, "LBFGS": LBFGS}


# --------------------------------------------------------------------------- relaxation


@dataclass
class RelaxResult:
    """A relaxed structure.

    Attributes:
        atoms: relaxed copy (no calculator, no labels).
        energy: potential energy in eV.
        max_force: largest atomic force norm in eV/Å.
        max_stress: largest |stress| component in eV/Å³ (None for a fixed-cell relaxation).
        converged: True when ``fmax`` was reached within ``steps``.
        n_steps: optimiser steps taken.
        lattice_constant: conventional cubic lattice constant in Å when the relaxed cell is a
            cubic, FCC or BCC Bravais lattice, else None (see :func:`lattice_constant`).
    """

    atoms: ase.Atoms
    energy: float
    max_force: float
    max_stress: float | None
    converged: bool
    n_steps: int
    lattice_constant: float | None


def lattice_constant(atoms: ase.Atoms, eps: float = 2e-4) -> float | None:
    """Conventional cubic lattice constant a (Å) of a CUB/FCC/BCC cell, else None.

    An FCC primitive cell gives the a of its cubic conventional cell (√2 × the primitive vector
    length). The cell is taken as it is: a 2×2×2 repetition of a cube gives 2a.
    """
    if atoms.cell.rank != 3:
        return None
    try:
        lat = atoms.cell.get_bravais_lattice(eps=eps)
    except (RuntimeError, ValueError):
        return None
    return float(lat.a) if lat.name in ("CUB", "FCC", "BCC") else None


def _optimizer(name: str) -> type:
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; use one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name]


def relax(
    atoms: StructureLike,
    calc: Calculator,
    fmax: float = 0.01,
    cell: bool = True,
    optimizer: str = "BFGS",
    steps: int = 1000,
    pressure_GPa: float = 0.0,
    logfile: str | None = None,
) -> RelaxResult:
    """Relax positions (and the cell, through ``ase.filters.FrechetCellFilter``) with ``calc``.

    Args:
        fmax: force criterion in eV/Å (applied by the filter to the cell's stress as well).
        cell: relax the cell too; needs a 3D-periodic structure.
        optimizer: "BFGS", "FIRE" or "LBFGS".
        pressure_GPa: external hydrostatic pressure for the cell relaxation.
        logfile: optimiser log ("-" for stdout); quiet by default.
    """
    work = as_atoms(atoms)
    if cell and (not work.pbc.all() or work.cell.rank != 3):
        raise ConfigError(
            f"{work.get_chemical_formula()}: cell relaxation needs a 3D-periodic cell; pass cell=False"
        )
    work.calc = calc
    target = FrechetCellFilter(work, scalar_pressure=pressure_GPa * units.GPa) if cell else work
    opt = _optimizer(optimizer)(target, logfile=logfile)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    forces = work.get_forces()
    if not np.all(np.isfinite(forces)):
        raise InvalidStructureError(f"{work.get_chemical_formula()}: NaN/inf forces during relaxation")
    max_stress = float(np.max(np.abs(work.get_stress()))) if cell else None
    out = as_atoms(work)
    return RelaxResult(
        atoms=out,
        energy=float(work.get_potential_energy()),
        max_force=float(np.max(np.linalg.norm(forces, axis=1))),
        max_stress=max_stress,
        converged=converged,
        n_steps=int(opt.nsteps),
        lattice_constant=lattice_constant(out),
    )


# --------------------------------------------------------------------------- vacancies


@dataclass
class VacancyResult:
    """Vacancy formation energy versus supercell size.

    Attributes:
        sizes: (S,) supercell repetitions n (n×n×n of the given cell).
        n_atoms: (S,) atoms N of the perfect supercells.
        energy: (S,) E_vac = E(N−1) − (N−1)/N · E(N) in eV (relaxed positions, fixed cell).
        converged: (S,) whether each defect relaxation reached ``fmax``.
        reference_energy: (S,) the same with ``reference_calc``, or None.
        error: (S,) energy − reference_energy in eV, or None.
    """

    sizes: np.ndarray
    n_atoms: np.ndarray
    energy: np.ndarray
    converged: np.ndarray
    reference_energy: np.ndarray | None = None
    error: np.ndarray | None = None


def _vacancy_energies(
    bulk: ase.Atoms,
    calc: Calculator,
    sizes: Sequence[int],
    fmax: float,
    optimizer: str,
    index: int,
    progress: bool | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_atoms, e_vac, conv = [], [], []
    for n in tqdm(sizes, desc="vacancy supercells", disable=None if progress is None else not progress):
        perfect = bulk.repeat(int(n))
        perfect.calc = calc
        e_bulk = perfect.get_potential_energy()
        defect = as_atoms(perfect)
        del defect[index]
        res = relax(defect, calc, fmax=fmax, cell=False, optimizer=optimizer)
        big_n = len(perfect)
        n_atoms.append(big_n)
        e_vac.append(res.energy - (big_n - 1) / big_n * e_bulk)
        conv.append(res.converged)
    return np.array(n_atoms), np.array(e_vac), np.array(conv)


def vacancy_formation_energy(
    bulk_primitive: StructureLike,
    calc: Calculator,
    sizes: Sequence[int] = (2, 3, 4, 5),
    reference_calc: Calculator | None = None,
    fmax: float = 0.01,
    optimizer: str = "BFGS",
    index: int = 0,
    progress: bool | None = None,
) -> VacancyResult:
    """Vacancy formation energy E_vac = E(N−1) − (N−1)/N · E(N) for n×n×n supercells.

    ``bulk_primitive`` should already be relaxed with ``calc`` (see :func:`relax`); the cell is
    kept fixed and only the positions of the defect supercell relax. Atom ``index`` is removed.
    With ``reference_calc`` the same supercells are computed with it (its own relaxation).
    """
    bulk = as_atoms(bulk_primitive)
    if not bulk.pbc.all() or bulk.cell.rank != 3:
        raise InvalidStructureError(f"{bulk.get_chemical_formula()}: vacancies need a 3D-periodic bulk cell")
    if not sizes or min(sizes) < 1 or not 0 <= index < len(bulk):
        raise ConfigError(f"need sizes ≥ 1 and 0 ≤ index < {len(bulk)}; got {sizes}, {index}")
    sizes = np.asarray(sizes, dtype=int)
    n_atoms, energy, conv = _vacancy_energies(bulk, calc, sizes, fmax, optimizer, index, progress)
    result = VacancyResult(sizes, n_atoms, energy, conv)
    if reference_calc is not None:
        ref = _vacancy_energies(bulk, reference_calc, sizes, fmax, optimizer, index, progress)[1]
        result.reference_energy, result.error = ref, energy - ref
    return result


# --------------------------------------------------------------------------- softening


def softening_slope(
    pred_forces: np.ndarray | Sequence[np.ndarray], ref_forces: np.ndarray | Sequence[np.ndarray]
) -> float:
    """Least-squares slope through the origin of predicted vs reference force components.

    slope = Σ F_pred·F_ref / Σ F_ref² over every Cartesian component (eV/Å in, dimensionless out);
    1 means no systematic bias, < 1 a softened potential. Accepts one (N, 3) array or a list of
    them (structures of different sizes).
    """
    pred = _flatten(pred_forces)
    ref = _flatten(ref_forces)
    if pred.shape != ref.shape:
        raise ConfigError(f"predicted and reference forces differ in size: {pred.size} vs {ref.size}")
    if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(ref))):
        raise ConfigError("forces contain NaN/inf; drop those structures before computing the slope")
    norm = float(np.dot(ref, ref))
    if norm == 0.0:
        raise ConfigError("reference forces are all zero; the softening slope is undefined")
    return float(np.dot(pred, ref) / norm)


def _flatten(forces: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    if isinstance(forces, np.ndarray):
        return forces.astype(float).ravel()
    if not len(forces):
        return np.zeros(0)
    return np.concatenate([np.asarray(f, dtype=float).ravel() for f in forces])
