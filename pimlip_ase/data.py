"""Structures and labels to tensors: graphs, batching without padding, label masks, splits, E0 fit.

A :class:`Graph` holds one structure or a batch of them concatenated atom-wise (no padding):
``batch[a]`` is the structure of atom ``a``. Labels that a structure lacks are masked, never
zero-filled: ``energy_mask[s]``, ``forces_mask[a]`` and ``stress_mask[s]`` say which entries are known.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import ase
import ase.db
import ase.io
import numpy as np
import torch
from ase import units
from ase.data import chemical_symbols

from . import keys
from .errors import ConfigError, MissingLabelError, PimlipError
from .neighbors import check_geometry, neighbor_list

#: Energy units a data set may be given in, and their size in eV (converted once, on reading).
ENERGY_UNITS = {
    "eV": 1.0,
    "meV": 1e-3,
    "Hartree": units.Hartree,
    "kcal/mol": units.kcal / units.mol,
    "kJ/mol": units.kJ / units.mol,
}


@dataclasses.dataclass
class Graph:
    """Structures as tensors. Shapes: N atoms, B structures, E pairs.

    positions (N, 3) Å; numbers (N,) atomic numbers; cell (B, 3, 3) Å; pbc (B, 3);
    batch (N,); edge_index (2, E); shifts (E, 3) integer cell shifts (stored in the float dtype);
    energy (B,) eV, forces (N, 3) eV/Å, stress (B, 3, 3) eV/Å³ with their masks.
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    batch: torch.Tensor
    edge_index: torch.Tensor
    shifts: torch.Tensor
    energy: torch.Tensor
    energy_mask: torch.Tensor
    forces: torch.Tensor
    forces_mask: torch.Tensor
    stress: torch.Tensor
    stress_mask: torch.Tensor

    @property
    def n_structures(self) -> int:
        return self.cell.shape[0]

    @property
    def n_atoms(self) -> torch.Tensor:
        """(B,) number of atoms per structure."""
        return torch.bincount(self.batch, minlength=self.n_structures)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Graph:
        """Copy to a device and/or float dtype (integer and bool fields keep their type)."""
        changes = {}
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            changes[f.name] = t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        return Graph(**changes)

    def with_positions(self, positions: torch.Tensor, cutoff: float) -> Graph:
        """The same structures at new positions (Å), with neighbour lists rebuilt at ``cutoff``."""
        pos_np = positions.detach().cpu().numpy()
        counts = self.n_atoms.tolist()
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
        edges, shifts = [], []
        for s, (start, n) in enumerate(zip(starts, counts, strict=True)):
            e, sh = neighbor_list(
                pos_np[start : start + n], self.cell[s].cpu().numpy(), self.pbc[s].cpu().numpy(), cutoff
            )
            edges.append(e + start)
            shifts.append(sh)
        dev, dt = positions.device, positions.dtype
        return dataclasses.replace(
            self,
            positions=positions,
            edge_index=torch.from_numpy(np.concatenate(edges, axis=1)).to(dev),
            shifts=torch.from_numpy(np.concatenate(shifts)).to(device=dev, dtype=dt),
        )


def collate(graphs: Sequence[Graph]) -> Graph:
    """Concatenate graphs into one batch; edge indices and batch indices are offset."""
    atom_offsets = np.cumsum([0] + [g.positions.shape[0] for g in graphs[:-1]])
    struct_offsets = np.cumsum([0] + [g.n_structures for g in graphs[:-1]])
    cat = {}
    for f in dataclasses.fields(Graph):
        if f.name == "edge_index":
            cat[f.name] = torch.cat(
                [g.edge_index + int(o) for g, o in zip(graphs, atom_offsets, strict=True)], dim=1
            )
        elif f.name == "batch":
            cat[f.name] = torch.cat([g.batch + int(o) for g, o in zip(graphs, struct_offsets, strict=True)])
        else:
            cat[f.name] = torch.cat([getattr(g, f.name) for g in graphs])
    return Graph(**cat)


def _voigt_to_matrix(stress: np.ndarray, name: str) -> np.ndarray:
    s = np.asarray(stress, dtype=np.float64).reshape(-1)
    if s.size == 9:
        return s.reshape(3, 3)
    if s.size == 6:  # Voigt xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    raise PimlipError(f"{name}: stress label has {s.size} components; expected 6 (Voigt) or 9")


@dataclasses.dataclass(frozen=True)
class LabelKeys:
    """Where labels live on ``ase.Atoms`` and in which energy unit they are given."""

    energy: str = keys.ENERGY
    forces: str = keys.FORCES
    stress: str = keys.STRESS
    energy_unit: str = "eV"

    def __post_init__(self) -> None:
        if self.energy_unit not in ENERGY_UNITS:
            raise ConfigError(f"unknown energy_unit {self.energy_unit!r}; use one of {sorted(ENERGY_UNITS)}")


def dataset_fingerprint(structures: Sequence[ase.Atoms], keys: LabelKeys | None = None) -> str:
    """Fingerprint of the structures' numbers, positions and cells; with ``keys`` also of their labels."""
    h = hashlib.sha256()
    for a in structures:
        h.update(
            a.numbers.tobytes()
            + np.ascontiguousarray(a.positions).tobytes()
            + np.ascontiguousarray(a.cell[:]).tobytes()
        )
        if keys is not None:
            labels = (a.info.get(keys.energy), a.arrays.get(keys.forces), a.info.get(keys.stress))
            for value in labels:
                h.update(b"-" if value is None else np.ascontiguousarray(value, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def atoms_to_graph(
    atoms: ase.Atoms, cutoff: float, label_keys: LabelKeys = LabelKeys(), name: str = "structure"
) -> Graph:
    """One ``ase.Atoms`` (with optional labels) to a float64 :class:`Graph` with its neighbour list.

    Labels are converted to eV (and eV/Å, eV/Å³) from ``label_keys.energy_unit`` here, once.
    """
    n = len(atoms)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell[:], dtype=np.float64)
    check_geometry(atoms.positions, cell, pbc, name)
    edge_index, shifts = neighbor_list(atoms.positions, cell, pbc, cutoff)
    unit = ENERGY_UNITS[label_keys.energy_unit]
    f64 = torch.float64

    energy = atoms.info.get(label_keys.energy)
    has_e = energy is not None and np.isfinite(energy)
    forces = atoms.arrays.get(label_keys.forces)
    has_f = forces is not None
    if has_f and np.shape(forces) != (n, 3):
        raise PimlipError(f"{name}: {label_keys.forces!r} has shape {np.shape(forces)}, expected ({n}, 3)")
    stress = atoms.info.get(label_keys.stress)
    has_s = stress is not None
    return Graph(
        positions=torch.tensor(atoms.positions, dtype=f64),
        numbers=torch.tensor(atoms.numbers, dtype=torch.long),
        cell=torch.tensor(cell, dtype=f64).unsqueeze(0),
        pbc=torch.tensor(pbc).unsqueeze(0),
        batch=torch.zeros(n, dtype=torch.long),
        edge_index=torch.from_numpy(edge_index),
        shifts=torch.from_numpy(shifts).to(f64),
        energy=torch.tensor([float(energy) * unit if has_e else 0.0], dtype=f64),
        energy_mask=torch.tensor([has_e]),
        forces=torch.tensor(np.asarray(forces) * unit if has_f else np.zeros((n, 3)), dtype=f64),
        forces_mask=torch.full((n,), has_f),
        stress=torch.tensor(
            _voigt_to_matrix(stress, name) * unit if has_s else np.zeros((3, 3)), dtype=f64
        ).unsqueeze(0),
        stress_mask=torch.tensor([has_s and bool(pbc.all())]),
    )


def read_structures(source: str | Path | Sequence[ase.Atoms]) -> list[ase.Atoms]:
    """Structures from a list of Atoms, an extxyz/xyz file, or an ``ase.db`` file.

    From a database, key-value pairs go to ``atoms.info`` and per-atom arrays stored in ``row.data``
    (e.g. ``REF_forces``) to ``atoms.arrays``; only rows whose label status is not pending/failed
    are read when the database is a pimlip labelling store.
    """
    if not isinstance(source, (str, Path)):
        return list(source)
    path = Path(source)
    if not path.exists():
        raise PimlipError(f"data file {str(path)!r} does not exist")
    if path.suffix != ".db":
        return list(ase.io.read(path, index=":"))
    out = []
    with ase.db.connect(path) as db:
        for row in db.select():
            if row.get("status", "done") != "done":
                continue
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            for k, v in row.data.items():
                arr = np.asarray(v)
                if arr.shape[:1] == (len(atoms),):
                    atoms.arrays[k] = arr
                else:
                    atoms.info[k] = arr
            out.append(atoms)
    return out


def build_graphs(
    structures: Sequence[ase.Atoms], cutoff: float, label_keys: LabelKeys = LabelKeys()
) -> list[Graph]:
    """Graphs for many structures; each error names the structure's index."""
    return [atoms_to_graph(a, cutoff, label_keys, name=f"structure {i}") for i, a in enumerate(structures)]


def require_labels(
    graphs: Sequence[Graph], energy: bool, forces: bool, stress: bool, keys_: LabelKeys
) -> None:
    """Raise MissingLabelError when a loss term has a weight but no structure carries its label."""
    for wanted, mask_name, key in (
        (energy, "energy_mask", keys_.energy),
        (forces, "forces_mask", keys_.forces),
        (stress, "stress_mask", keys_.stress),
    ):
        if wanted and not any(bool(getattr(g, mask_name).any()) for g in graphs):
            raise MissingLabelError(
                f"no training structure has the label {key!r}; set its loss weight to 0 or name the "
                f"right key in data ({', '.join(f'{n}_key' for n in ('energy', 'forces', 'stress'))})"
            )


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random split of range(n) into (train, valid); valid gets round(fraction·n), ≥1 if fraction>0."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"data.valid fraction must be in [0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(n).tolist()
    n_valid = max(1, round(fraction * n)) if fraction > 0 else 0
    if n_valid >= n:
        raise ConfigError(f"valid fraction {fraction} leaves no training structure out of {n}")
    return sorted(perm[n_valid:]), sorted(perm[:n_valid])


def iterate_batches(
    graphs: Sequence[Graph], batch_size: int, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[Graph]:
    """Yield collated batches; the order is drawn from ``generator`` when shuffling."""
    order = torch.randperm(len(graphs), generator=generator).tolist() if shuffle else range(len(graphs))
    order = list(order)
    for start in range(0, len(order), batch_size):
        yield collate([graphs[i] for i in order[start : start + batch_size]])


def fit_reference_energies(graphs: Sequence[Graph], species: Sequence[str]) -> np.ndarray:
    """Per-element reference energies E0 (eV), least squares on the labelled total energies.

    Solves min ‖C·E0 − E‖² with C[s, e] the count of element e in structure s. Elements never seen
    in a labelled structure get E0 = 0. With a single composition the fit is the mean energy per atom
    shared among the elements in proportion (minimum-norm solution).
    """
    z = [chemical_symbols.index(s) for s in species]
    rows, energies = [], []
    for g in graphs:
        for s in range(g.n_structures):
            if g.energy_mask[s]:
                nums = g.numbers[g.batch == s].numpy()
                rows.append([np.count_nonzero(nums == zi) for zi in z])
                energies.append(float(g.energy[s]))
    if not rows:
        return np.zeros(len(species))
    e0, *_ = np.linalg.lstsq(np.asarray(rows, dtype=np.float64), np.asarray(energies), rcond=None)
    return e0


def fit_scale_shift(graphs: Sequence[Graph], species: Sequence[str], e0: np.ndarray) -> tuple[float, float]:
    """Scale and shift of the per-atom network output (eV).

    shift: mean per-atom energy left after E0. scale: RMS of the force labels when any exist, else
    the standard deviation of the residual total energies divided by √(mean atom count) — the
    fluctuation of one atom's energy if atoms fluctuated independently.
    """
    z_to_e0 = {chemical_symbols.index(s): e for s, e in zip(species, e0, strict=True)}
    residuals, counts, forces = [], [], []
    for g in graphs:
        for s in range(g.n_structures):
            sel = g.batch == s
            if g.energy_mask[s]:
                nums = g.numbers[sel].tolist()
                residuals.append(float(g.energy[s]) - sum(z_to_e0.get(n, 0.0) for n in nums))
                counts.append(len(nums))
        if g.forces_mask.any():
            forces.append(g.forces[g.forces_mask].reshape(-1))
    res = np.asarray(residuals)
    cnt = np.asarray(counts, dtype=np.float64)
    shift = float(np.mean(res / cnt)) if len(res) else 0.0
    if forces:
        scale = float(torch.cat(forces).pow(2).mean().sqrt())
    elif len(res) > 1:
        scale = float(np.std(res - shift * cnt) / math.sqrt(cnt.mean()))
    else:
        scale = 1.0
    return shift, (scale if scale > 1e-12 else 1.0)


def species_of(structures: Sequence[ase.Atoms]) -> list[str]:
    """Sorted element symbols (by atomic number) present in the structures."""
    zs = sorted({int(z) for a in structures for z in a.numbers})
    return [chemical_symbols[z] for z in zs]
