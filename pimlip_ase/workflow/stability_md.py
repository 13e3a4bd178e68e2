"""MD stability checks with any ASE calculator: NVE energy drift and Langevin (NVT) stability.

Units: time steps in fs, durations and reported times in ps, temperatures in K, energies in eV
(drifts in meV/atom/ps), distances in Å, friction in 1/fs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import ase
import numpy as np
from ase import units
from ase.calculators.calculator import CalculationFailed, Calculator
from ase.geometry import find_mic
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import natural_cutoffs, neighbor_list

from ..errors import ConfigError, InvalidStructureError, PimlipError
from .generate import StructureLike, as_atoms, make_langevin, progress_bar, thermalize

__all__ = [
    "NVEResult",
    "NVTResult",
    "hr_error",
    "max_bond_deviation",
    "nve_drift",
    "nvt_stability",
    "pair_distance_histogram",
]

REASONS = ("completed", "bond_deviation", "overlap", "temperature", "nan", "calculator_error")


def _start(
    atoms: StructureLike,
    calc: Calculator,
    temperature_K: float,
    timestep_fs: float,
    duration_ps: float,
    seed: int,
) -> tuple[ase.Atoms, int, np.random.Generator]:
    """Working copy with ``calc`` and Maxwell–Boltzmann velocities; returns (atoms, n_steps, rng)."""
    if timestep_fs <= 0.0 or duration_ps <= 0.0 or temperature_K < 0.0:
        raise ConfigError(
            f"need timestep_fs > 0, duration_ps > 0, temperature_K ≥ 0; got {timestep_fs}, "
            f"{duration_ps}, {temperature_K}"
        )
    work = as_atoms(atoms)
    work.calc = calc
    rng = np.random.default_rng(seed)
    thermalize(work, temperature_K, rng)
    return work, max(1, int(round(duration_ps * 1000.0 / timestep_fs))), rng


def _finite(atoms: ase.Atoms) -> bool:
    """Energy, forces and positions all finite (evaluates the calculator if needed)."""
    return bool(
        np.all(np.isfinite(atoms.positions))
        and np.isfinite(atoms.get_potential_energy())
        and np.all(np.isfinite(atoms.get_forces()))
    )


# --------------------------------------------------------------------------- NVE


@dataclass
class NVEResult:
    """Energy conservation of a velocity-Verlet (NVE) run.

    Attributes:
        drift_meV_atom_ps: slope of a least-squares line through E_tot/N vs time, meV/atom/ps.
        max_abs_dE_meV_atom: max |E_tot(t) − E_tot(0)| / N, meV/atom.
        time_ps, total_energy, potential_energy, temperature_K: traces (eV for energies).
        n_atoms: N.
        completed: False when the run stopped at a NaN/inf energy, force or position.
    """

    drift_meV_atom_ps: float
    max_abs_dE_meV_atom: float
    time_ps: np.ndarray
    total_energy: np.ndarray
    potential_energy: np.ndarray
    temperature_K: np.ndarray
    n_atoms: int
    completed: bool


def nve_drift(
    atoms: StructureLike,
    calc: Calculator,
    temperature_K: float,
    timestep_fs: float = 1.0,
    duration_ps: float = 1.0,
    log_interval: int = 10,
    seed: int = 0,
    progress: bool | None = None,
) -> NVEResult:
    """Run NVE (velocity Verlet) from Maxwell–Boltzmann velocities at ``temperature_K``.

    The equipartition of the initial kinetic energy brings the average temperature to about
    ``temperature_K / 2`` for a structure started at a minimum. The total energy is logged every
    ``log_interval`` steps; the drift is the slope of its linear least-squares fit, per atom.
    """
    work, n_steps, _ = _start(atoms, calc, temperature_K, timestep_fs, duration_ps, seed)
    dyn = VelocityVerlet(work, timestep_fs * units.fs)
    n = len(work)
    rows: list[tuple[float, float, float, float]] = []
    completed = _finite(work)

    def record(step: int) -> None:
        epot, ekin = work.get_potential_energy(), work.get_kinetic_energy()
        rows.append((step * timestep_fs / 1000.0, epot + ekin, epot, work.get_temperature()))

    if completed:
        record(0)
    with progress_bar(n_steps, "NVE", progress) as bar:
        for step in range(1, n_steps + 1 if completed else 0):
            dyn.step()
            bar.update()
            if not _finite(work):
                completed = False
                break
            if step % log_interval == 0 or step == n_steps:
                record(step)
    t, etot, epot, temp = (np.array(c) for c in zip(*rows, strict=True)) if rows else (np.zeros(0),) * 4
    if len(t) >= 2:
        drift = float(np.polyfit(t, etot / n, 1)[0] * 1000.0)
        max_de = float(np.max(np.abs(etot - etot[0])) / n * 1000.0)
    else:
        drift = max_de = float("nan")
    return NVEResult(drift, max_de, t, etot, epot, temp, n, completed)


# --------------------------------------------------------------------------- h(r)


def _pair_counts(atoms: ase.Atoms, edges: np.ndarray) -> np.ndarray:
    dist = neighbor_list("d", atoms, float(edges[-1]))
    return np.histogram(dist, bins=edges)[0].astype(float)


def pair_distance_histogram(
    frames: Sequence[StructureLike] | ase.Atoms, r_max: float = 6.0, bins: int = 120
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised distribution h(r) of interatomic distances, averaged over ``frames``.

    All pairs i ≠ j closer than ``r_max`` Å (minimum image and periodic images for periodic cells)
    are binned; h is normalised so that ∫₀^r_max h(r) dr = 1 (units 1/Å).

    Returns:
        (bins,) bin centres in Å and (bins,) h(r) in 1/Å.
    """
    frames = [as_atoms(frames)] if isinstance(frames, ase.Atoms) else [as_atoms(f) for f in frames]
    edges = np.linspace(0.0, r_max, bins + 1)
    counts = sum((_pair_counts(f, edges) for f in frames), np.zeros(bins))
    return 0.5 * (edges[1:] + edges[:-1]), _normalise(counts, edges)


def _normalise(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    total = counts.sum() * (edges[1] - edges[0])
    return counts / total if total > 0 else counts


def hr_error(h: np.ndarray, h_reference: np.ndarray, r: np.ndarray) -> float:
    """h(r) error of Fu et al. (2022): ∫ |h(r) − h_ref(r)| dr over the bins (dimensionless, 0…2).

    ``h`` and ``h_reference`` are normalised histograms on the same uniform bins with centres ``r``.
    """
    return float(np.sum(np.abs(h - h_reference)) * (r[1] - r[0]))


# --------------------------------------------------------------------------- NVT


@dataclass
class NVTResult:
    """Outcome of a Langevin stability run.

    Attributes:
        stable: True when the run reached ``duration_ps`` without any failure.
        stable_time_ps: time of the last check that passed (the full duration when stable), ps.
        reason: one of ``REASONS``: "completed", "bond_deviation", "overlap", "temperature", "nan",
            "calculator_error"; ``message`` says which atoms/values triggered it.
        time_ps, potential_energy (eV), temperature_K, max_bond_deviation (Å): traces at the checks.
        energy_std (eV) and max_forces_std (eV/Å, max over atoms): committee disagreement per
            check when the calculator's results hold ``energy_std``/``forces_std``, else None.
        hr_r, hr, hr_reference, hr_error: h(r) of the run and of the reference trajectory and
            their error (see :func:`hr_error`) when a reference trajectory was given, else None.
        n_bonds: number of reference bonds watched.
    """

    stable: bool
    stable_time_ps: float
    reason: str
    message: str
    time_ps: np.ndarray
    potential_energy: np.ndarray
    temperature_K: np.ndarray
    max_bond_deviation: np.ndarray
    n_bonds: int
    energy_std: np.ndarray | None = None
    max_forces_std: np.ndarray | None = None
    hr_r: np.ndarray | None = None
    hr: np.ndarray | None = None
    hr_reference: np.ndarray | None = None
    hr_error: float | None = None


def _reference_bonds(atoms: ase.Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bonded pairs (i < j) from ``natural_cutoffs`` and their reference lengths (Å)."""
    i, j, vec = neighbor_list("ijD", atoms, natural_cutoffs(atoms))
    self_image = bool(np.any(i == j))
    keep = i < j
    i, j, vec = i[keep], j[keep], vec[keep]
    length = np.linalg.norm(vec, axis=1)
    mic = _bond_lengths(atoms, i, j)
    if self_image or (len(i) and np.max(np.abs(mic - length)) > 1e-6):
        raise InvalidStructureError(
            f"{atoms.get_chemical_formula()}: a bond is longer than half the cell, so minimum-image "
            "bond lengths are ambiguous; run the stability check on a larger supercell"
        )
    return i, j, length


def max_bond_deviation(atoms: StructureLike, reference: StructureLike) -> float:
    """Largest |d_ij − d_ij(reference)| in Å over the bonds of ``reference`` (pairs within
    ``natural_cutoffs``, minimum image), the quantity :func:`nvt_stability` watches; ``atoms`` must
    hold the same atoms in the same order."""
    atoms, reference = as_atoms(atoms), as_atoms(reference)
    if len(atoms) != len(reference):
        raise ConfigError(f"bond deviation needs the same atoms: {len(atoms)} vs {len(reference)}")
    i, j, ref = _reference_bonds(reference)
    return float(np.max(np.abs(_bond_lengths(atoms, i, j) - ref))) if len(i) else 0.0


def _bond_lengths(
    atoms: ase.Atoms, i: np.ndarray, j: np.ndarray, positions: np.ndarray | None = None
) -> np.ndarray:
    """Minimum-image lengths (Å) of the pairs (i, j) at ``positions`` (default: the atoms')."""
    pos = atoms.positions if positions is None else positions
    vec = pos[j] - pos[i]
    if atoms.pbc.any():
        vec = find_mic(vec, atoms.cell, atoms.pbc)[0]
    return np.linalg.norm(vec, axis=1)


def _failure(
    work: ase.Atoms, bonds: tuple, limits: tuple[float | None, float, float], bond_positions: np.ndarray
) -> tuple[str | None, str, float]:
    """Check a frame: (reason or None, message, max bond deviation in Å at ``bond_positions``)."""
    max_dev, min_dist, max_temp = limits
    i, j, ref = bonds
    dev = np.abs(_bond_lengths(work, i, j, bond_positions) - ref) if len(i) else np.zeros(1)
    worst = float(dev.max())
    if max_dev is not None and worst > max_dev:
        k = int(np.argmax(dev))
        return "bond_deviation", f"bond {i[k]}-{j[k]} deviates {worst:.3f} Å (> {max_dev} Å)", worst
    ii, jj, d = neighbor_list("ijd", work, min_dist)
    if len(d):
        k = int(np.argmin(d))
        return "overlap", f"atoms {ii[k]} and {jj[k]} are {d[k]:.3f} Å apart (< {min_dist} Å)", worst
    temp = work.get_temperature()
    if temp > max_temp:
        return "temperature", f"temperature {temp:.0f} K exceeds {max_temp:.0f} K", worst
    return None, "", worst


def _committee(results: dict) -> tuple[float | None, float | None]:
    e_std = results.get("energy_std")
    f_std = results.get("forces_std")
    return (
        None if e_std is None else float(np.max(e_std)),
        None if f_std is None else float(np.max(f_std)),
    )


def nvt_stability(
    atoms: StructureLike,
    calc: Calculator,
    temperature_K: float,
    timestep_fs: float = 1.0,
    duration_ps: float = 1.0,
    friction: float = 0.01,
    max_bond_deviation: float | None = 0.5,
    bond_average_fs: float = 0.0,
    min_distance: float = 0.5,
    max_temperature_factor: float = 5.0,
    check_interval: int = 10,
    reference_trajectory: Sequence[StructureLike] | None = None,
    hr_r_max: float = 6.0,
    hr_bins: int = 120,
    seed: int = 0,
    progress: bool | None = None,
) -> NVTResult:
    """Langevin MD at ``temperature_K`` that stops at the first sign of instability.

    Every ``check_interval`` steps the run fails when any bond of the input structure (pairs within
    ``ase.neighborlist.natural_cutoffs``, minimum-image lengths for periodic cells) deviates by more
    than ``max_bond_deviation`` Å from its reference length (Fu et al. 2022, "Forces are not
    enough"; None disables it), when two atoms come closer than ``min_distance`` Å, or when the
    temperature exceeds ``max_temperature_factor × temperature_K``. NaN/inf energies, forces or
    positions are checked every step, and a calculator raising a ``PimlipError`` or
    ``CalculationFailed`` ends the run as "calculator_error".

    With ``reference_trajectory`` (e.g. ab initio MD frames of the same system) the h(r) of the run
    (frames at the checks up to the failure) is compared with the reference's: the error is
    ∫ |h(r) − h_ref(r)| dr of histograms normalised to ∫ h dr = 1 on [0, ``hr_r_max``] Å
    (see :func:`hr_error`). ``friction`` is in 1/fs.

    ``bond_average_fs`` > 0 applies the bond criterion to positions averaged over the last
    ``bond_average_fs`` fs (every step) instead of the instantaneous ones. Molecules want 0 (the
    published criterion). A hot crystal needs it: thermal vibration alone stretches some bond of a
    32-atom fcc Cu cell by > 0.5 Å within a few ps at 600 K (EMT itself fails the instantaneous
    test), while averaging over about one period of the slowest phonon (~300 fs) removes the
    vibration and keeps what the criterion is for — atoms leaving their sites, melting, collapse.
    """
    if check_interval < 1 or max_temperature_factor <= 1.0:
        raise ConfigError("check_interval must be ≥ 1 and max_temperature_factor > 1")
    work, n_steps, rng = _start(atoms, calc, temperature_K, timestep_fs, duration_ps, seed)
    bonds = _reference_bonds(work)
    if bond_average_fs < 0.0:
        raise ConfigError(f"bond_average_fs must be ≥ 0 fs, got {bond_average_fs}")
    window: deque[np.ndarray] = deque(maxlen=max(1, int(round(bond_average_fs / timestep_fs))))
    dyn = make_langevin(work, timestep_fs, temperature_K, friction, rng)
    limits = (max_bond_deviation, min_distance, max_temperature_factor * max(temperature_K, 1.0))
    edges = np.linspace(0.0, hr_r_max, hr_bins + 1)
    counts = np.zeros(hr_bins)
    rows: list[tuple[float, ...]] = []
    reason, message, last_ok = "completed", f"ran {duration_ps} ps", 0.0
    with progress_bar(n_steps, "NVT stability", progress) as bar:
        for step in range(0, n_steps + 1):
            try:
                if step:
                    dyn.step()
                    bar.update()
                ok = _finite(work)
            except (PimlipError, CalculationFailed) as exc:
                reason, message = "calculator_error", f"step {step}: {exc}"
                break
            if not ok:
                reason, message = "nan", f"NaN/inf energy, forces or positions at step {step}"
                break
            window.append(work.positions.copy())
            if step % check_interval and step != n_steps:
                continue
            fail, msg, dev = _failure(work, bonds, limits, np.mean(window, axis=0))
            t_ps = step * timestep_fs / 1000.0
            e_std, f_std = _committee(work.calc.results)
            rows.append((t_ps, work.get_potential_energy(), work.get_temperature(), dev, e_std, f_std))
            if fail is not None:
                reason, message = fail, f"t = {t_ps:.4f} ps: {msg}"
                break
            last_ok = t_ps
            if reference_trajectory is not None:
                counts += _pair_counts(work, edges)
    result = _nvt_result(reason, message, last_ok, rows, len(bonds[0]))
    if reference_trajectory is not None:
        r, h_ref = pair_distance_histogram(reference_trajectory, hr_r_max, hr_bins)
        result.hr_r, result.hr, result.hr_reference = r, _normalise(counts, edges), h_ref
        result.hr_error = hr_error(result.hr, h_ref, r) if counts.sum() > 0 else None
    return result


def _nvt_result(reason: str, message: str, last_ok: float, rows: list, n_bonds: int) -> NVTResult:
    cols = list(zip(*rows, strict=True)) if rows else [()] * 6
    t, epot, temp, dev = (np.asarray(c, dtype=float) for c in cols[:4])
    e_std = None if not rows or rows[0][4] is None else np.asarray(cols[4], dtype=float)
    f_std = None if not rows or rows[0][5] is None else np.asarray(cols[5], dtype=float)
    return NVTResult(
        stable=reason == "completed",
        stable_time_ps=last_ok,
        reason=reason,
        message=message,
        time_ps=t,
        potential_energy=epot,
        temperature_K=temp,
        max_bond_deviation=dev,
        n_bonds=n_bonds,
        energy_std=e_std,
        max_forces_std=f_std,
    )
