"""The checks a recipe runs on its final potential, with pass/fail verdicts.

Each check is a small settings dataclass (the keys a recipe's ``checks`` section accepts) and a
function built on :mod:`.stability` and :mod:`.generate`:

* ``relax``: positions (and the cell, for 3D-periodic structures) with the potential; the relaxed
  structure is what the other checks start from. With the reference, its relaxation too, to compare
  lattice constants. Passes when the relaxation converged.
* ``phonons`` (3D-periodic): phonopy on the primitive cell of the relaxed structure, the reference
  run on the same cell; passes with no imaginary mode and a mesh frequency MAE ≤ ``max_mae_THz``.
* ``vibrations`` (molecules): harmonic frequencies at the potential's minimum vs the reference's at
  its own minimum (sorted modes); passes with no imaginary mode and MAE ≤ ``max_mae_THz``.
* ``nvt``: Langevin MD with the bond-deviation criterion of :func:`.stability.nvt_stability`;
  passes when the run lasts ``duration_ps``.
* ``nve``: velocity-Verlet energy drift; passes when |drift| ≤ ``max_drift_meV_atom_ps``.

:func:`run_checks` writes ``checks.json`` (numbers and verdicts) and ``checks.npz`` (traces, bands).
:func:`committee_predictions` and :func:`parity_metrics` score a committee on labelled structures
(the held-out test set of a run).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ase
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError

from ..calculator import PIMLIPCalculator
from ..errors import ConfigError
from ..keys import ENERGY, FORCES
from ..modelfile import to_plain
from .generate import as_atoms, harmonic_modes
from .stability import lattice_constant, nve_drift, nvt_stability, phonons, relax

__all__ = [
    "CHECKS",
    "CheckOutcome",
    "NVECheck",
    "NVTCheck",
    "PhononCheck",
    "RelaxCheck",
    "VibrationCheck",
    "check_nve",
    "check_nvt",
    "check_phonons",
    "check_relax",
    "check_vibrations",
    "committee_predictions",
    "load_checks",
    "parity_metrics",
    "primitive_cell",
    "run_checks",
    "verdict",
]


@dataclasses.dataclass
class RelaxCheck:
    fmax: float = 0.01  # eV/Å
    steps: int = 500
    optimizer: str = "BFGS"
    reference: bool = True


@dataclasses.dataclass
class PhononCheck:
    supercell: list[int] = dataclasses.field(default_factory=lambda: [3, 3, 3])  # of the primitive cell
    mesh: list[int] = dataclasses.field(default_factory=lambda: [10, 10, 10])
    displacement: float = 0.01  # Å
    reference: bool = True
    max_mae_THz: float = 0.3
    imaginary_tol_THz: float = 0.05


@dataclasses.dataclass
class VibrationCheck:
    fmax: float = 0.001  # eV/Å: each method's own minimum is found to this force first
    delta: float = 0.01  # Å
    reference: bool = True
    max_mae_THz: float = 1.0
    imaginary_tol_THz: float = 0.1


@dataclasses.dataclass
class NVTCheck:
    temperature_K: float = 300.0
    duration_ps: float = 1.0
    timestep_fs: float = 1.0
    friction: float = 0.01  # 1/fs
    max_bond_deviation: float = 0.5  # Å
    bond_average_fs: float = 0.0  # fs: bond criterion on positions averaged over this window
    seed: int = 0


@dataclasses.dataclass
class NVECheck:
    temperature_K: float = 300.0
    duration_ps: float = 1.0
    timestep_fs: float = 1.0
    max_drift_meV_atom_ps: float = 1.0
    seed: int = 0


CHECKS = {
    "relax": RelaxCheck,
    "phonons": PhononCheck,
    "vibrations": VibrationCheck,
    "nvt": NVTCheck,
    "nve": NVECheck,
}


def load_checks(section: dict[str, Any] | None) -> dict[str, Any]:
    """Validated check settings from a recipe's ``checks`` mapping (``{name: {key: value}}``)."""
    out = {}
    for name, values in (section or {}).items():
        if name not in CHECKS:
            raise ConfigError(f"unknown check {name!r}; valid checks: {sorted(CHECKS)}")
        fields = sorted(f.name for f in dataclasses.fields(CHECKS[name]))
        values = {} if values in (None, True) else values
        if not isinstance(values, dict):
            raise ConfigError(f"checks.{name} must be a mapping of settings (valid keys: {fields})")
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in checks.{name}; valid keys: {fields}")
        out[name] = CHECKS[name](**values)
    return out


@dataclasses.dataclass
class CheckOutcome:
    """name; passed (None when the check has no pass/fail); summary (one line); values (numbers)."""

    name: str
    passed: bool | None
    summary: str
    values: dict[str, Any]


def primitive_cell(atoms: ase.Atoms, symprec: float = 1e-3) -> ase.Atoms:
    """The primitive cell of a 3D-periodic structure (spglib), e.g. 1 atom for a fcc Cu supercell."""
    import spglib

    cell = (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers)
    found = spglib.find_primitive(cell, symprec=symprec)
    if found is None:
        return as_atoms(atoms)
    lattice, positions, numbers = found
    return ase.Atoms(numbers=numbers, cell=lattice, scaled_positions=positions, pbc=True)


def _periodic(atoms: ase.Atoms) -> bool:
    return bool(atoms.pbc.all() and atoms.cell.rank == 3)


def check_relax(cfg: RelaxCheck, atoms, calc, ref) -> tuple[CheckOutcome, ase.Atoms]:
    """Relax with the potential (and the reference, to compare the conventional lattice constant a)."""
    cell = _periodic(atoms)
    res = relax(atoms, calc, fmax=cfg.fmax, cell=cell, optimizer=cfg.optimizer, steps=cfg.steps)
    a_model = lattice_constant(primitive_cell(res.atoms)) if cell else None
    values: dict[str, Any] = {
        "energy_eV": res.energy,
        "max_force_eV_A": res.max_force,
        "converged": res.converged,
        "steps": res.n_steps,
        "lattice_constant_A": a_model,
    }
    summary = f"{'converged' if res.converged else 'NOT converged'} in {res.n_steps} steps"
    if ref is not None and cfg.reference:
        try:
            ref_res = relax(atoms, ref, fmax=cfg.fmax, cell=cell, optimizer=cfg.optimizer, steps=cfg.steps)
        except PropertyNotImplementedError as err:
            summary += f"; no reference relaxation ({err})"
        else:
            a_ref = lattice_constant(primitive_cell(ref_res.atoms)) if cell else None
            values["reference_lattice_constant_A"] = a_ref
            if a_model and a_ref:
                values["lattice_error_pct"] = err_pct = 100.0 * (a_model / a_ref - 1.0)
                summary += f"; a = {a_model:.4f} Å vs reference {a_ref:.4f} Å ({err_pct:+.2f} %)"
    return CheckOutcome("relax", res.converged, summary, values), res.atoms


def check_phonons(cfg: PhononCheck, atoms, calc, ref) -> tuple[CheckOutcome, dict[str, np.ndarray]]:
    """Phonons of the primitive cell of ``atoms`` with ``calc`` (and ``ref`` on the same cell)."""
    if not _periodic(atoms):
        raise ConfigError("checks.phonons needs a 3D-periodic structure; use checks.vibrations for molecules")
    prim = primitive_cell(atoms)
    res = phonons(
        prim,
        calc,
        cfg.supercell,
        displacement=cfg.displacement,
        mesh=cfg.mesh,
        reference_calc=ref if cfg.reference else None,
        imaginary_tol_THz=cfg.imaginary_tol_THz,
    )
    values = {
        "mae_THz": res.mae_THz,
        "band_mae_THz": res.band_mae_THz,
        "min_frequency_THz": res.min_frequency_THz,
        "has_imaginary": res.has_imaginary,
        "asr_satisfied": res.asr_satisfied,
        "max_frequency_THz": float(res.band_frequencies_THz.max()),
        "n_primitive_atoms": len(prim),
    }
    passed = not res.has_imaginary and (res.mae_THz is None or res.mae_THz <= cfg.max_mae_THz)
    imaginary = "imaginary modes" if res.has_imaginary else "no imaginary mode"
    summary = f"min frequency {res.min_frequency_THz:.3f} THz ({imaginary})"
    if res.mae_THz is not None:
        summary += (
            f"; MAE vs reference {res.mae_THz:.3f} THz on a {'x'.join(map(str, cfg.mesh))} mesh "
            f"(limit {cfg.max_mae_THz})"
        )
    arrays = {
        "phonon_distances": res.band_distances,
        "phonon_bands": res.band_frequencies_THz,
        "phonon_segments": np.asarray(res.band_segments),
        "phonon_tick_x": np.array([t[0] for t in res.band_ticks]),
        "phonon_tick_labels": np.array([t[1] for t in res.band_ticks]),
        "phonon_dos_f": res.dos_frequencies_THz,
        "phonon_dos": res.dos,
    }
    if res.reference_band_frequencies_THz is not None:
        arrays.update(
            phonon_reference_bands=res.reference_band_frequencies_THz, phonon_reference_dos=res.reference_dos
        )
    return CheckOutcome("phonons", passed, summary, values), arrays


def check_vibrations(cfg: VibrationCheck, atoms, calc, ref) -> tuple[CheckOutcome, dict[str, np.ndarray]]:
    """Harmonic frequencies (THz) at the potential's minimum vs the reference's at its own minimum."""
    freqs = harmonic_modes(
        relax(atoms, calc, fmax=cfg.fmax, cell=False).atoms, calc, cfg.delta
    ).frequencies_THz
    n_imag = int(np.sum(freqs < -cfg.imaginary_tol_THz))
    values: dict[str, Any] = {
        "n_modes": len(freqs),
        "n_imaginary": n_imag,
        "min_frequency_THz": float(freqs.min()),
        "max_frequency_THz": float(freqs.max()),
    }
    arrays = {"vibration_frequencies": freqs}
    summary = f"{len(freqs)} modes, {n_imag} imaginary"
    passed = n_imag == 0
    if ref is not None and cfg.reference:
        try:
            ref_min = relax(atoms, ref, fmax=cfg.fmax, cell=False).atoms
            ref_freqs = harmonic_modes(ref_min, ref, cfg.delta).frequencies_THz
        except PropertyNotImplementedError as err:
            summary += f"; no reference frequencies ({err})"
        else:
            mae = float(np.mean(np.abs(np.sort(freqs) - np.sort(ref_freqs))))
            values["mae_THz"] = mae
            arrays["vibration_reference_frequencies"] = ref_freqs
            summary += f"; MAE vs reference {mae:.3f} THz (limit {cfg.max_mae_THz})"
            passed = passed and mae <= cfg.max_mae_THz
    return CheckOutcome("vibrations", passed, summary, values), arrays


def check_nvt(cfg: NVTCheck, atoms, calc) -> tuple[CheckOutcome, dict[str, np.ndarray]]:
    """Langevin stability run (bond criterion, overlaps, temperature, NaN); traces in the arrays."""
    res = nvt_stability(atoms, calc, **dataclasses.asdict(cfg))
    values = {
        "stable": res.stable,
        "stable_time_ps": res.stable_time_ps,
        "duration_ps": cfg.duration_ps,
        "temperature_K": cfg.temperature_K,
        "reason": res.reason,
        "message": res.message,
        "bond_average_fs": cfg.bond_average_fs,
        "mean_temperature_K": float(np.mean(res.temperature_K)) if len(res.temperature_K) else None,
        "n_atoms": len(atoms),
    }
    word = "stable" if res.stable else f"UNSTABLE ({res.reason}: {res.message})"
    criterion = f"bonds within {cfg.max_bond_deviation} Å" + (
        f" on {cfg.bond_average_fs:.0f} fs averages" if cfg.bond_average_fs else ""
    )
    summary = (
        f"{cfg.duration_ps} ps at {cfg.temperature_K:.0f} K ({criterion}): {word}; "
        f"stable for {res.stable_time_ps:.2f} ps"
    )
    arrays = {
        **_md_traces("nvt", res, len(atoms), cfg.temperature_K),
        "nvt_bond_deviation": res.max_bond_deviation,
    }
    if res.max_forces_std is not None:
        arrays["nvt_forces_std"] = res.max_forces_std
    return CheckOutcome("nvt", res.stable, summary, values), arrays


def check_nve(cfg: NVECheck, atoms, calc) -> tuple[CheckOutcome, dict[str, np.ndarray]]:
    """Velocity-Verlet energy drift (meV/atom/ps); traces in the arrays."""
    run = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "max_drift_meV_atom_ps"}
    res = nve_drift(atoms, calc, **run)
    passed = res.completed and abs(res.drift_meV_atom_ps) <= cfg.max_drift_meV_atom_ps
    values = {
        "drift_meV_atom_ps": res.drift_meV_atom_ps,
        "max_abs_dE_meV_atom": res.max_abs_dE_meV_atom,
        "completed": res.completed,
        "duration_ps": cfg.duration_ps,
    }
    summary = (
        f"drift {res.drift_meV_atom_ps:+.3f} meV/atom/ps over {cfg.duration_ps} ps "
        f"(limit {cfg.max_drift_meV_atom_ps}){'' if res.completed else ', stopped at NaN'}"
    )
    arrays = {**_md_traces("nve", res, len(atoms), cfg.temperature_K), "nve_etot": res.total_energy}
    return CheckOutcome("nve", passed, summary, values), arrays


def _md_traces(prefix: str, res, n_atoms: int, target_K: float) -> dict[str, np.ndarray]:
    """The traces an NVT or NVE result shares, under ``prefix``_ names (what the report plots)."""
    return {
        f"{prefix}_time": res.time_ps,
        f"{prefix}_epot": res.potential_energy,
        f"{prefix}_temperature": res.temperature_K,
        f"{prefix}_n_atoms": np.array(n_atoms),
        f"{prefix}_target_K": np.array(target_K),
    }


def committee_predictions(
    models: Sequence[str | Path], structures: Sequence[ase.Atoms]
) -> dict[str, np.ndarray]:
    """Committee-mean predictions and reference labels on labelled structures (parity data).

    Returns energy_ref/energy_pred (S,) eV/atom, forces_ref/forces_pred (3·N_F,) eV/Å components of
    the structures with force labels, and forces_std (N_F,) eV/Å per atom.
    """
    calc = PIMLIPCalculator(list(models))
    e_ref, e_pred, f_ref, f_pred, f_std = [], [], [], [], []
    for atoms in structures:
        work = atoms.copy()
        work.calc = calc
        e_pred.append(work.get_potential_energy() / len(work))
        e_ref.append(atoms.info[ENERGY] / len(atoms))
        if FORCES in atoms.arrays:
            f_pred.append(work.get_forces().ravel())
            f_ref.append(atoms.arrays[FORCES].ravel())
            f_std.append(calc.results.get("forces_std", np.zeros(len(work))))

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0)

    return {
        "energy_ref": np.asarray(e_ref),
        "energy_pred": np.asarray(e_pred),
        "forces_ref": cat(f_ref),
        "forces_pred": cat(f_pred),
        "forces_std": cat(f_std),
    }


def parity_metrics(pred: dict[str, np.ndarray]) -> dict[str, float]:
    """MAE/RMSE of energy per atom (eV/atom) and force components (eV/Å) from
    :func:`committee_predictions`."""
    out = {}
    for name, ref, got in (
        ("energy_per_atom", "energy_ref", "energy_pred"),
        ("forces", "forces_ref", "forces_pred"),
    ):
        err = pred[got] - pred[ref]
        out[f"{name}_mae"] = float(np.mean(np.abs(err))) if err.size else math.nan
        out[f"{name}_rmse"] = float(np.sqrt(np.mean(err**2))) if err.size else math.nan
    return out


def run_checks(
    checks: dict[str, Any],
    calc: Calculator,
    structure: ase.Atoms,
    reference: Calculator | None,
    output: str | Path,
) -> list[CheckOutcome]:
    """Run the configured checks (in the order relax, phonons, vibrations, nvt, nve) with ``calc``.

    ``reference`` is the reference calculator (or None). Writes ``output/checks.json`` and
    ``output/checks.npz``; returns the outcomes.
    """
    atoms, outcomes, arrays = as_atoms(structure), [], {}
    if "relax" in checks:
        outcome, atoms = check_relax(checks["relax"], atoms, calc, reference)
        outcomes.append(outcome)
    for name, fn in (("phonons", check_phonons), ("vibrations", check_vibrations)):
        if name in checks:
            outcome, more = fn(checks[name], atoms, calc, reference)
            outcomes.append(outcome)
            arrays.update(more)
    for name, fn in (("nvt", check_nvt), ("nve", check_nve)):
        if name in checks:
            outcome, more = fn(checks[name], atoms, calc)
            outcomes.append(outcome)
            arrays.update(more)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "checks.npz", **arrays)
    summary = {"verdict": verdict(outcomes), "checks": [dataclasses.asdict(o) for o in outcomes]}
    (out / "checks.json").write_text(json.dumps(to_plain(summary), indent=2))
    return outcomes


def verdict(outcomes: list[CheckOutcome]) -> str:
    """ "PASS" when every check with a verdict passed, else "FAIL: " and the failed checks' names
    ("NO CHECKS" when none ran)."""
    if not outcomes:
        return "NO CHECKS"
    failed = [o.name for o in outcomes if o.passed is False]
    return "PASS" if not failed else "FAIL: " + ", ".join(failed)
