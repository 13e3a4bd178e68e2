"""Choosing which candidate structures to label: committee disagreement, a radial fingerprint and
farthest-point sampling.

Disagreement of a committee on one structure (from :class:`pimlip_ase.PIMLIPCalculator` with a list
of models): ``force_std`` = max over atoms of ‖σ_F,i‖ (eV/Å, σ_F,i the per-component standard
deviation of atom i's force across members) and ``energy_std`` = σ_E / N (eV/atom).

The fingerprint is deliberately simple: a Gaussian-smeared histogram of pair distances per
element pair, divided by the number of atoms (see :func:`radial_fingerprint`). It is invariant to
translations, rotations and permutations, and smooth in the positions, so Euclidean distances
between fingerprints say how different two structures' local environments are on average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations_with_replacement

import ase
import numpy as np
from ase.data import atomic_numbers, covalent_radii
from ase.neighborlist import neighbor_list

from ..errors import ConfigError
from ..keys import ENERGY

__all__ = [
    "Disagreement",
    "above_energy_window",
    "Selection",
    "committee_disagreement",
    "farthest_point_sampling",
    "radial_fingerprint",
    "select_by_disagreement",
    "too_close",
]


@dataclass
class Disagreement:
    """Committee spread on each of S structures: force_std (S,) eV/Å, energy_std (S,) eV/atom;
    energy (S,) the committee-mean energy per atom, eV/atom (None when not computed)."""

    force_std: np.ndarray
    energy_std: np.ndarray
    energy: np.ndarray | None = None


def committee_disagreement(structures: Sequence[ase.Atoms], calc) -> Disagreement:
    """Evaluate a committee calculator (``results["forces_std"]``, ``["energy_std"]``) on each structure."""
    f_std, e_std, energy = [], [], []
    for atoms in structures:
        work = atoms.copy()
        work.calc = calc
        energy.append(work.get_potential_energy() / len(work))
        if "forces_std" not in calc.results:
            raise ConfigError("committee disagreement needs a calculator with two or more models")
        f_std.append(float(np.max(calc.results["forces_std"])))
        e_std.append(float(calc.results["energy_std"]) / len(work))
    return Disagreement(np.asarray(f_std), np.asarray(e_std), np.asarray(energy))


def above_energy_window(
    structures: Sequence[ase.Atoms], energy: np.ndarray, labelled: Sequence[ase.Atoms], window: float
) -> np.ndarray:
    """(S,) True where a structure's predicted ``energy`` (eV/atom) lies more than ``window`` eV/atom
    above the lowest reference energy per atom (``info["REF_energy"]``) of the labelled structures
    with the same chemical formula; structures of a formula never labelled are never flagged."""
    lowest: dict[str, float] = {}
    for atoms in labelled:
        formula, e = atoms.get_chemical_formula(), atoms.info[ENERGY] / len(atoms)
        lowest[formula] = min(e, lowest.get(formula, math.inf))
    floor = np.array([lowest.get(a.get_chemical_formula(), math.inf) for a in structures])
    return np.asarray(energy) > floor + window


def too_close(atoms: ase.Atoms, factor: float) -> bool:
    """True when two atoms are closer than ``factor`` × the sum of their covalent radii (Å)."""
    if len(atoms) < 2 or factor <= 0.0:
        return False
    radii = covalent_radii[atoms.numbers]
    i, j, d = neighbor_list("ijd", atoms, float(2.0 * factor * radii.max()))
    return bool(np.any(d < factor * (radii[i] + radii[j])))


def radial_fingerprint(
    atoms: ase.Atoms, species: Sequence[str], r_max: float = 5.0, n_bins: int = 32, width: float = 0.1
) -> np.ndarray:
    """Pair-distance fingerprint of one structure, shape (P · n_bins,) for P element pairs.

    For each unordered pair of elements (a, b) from ``species`` and grid points r_g = 0 … r_max Å:
    f_ab(r_g) = (1/N) Σ_{i≠j: {Z_i, Z_j} = {a, b}, r_ij < r_max} exp(−(r_ij − r_g)² / (2 width²)),
    with r_ij the distances to every periodic image within ``r_max`` Å (``width`` in Å).
    """
    z = [atomic_numbers[s] for s in species]
    pairs = {p: k for k, p in enumerate(combinations_with_replacement(sorted(z), 2))}
    grid = np.linspace(0.0, r_max, n_bins)
    out = np.zeros((len(pairs), n_bins))
    i, j, d = neighbor_list("ijd", atoms, r_max)
    if len(d):
        zi, zj = atoms.numbers[i], atoms.numbers[j]
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(species))
        if unknown:
            raise ConfigError(f"fingerprint species {list(species)} lack {unknown}")
        rows = np.array([pairs[(min(a, b), max(a, b))] for a, b in zip(zi, zj, strict=True)])
        gauss = np.exp(-((d[:, None] - grid[None, :]) ** 2) / (2.0 * width**2))
        np.add.at(out, rows, gauss)
    return (out / max(len(atoms), 1)).ravel()


def farthest_point_sampling(points: np.ndarray, n: int, first: int) -> list[int]:
    """Greedy farthest-point sampling of ``n`` rows of ``points`` (M, D), starting at row ``first``.

    Each step adds the row whose Euclidean distance to the nearest row already chosen is largest;
    returns the chosen row indices in the order picked (at most M).
    """
    m = len(points)
    chosen = [int(first)]
    nearest = np.linalg.norm(points - points[first], axis=1)
    while len(chosen) < min(n, m):
        nearest[chosen] = -np.inf
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(points - points[nxt], axis=1))
    return chosen


@dataclass
class Selection:
    """Outcome of a selection over M candidates.

    chosen: indices of the candidates to label, in the order picked. eligible: (M,) bool, above a
    lower threshold and not rejected. rejected: (M,) bool, above the upper force threshold or with
    atoms too close (taken as unphysical, never labelled).
    """

    chosen: list[int]
    eligible: np.ndarray
    rejected: np.ndarray


def select_by_disagreement(
    spread: Disagreement,
    fingerprints: np.ndarray,
    n: int,
    force_threshold: float,
    energy_threshold: float,
    force_upper: float | None = None,
    unphysical: np.ndarray | None = None,
    pool_factor: float = 3.0,
) -> Selection:
    """Pick up to ``n`` candidates where the committee disagrees most, spread out in fingerprint space.

    A candidate's score is max(force_std / force_threshold, energy_std / energy_threshold); it is
    eligible with a score ≥ 1 (``force_std`` in eV/Å, ``energy_std`` in eV/atom) unless rejected
    (``force_std > force_upper`` or flagged in ``unphysical``). The ``pool_factor · n`` eligible
    candidates with the highest scores form the pool; farthest-point sampling on ``fingerprints``
    (M, D) picks ``n`` of them, starting from the highest score — so disagreement decides which
    events are labelled, and diversity that a batch is not ``n`` copies of one event.
    """
    rejected = np.zeros(len(spread.force_std), dtype=bool) if unphysical is None else unphysical.copy()
    if force_upper is not None:
        rejected |= spread.force_std > force_upper
    score = np.maximum(spread.force_std / force_threshold, spread.energy_std / energy_threshold)
    eligible = (score >= 1.0) & ~rejected
    idx = np.flatnonzero(eligible)
    if n <= 0 or not len(idx):
        return Selection([], eligible, rejected)
    pool = idx[np.argsort(-score[idx], kind="stable")][: max(n, math.ceil(pool_factor * n))]
    picked = farthest_point_sampling(fingerprints[pool], n, first=0)
    return Selection([int(pool[p]) for p in picked], eligible, rejected)
