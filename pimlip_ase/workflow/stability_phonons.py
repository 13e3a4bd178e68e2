"""Harmonic phonons with phonopy from any ASE calculator, and the checks run on them.

Force constants come from finite displacements (phonopy, ``displacement`` Å, forces of the perfect
supercell subtracted) and are symmetrised (translational invariance and index permutation). The
band structure runs along a standard path — seekpath's when it is installed, otherwise ASE's
``Cell.bandpath`` (Setyawan–Curtarolo) — and the DOS on a q-point mesh. Frequencies are in THz
(imaginary ones negative), force constants in eV/Å², reciprocal distances in 1/Å without 2π.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import ase
import numpy as np
from ase.calculators.calculator import Calculator
from ase.dft.kpoints import parse_path_string
from phonopy import Phonopy
from phonopy.structure.atoms import PhonopyAtoms
from tqdm.auto import tqdm

from ..errors import ConfigError, InvalidStructureError
from .generate import StructureLike, as_atoms

__all__ = ["PhononResult", "phonons"]


@dataclass
class PhononResult:
    """Phonons of one structure and calculator, with the numbers the checks need.

    Attributes:
        min_frequency_THz: lowest frequency on the mesh and the band path (negative = imaginary).
        has_imaginary: ``min_frequency_THz < −imaginary_tol_THz``.
        gamma_acoustic_THz: (3,) the three frequencies at Γ closest to zero, from the force
            constants used (symmetrised unless ``symmetrize=False``).
        gamma_acoustic_raw_THz: (3,) the same before symmetrisation: the calculator's own
            translational invariance; ``asr_satisfied`` is ``max |·| ≤ asr_tol_THz`` on these.
        mesh: (3,) q-point mesh; mesh_frequencies_THz (nq, nbands) on its irreducible points with
            mesh_weights (nq,).
        band_qpoints: (nk, 3) reduced coordinates of the primitive reciprocal lattice;
            band_distances (nk,) in 1/Å; band_frequencies_THz (nk, nbands); band_segments: list of
            (start, stop) index ranges of the straight segments; band_ticks: (distance, label) of the
            special points ("G" is Γ, "A|B" a jump in the path); band_path_source: "seekpath",
            "ase" or "user".
        dos_frequencies_THz, dos: total DOS (states/THz per primitive cell).
        force_constants: (Ns, Ns, 3, 3) eV/Å² for the Ns supercell atoms.
        primitive: the primitive cell phonopy used (ase.Atoms).
        mae_THz, band_mae_THz: mean |ν − ν_ref| over the mesh (weighted, all bands) and over the band
            path when ``reference_calc`` was given, else None; reference_* hold its arrays.
    """

    min_frequency_THz: float
    has_imaginary: bool
    imaginary_tol_THz: float
    gamma_acoustic_THz: np.ndarray
    gamma_acoustic_raw_THz: np.ndarray
    asr_satisfied: bool
    mesh: np.ndarray
    mesh_frequencies_THz: np.ndarray
    mesh_weights: np.ndarray
    band_qpoints: np.ndarray
    band_distances: np.ndarray
    band_frequencies_THz: np.ndarray
    band_segments: list[tuple[int, int]]
    band_ticks: list[tuple[float, str]]
    band_path_source: str
    dos_frequencies_THz: np.ndarray
    dos: np.ndarray
    force_constants: np.ndarray
    primitive: ase.Atoms
    mae_THz: float | None = None
    band_mae_THz: float | None = None
    reference_mesh_frequencies_THz: np.ndarray | None = None
    reference_band_frequencies_THz: np.ndarray | None = None
    reference_dos: np.ndarray | None = None


# --------------------------------------------------------------------------- conversions


def _to_phonopy(atoms: ase.Atoms) -> PhonopyAtoms:
    return PhonopyAtoms(
        symbols=atoms.get_chemical_symbols(),
        cell=atoms.cell.array,
        scaled_positions=atoms.get_scaled_positions(),
        masses=atoms.get_masses(),
    )


def _to_ase(cell: PhonopyAtoms) -> ase.Atoms:
    return ase.Atoms(
        symbols=list(cell.symbols),
        cell=cell.cell,
        scaled_positions=cell.scaled_positions,
        masses=cell.masses,
        pbc=True,
    )


def _supercell_matrix(matrix: int | Sequence[int] | Sequence[Sequence[int]]) -> np.ndarray:
    arr = np.asarray(matrix, dtype=int)
    if arr.ndim == 0:
        return np.eye(3, dtype=int) * int(arr)
    if arr.shape == (3,):
        return np.diag(arr)
    if arr.shape == (3, 3):
        return arr
    raise ConfigError(f"supercell_matrix must be an int, 3 ints or a 3x3 matrix, got {matrix!r}")


# --------------------------------------------------------------------------- force constants


def _forces(cell: PhonopyAtoms, calc: Calculator) -> np.ndarray:
    atoms = _to_ase(cell)
    atoms.calc = calc
    forces = np.array(atoms.get_forces(), dtype=float)
    if not np.all(np.isfinite(forces)):
        raise InvalidStructureError(
            f"the calculator returned NaN/inf forces for a phonopy supercell of "
            f"{atoms.get_chemical_formula()}; check the calculator on this structure"
        )
    return forces


def _gamma_acoustic(ph: Phonopy) -> np.ndarray:
    freqs = _frequencies_at(ph, np.zeros((1, 3)))[0]
    return freqs[np.argsort(np.abs(freqs))[:3]]


def _run_phonopy(
    atoms: ase.Atoms,
    calc: Calculator,
    supercell_matrix: np.ndarray,
    displacement: float,
    primitive_matrix: str | np.ndarray | None,
    symmetrize: bool,
    progress: bool | None,
) -> tuple[Phonopy, np.ndarray]:
    """Phonopy object with force constants from ``calc``; also returns raw Γ acoustic frequencies."""
    with warnings.catch_warnings():  # an explicit "auto" is the caller's choice, not a default
        warnings.filterwarnings("ignore", message="primitive_matrix defaulted")
        ph = Phonopy(_to_phonopy(atoms), supercell_matrix=supercell_matrix, primitive_matrix=primitive_matrix)
    ph.generate_displacements(distance=displacement)
    residual = _forces(ph.supercell, calc)
    cells = ph.supercells_with_displacements
    forces = []
    bar = tqdm(cells, desc="phonon displacements", disable=None if progress is None else not progress)
    for cell in bar:
        forces.append(_forces(cell, calc) - residual)
    ph.forces = np.array(forces)
    ph.produce_force_constants(show_drift=False)
    raw = _gamma_acoustic(ph)
    if symmetrize:
        ph.symmetrize_force_constants(show_drift=False)
    return ph, raw


# --------------------------------------------------------------------------- band path


def _special_path(prim: ase.Atoms, band_path: str) -> tuple[dict[str, np.ndarray], list[list[str]], str]:
    """Special points (reduced coordinates of ``prim``'s reciprocal lattice) and runs of labels."""
    if band_path == "auto":
        try:
            import seekpath

            get_path = seekpath.get_path_orig_cell
        except (ImportError, AttributeError):
            get_path = None
        if get_path is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = get_path((prim.cell.array, prim.get_scaled_positions(), prim.numbers))
            rename = {"GAMMA": "G"}
            points = {rename.get(k, k): np.asarray(v, dtype=float) for k, v in res["point_coords"].items()}
            runs: list[list[str]] = []
            for start, stop in res["path"]:
                start, stop = rename.get(start, start), rename.get(stop, stop)
                if runs and runs[-1][-1] == start:
                    runs[-1].append(stop)
                else:
                    runs.append([start, stop])
            return points, runs, "seekpath"
        path = prim.cell.bandpath(npoints=0)
        return dict(path.special_points), parse_path_string(path.path), "ase"
    try:
        path = prim.cell.bandpath(band_path, npoints=0)
    except (KeyError, ValueError) as exc:
        valid = "".join(prim.cell.bandpath(npoints=0).special_points)
        raise ConfigError(
            f"bad band path {band_path!r} for this cell ({exc}); special points: {valid}"
        ) from exc
    return dict(path.special_points), parse_path_string(band_path), "user"


def _band_qpoints(
    prim: ase.Atoms, points: dict[str, np.ndarray], runs: list[list[str]], npoints: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], list[tuple[float, str]]]:
    """Q-points along the path: (qpoints, distances, segments, ticks)."""
    recip = np.linalg.inv(prim.cell.array).T
    qs, dists, segments, ticks = [], [], [], []
    x = 0.0
    for r, run in enumerate(runs):
        if r and ticks:
            ticks[-1] = (ticks[-1][0], f"{ticks[-1][1]}|{run[0]}")
        else:
            ticks.append((x, run[0]))
        for a, b in pairwise(run):
            seg = np.linspace(points[a], points[b], npoints)
            step = np.linalg.norm(np.diff(seg, axis=0) @ recip, axis=1)
            start = sum(len(q) for q in qs)
            qs.append(seg)
            dists.append(x + np.concatenate([[0.0], np.cumsum(step)]))
            x = float(dists[-1][-1])
            segments.append((start, start + npoints))
            ticks.append((x, b))
    return np.concatenate(qs), np.concatenate(dists), segments, ticks


def _frequencies_at(ph: Phonopy, qpoints: np.ndarray) -> np.ndarray:
    ph.run_qpoints(qpoints)
    return np.asarray(ph.qpoints.frequencies)


def _mesh(ph: Phonopy, mesh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ph.run_mesh(mesh, is_gamma_center=True)
    return np.asarray(ph.mesh.frequencies), np.asarray(ph.mesh.weights, dtype=float)


def _dos(ph: Phonopy, fmin: float, fmax: float, n: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """Total DOS on ``n`` points between ``fmin`` and ``fmax`` THz (needs a mesh run first)."""
    pitch = (fmax - fmin) / (n - 1)
    ph.run_total_dos(freq_min=fmin, freq_max=fmax + 0.5 * pitch, freq_pitch=pitch)
    return np.asarray(ph.total_dos.frequency_points), np.asarray(ph.total_dos.dos)


# --------------------------------------------------------------------------- public


def phonons(
    atoms_primitive: StructureLike,
    calc: Calculator,
    supercell_matrix: int | Sequence[int] | Sequence[Sequence[int]],
    displacement: float = 0.01,
    mesh: Sequence[int] = (20, 20, 20),
    band_path: str = "auto",
    band_npoints: int = 51,
    reference_calc: Calculator | None = None,
    imaginary_tol_THz: float = 0.05,
    asr_tol_THz: float = 0.05,
    primitive_matrix: str | np.ndarray | None = None,
    symmetrize: bool = True,
    progress: bool | None = None,
) -> PhononResult:
    """Phonon band structure, DOS and checks for ``atoms_primitive`` with ``calc`` (phonopy).

    Args:
        atoms_primitive: the unit cell (3D periodic), ideally relaxed with ``calc``.
        supercell_matrix: supercell for the finite displacements (int, 3 ints or 3x3).
        displacement: finite displacement in Å.
        mesh: q-point mesh (Γ-centred) for the DOS, the imaginary-mode check and the MAE.
        band_path: "auto" (seekpath if installed, else ASE's path for the lattice) or a path string
            of ASE special-point labels such as "GXWKGLUWLK,UX".
        band_npoints: q-points per straight segment, end points included.
        reference_calc: a second calculator (e.g. the reference method) run identically; its
            frequencies give ``mae_THz`` and ``band_mae_THz``.
        imaginary_tol_THz: frequencies below −tol count as imaginary.
        asr_tol_THz: tolerance on the three raw acoustic frequencies at Γ.
        primitive_matrix: phonopy's primitive matrix relative to ``atoms_primitive`` (None: the
            input cell is the primitive cell; "auto": let phonopy find it).
        symmetrize: symmetrise the force constants (translational invariance, permutation).
    """
    atoms = as_atoms(atoms_primitive)
    if not atoms.pbc.all() or atoms.cell.rank != 3:
        raise InvalidStructureError(f"{atoms.get_chemical_formula()}: phonons need a 3D-periodic cell")
    smat, mesh = _supercell_matrix(supercell_matrix), np.asarray(mesh, dtype=int)
    args = (smat, displacement, primitive_matrix, symmetrize, progress)
    ph, raw = _run_phonopy(atoms, calc, *args)
    prim = _to_ase(ph.primitive)
    points, runs, source = _special_path(prim, band_path)
    qpoints, dists, segments, ticks = _band_qpoints(prim, points, runs, band_npoints)
    bands = _frequencies_at(ph, qpoints)
    mesh_f, weights = _mesh(ph, mesh)
    ref = None
    if reference_calc is not None:
        ref_ph, _ = _run_phonopy(atoms, reference_calc, *args)
        ref = (ref_ph, _frequencies_at(ref_ph, qpoints), _mesh(ref_ph, mesh)[0])
    every = [mesh_f, bands] + ([ref[1], ref[2]] if ref else [])
    fmin = min(0.0, min(float(f.min()) for f in every))
    fmax = max(float(f.max()) for f in every) * 1.05 + 0.1
    dos_f, dos = _dos(ph, fmin, fmax)
    min_f = float(min(mesh_f.min(), bands.min()))
    result = PhononResult(
        min_frequency_THz=min_f,
        has_imaginary=min_f < -imaginary_tol_THz,
        imaginary_tol_THz=imaginary_tol_THz,
        gamma_acoustic_THz=_gamma_acoustic(ph),
        gamma_acoustic_raw_THz=raw,
        asr_satisfied=bool(np.max(np.abs(raw)) <= asr_tol_THz),
        mesh=mesh,
        mesh_frequencies_THz=mesh_f,
        mesh_weights=weights,
        band_qpoints=qpoints,
        band_distances=dists,
        band_frequencies_THz=bands,
        band_segments=segments,
        band_ticks=ticks,
        band_path_source=source,
        dos_frequencies_THz=dos_f,
        dos=dos,
        force_constants=np.asarray(ph.force_constants),
        primitive=prim,
    )
    if ref is not None:
        _compare(result, *ref, fmin, fmax)
    return result


def _compare(
    result: PhononResult,
    ref_ph: Phonopy,
    ref_bands: np.ndarray,
    ref_mesh: np.ndarray,
    fmin: float,
    fmax: float,
) -> None:
    """Fill the reference arrays and the frequency MAEs (mesh weighted over all bands; band path)."""
    weights = result.mesh_weights
    diff = np.abs(result.mesh_frequencies_THz - ref_mesh)
    result.mae_THz = float(np.sum(weights[:, None] * diff) / (weights.sum() * diff.shape[1]))
    result.band_mae_THz = float(np.mean(np.abs(result.band_frequencies_THz - ref_bands)))
    result.reference_mesh_frequencies_THz, result.reference_band_frequencies_THz = ref_mesh, ref_bands
    result.reference_dos = _dos(ref_ph, fmin, fmax)[1]
