"""The ASE calculator: one trained model, or a committee of them, behind ASE's Calculator API.

Results (ASE units): ``energy`` and ``free_energy`` (eV; equal, the model has no electronic entropy),
``forces`` (N, 3) eV/Å, ``energies`` (N,) per-atom eV summing to ``energy``, and ``stress`` (Voigt
xx yy zz yz xz xy, eV/Å³) for cells periodic in all three directions. For a committee each result is
the mean over members, and ``energy_std`` (eV) and ``forces_std`` (N,) per atom, eV/Å, are added:
forces_std_i = sqrt(Σ_c Var_members(F_ic)), the length of the per-component standard deviations.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .allocator import keep_large_blocks_in_heap
from .data import Graph
from .errors import InvalidStructureError
from .modelfile import load_model
from .models import PotentialModel
from .neighbors import CachedNeighborList

ModelSpec = str | Path | PotentialModel


class PIMLIPCalculator(Calculator):
    """ASE calculator for pimlip_ase models.

    Args:
        model: a model file path, a model object, or a list of either (a committee).
        device: torch device to run on ("cpu", "cuda", ...).
        dtype: float dtype to run in (default: each model's own, float64 unless trained otherwise).
        skin: neighbour-list skin, Å; the list is reused until an atom moves more than skin/2.

    On CPU the first calculator switches glibc's malloc to keep large buffers in the heap (2–3×
    faster steps on a few hundred atoms and more, at a higher resident memory; see
    :mod:`pimlip_ase.allocator`, ``PIMLIP_SYSTEM_MALLOC=1`` opts out).
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress", "energies")

    def __init__(
        self,
        model: ModelSpec | Sequence[ModelSpec],
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        skin: float = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        specs = list(model) if isinstance(model, (list, tuple)) else [model]
        if not specs:
            raise ValueError("PIMLIPCalculator needs at least one model")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.device = torch.device(device)
        if self.device.type == "cpu":
            keep_large_blocks_in_heap()
        self.models = [self._load(m, dtype) for m in specs]
        self.dtype = self.models[0].dtype
        species = {tuple(m.species) for m in self.models}
        if len(species) > 1:
            raise ValueError(f"committee members have different species: {sorted(species)}")
        self.neighbors = CachedNeighborList(max(m.cutoff for m in self.models), skin)
        self._edges: tuple = (None, None, None)  # (list reused from the skin, its two tensors)
        self._empty: tuple = (None, {})  # (atom count, label tensors of that size)
        if any(not m.conservative for m in self.models):
            warnings.warn(
                "this model predicts forces directly (forces='direct'): they are not the "
                "gradient of the energy, so total energy drifts in NVE MD",
                stacklevel=2,
            )

    def _load(self, spec: ModelSpec, dtype: torch.dtype | None) -> PotentialModel:
        model = spec if isinstance(spec, PotentialModel) else load_model(spec)
        return model.to(device=self.device, dtype=dtype or model.dtype).eval()

    @property
    def is_committee(self) -> bool:
        return len(self.models) > 1

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation among what the model reads: ``positions``,
        ``numbers``, ``cell``, ``pbc`` (exact comparison; charges and magnetic moments are ignored).

        ASE's own check compares every array with ``np.allclose``, once per requested property,
        which cost ~0.1 ms per MD step on a small molecule (~1 % of a step). ``tol`` is accepted for
        ASE's signature and not used (exact equality recomputes at least as often as ``tol``).
        """
        old = self.atoms
        if old is None:
            return list(all_changes)
        same_n = len(old) == len(atoms)
        checks = (
            ("positions", same_n and np.array_equal(old.positions, atoms.positions)),
            ("numbers", same_n and np.array_equal(old.numbers, atoms.numbers)),
            ("cell", np.array_equal(old.cell.array, atoms.cell.array)),
            ("pbc", np.array_equal(old.pbc, atoms.pbc)),
        )
        return [name for name, same in checks if not same]

    def _labels(self, n: int) -> dict[str, torch.Tensor]:
        """Batch index and empty label fields of a one-structure graph of ``n`` atoms (the model
        reads none of the labels), built once per atom count."""
        if self._empty[0] != n:
            dt, dev = self.dtype, self.device
            self._empty = (
                n,
                dict(
                    batch=torch.zeros(n, dtype=torch.long, device=dev),
                    energy=torch.zeros(1, dtype=dt, device=dev),
                    energy_mask=torch.zeros(1, dtype=torch.bool, device=dev),
                    forces=torch.zeros((n, 3), dtype=dt, device=dev),
                    forces_mask=torch.zeros(n, dtype=torch.bool, device=dev),
                    stress=torch.zeros((1, 3, 3), dtype=dt, device=dev),
                    stress_mask=torch.zeros(1, dtype=torch.bool, device=dev),
                ),
            )
        return self._empty[1]

    def _graph(self, atoms) -> Graph:
        positions = atoms.get_positions()
        if not np.all(np.isfinite(positions)):
            bad = np.unique(np.nonzero(~np.isfinite(positions))[0]).tolist()[:10]
            raise InvalidStructureError(f"positions of atoms {bad} are NaN or inf; refusing to evaluate")
        cell, pbc = np.asarray(atoms.cell[:]), np.asarray(atoms.pbc, dtype=bool)
        nl = self.neighbors.get(positions, atoms.numbers, cell, pbc)
        dev, dt = self.device, self.dtype
        if self._edges[0] is not nl:  # a rebuilt list: convert once, reuse while the skin holds
            self._edges = (
                nl,
                torch.as_tensor(nl[0], device=dev),
                torch.as_tensor(nl[1], dtype=dt, device=dev),
            )
        return Graph(
            positions=torch.as_tensor(positions, dtype=dt, device=dev),
            numbers=torch.as_tensor(atoms.numbers, dtype=torch.long, device=dev),
            cell=torch.as_tensor(cell, dtype=dt, device=dev).unsqueeze(0),
            pbc=torch.as_tensor(pbc, device=dev).unsqueeze(0),
            edge_index=self._edges[1],
            shifts=self._edges[2],
            **self._labels(len(atoms)),
        )

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        periodic = bool(np.all(self.atoms.pbc))
        if "stress" in properties and not periodic:
            raise PropertyNotImplementedError(
                "stress needs a cell periodic in all three directions; this structure has "
                f"pbc={self.atoms.pbc}"
            )
        graph = self._graph(self.atoms)
        outs = [m(graph, forces=True, stress=periodic) for m in self.models]

        keys = ("energy", "forces", "energies", "stress") if periodic else ("energy", "forces", "energies")
        if self.is_committee:  # (members, ...) float64, each output stacked once
            members = {k: torch.stack([o[k].detach() for o in outs]).cpu().double().numpy() for k in keys}
            mean = {k: v.mean(axis=0) for k, v in members.items()}
        else:  # one model's output as it is: no stacking on the hot path
            mean = {k: outs[0][k].detach().cpu().double().numpy() for k in keys}
        energy = float(mean["energy"][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": mean["forces"],
            "energies": mean["energies"],
        }
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(mean["stress"][0])
        if self.is_committee:
            self.results["energy_std"] = float(members["energy"][:, 0].std())
            self.results["forces_std"] = np.sqrt(members["forces"].var(axis=0).sum(axis=-1))
