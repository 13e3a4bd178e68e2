"""Neighbour lists with periodic shifts, for any mix of periodic and open directions (vesin).

A pair (i, j, S) means atom j, translated by the integer cell shift S, lies within the cutoff of
atom i: r_ij = r_j − r_i + S · cell (cell rows are the lattice vectors, as in ASE). Full lists: both
(i, j, S) and (j, i, −S) are present. A cutoff longer than the cell gives several images of the same
atom, each its own pair; an atom's own images (i == j, S != 0) are included, the pair (i, i, 0) never.
"""

from __future__ import annotations

import numpy as np
import vesin

from .errors import InvalidStructureError


def check_geometry(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, name: str = "structure") -> None:
    """Raise InvalidStructureError for non-finite positions or a degenerate periodic cell."""
    if not np.all(np.isfinite(positions)):
        bad = np.unique(np.nonzero(~np.isfinite(positions))[0])
        raise InvalidStructureError(f"{name}: positions of atoms {bad.tolist()[:10]} are NaN or inf")
    if not np.all(np.isfinite(cell)):
        raise InvalidStructureError(f"{name}: the cell contains NaN or inf")
    for axis in np.nonzero(pbc)[0]:
        if np.linalg.norm(cell[axis]) < 1e-8:
            raise InvalidStructureError(
                f"{name}: direction {axis} is periodic but its cell vector is zero; set a cell or pbc=False"
            )
    if np.all(pbc) and abs(np.linalg.det(cell)) < 1e-8:
        raise InvalidStructureError(f"{name}: the periodic cell has zero volume")


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs closer than ``cutoff`` (Å).

    Args:
        positions: (N, 3) Cartesian positions, Å.
        cell: (3, 3) lattice vectors as rows, Å (ignored along open directions).
        pbc: (3,) periodic flags.
        cutoff: pair cutoff, Å.

    Returns:
        edge_index (2, E) int64 with rows (i, j), and shifts (E, 3) int64 cell shifts S.
    """
    pbc = np.asarray(pbc, dtype=bool)
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64)
    check_geometry(positions, cell, pbc)
    if len(positions) == 0:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = nl.compute(positions, cell if pbc.any() else np.zeros((3, 3)), pbc, "ijS")
    edge_index = np.stack([i, j]).astype(np.int64)
    return edge_index, np.asarray(shifts, dtype=np.int64)


class CachedNeighborList:
    """A neighbour list built at ``cutoff + skin`` and reused while it stays valid (for MD).

    It is rebuilt when the atoms, their periodicity or the cell change, or when any atom has moved
    more than ``skin / 2`` since the last build — then no pair can have entered the cutoff unseen.
    Pairs beyond the cutoff stay in the list; the model drops them after measuring their length.
    """

    def __init__(self, cutoff: float, skin: float = 0.5) -> None:
        if skin < 0:
            raise ValueError(f"skin must be ≥ 0 Å, got {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self._key: tuple | None = None
        self._positions: np.ndarray | None = None
        self._result: tuple[np.ndarray, np.ndarray] | None = None
        self.n_builds = 0

    def get(
        self, positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray, pbc: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(edge_index, shifts) valid for the given structure (see :func:`neighbor_list`)."""
        key = (numbers.tobytes(), np.asarray(cell).tobytes(), np.asarray(pbc, dtype=bool).tobytes())
        if self._result is not None and key == self._key and positions.shape == self._positions.shape:
            moved = np.max(np.linalg.norm(positions - self._positions, axis=1), initial=0.0)
            if moved <= 0.5 * self.skin:
                return self._result
        self._result = neighbor_list(positions, cell, pbc, self.cutoff + self.skin)
        self._key, self._positions = key, positions.copy()
        self.n_builds += 1
        return self._result
