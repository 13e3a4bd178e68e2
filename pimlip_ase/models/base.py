"""The shared base of every architecture: per-atom outputs -> energy, forces and stress.

An architecture only maps (species, pair vectors) to one scalar per atom (and, optionally, one
vector per atom for a direct force head). This base turns them into

    E_i = scale · y_i + shift + E0[Z_i],      E = Σ_i E_i,
    F_i = −∂E/∂r_i,                           σ = (1/V) ∂E/∂ε |_{ε=0},

where ε is a symmetric strain applied to positions and cell alike, r → r (1 + ε), cell → cell (1 + ε),
so that σ is the Cauchy stress in ASE's sign convention (positive when the cell wants to shrink is
negative pressure; ``stress = −virial / V``). With ``forces="direct"`` the forces come from the
network's vector head instead and are not the gradient of E (not conservative).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from ase.data import chemical_symbols
from torch import nn

from ..data import Graph
from ..errors import ConfigError, UnknownElementError

FORCE_MODES = ("autograd", "direct")


class PotentialModel(nn.Module):
    """Base class; subclasses implement :meth:`atomic_outputs` and list their hyperparameters.

    Attributes exposed for users: ``species`` (element symbols), ``cutoff`` (Å), ``dtype``,
    ``forces_mode`` ("autograd" or "direct"), ``conservative`` (bool).
    """

    architecture: ClassVar[str] = ""
    supports_direct_forces: ClassVar[bool] = False

    def __init__(
        self,
        species: Sequence[str],
        cutoff: float = 5.0,
        forces: str = "autograd",
        dtype: torch.dtype | str = torch.float64,
    ) -> None:
        super().__init__()
        unknown = [s for s in species if s not in chemical_symbols[1:]]
        if unknown or not species:
            raise ConfigError(f"species must be a non-empty list of element symbols; unknown: {unknown}")
        if forces not in FORCE_MODES:
            raise ConfigError(f"model forces={forces!r}; use one of {FORCE_MODES}")
        if forces == "direct" and not self.supports_direct_forces:
            raise ConfigError(f"{self.architecture} has no direct force head; use forces='autograd'")
        self.species = list(species)
        self.cutoff = float(cutoff)
        self.forces_mode = forces
        z_to_index = torch.full((len(chemical_symbols),), -1, dtype=torch.long)
        for i, s in enumerate(self.species):
            z_to_index[chemical_symbols.index(s)] = i
        self.register_buffer("z_to_index", z_to_index)
        self.register_buffer("e0", torch.zeros(len(self.species)))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("shift", torch.zeros(()))
        self._init_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    # -- to be provided by architectures -------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        """Everything needed to rebuild this model with ``build_model(architecture, **hp)``."""
        return {"species": self.species, "cutoff": self.cutoff, "forces": self.forces_mode}

    def atomic_outputs(
        self, species: torch.Tensor, edge_index: torch.Tensor, vectors: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N,) per-atom scalars y_i and (N, 3) direct forces or None. vectors: (E, 3) r_j − r_i, Å."""
        raise NotImplementedError

    # -- shared machinery -----------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.e0.dtype

    @property
    def conservative(self) -> bool:
        return self.forces_mode == "autograd"

    @contextmanager
    def forces_from_energy(self) -> Iterator[PotentialModel]:
        """Within the block, forces are −∇E of the model's energy (eV/Å) also for a direct-force model,
        whose head then goes unused: e.g. to compare the head with its own energy's gradient."""
        mode, self.forces_mode = self.forces_mode, "autograd"
        try:
            yield self
        finally:
            self.forces_mode = mode

    def set_reference(self, e0: Sequence[float], scale: float, shift: float) -> None:
        """Set per-element E0 (eV, in ``species`` order), and the output scale and shift (eV)."""
        self.e0.copy_(torch.as_tensor(e0, dtype=self.e0.dtype))
        self.scale.fill_(float(scale))
        self.shift.fill_(float(shift))

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """(N,) atomic numbers -> (N,) indices into ``species``; unknown elements raise."""
        idx = self.z_to_index[numbers.clamp(0, len(chemical_symbols) - 1)]
        if (idx < 0).any() or (numbers >= len(chemical_symbols)).any():
            bad = sorted(
                {
                    chemical_symbols[int(z)] if int(z) < len(chemical_symbols) else str(int(z))
                    for z in numbers[idx < 0]
                }
            )
            raise UnknownElementError(
                f"element(s) {bad} not in this model's species {self.species}; "
                "train a model that includes them"
            )
        return idx

    def forward(
        self, graph: Graph, forces: bool = True, stress: bool = False, create_graph: bool = False
    ) -> dict[str, torch.Tensor]:
        """Energy (B,) eV, per-atom energies (N,) eV, forces (N, 3) eV/Å, stress (B, 3, 3) eV/Å³.

        ``create_graph=True`` keeps the graph of the derivatives, so that losses on forces (and the
        PIWSL losses) can be differentiated with respect to the parameters. Stress is NaN for
        structures that are not periodic in all three directions.
        """
        graph = graph.to(dtype=self.dtype)
        species = self.species_index(graph.numbers)
        positions, cell = graph.positions, graph.cell
        want_grad_pos = forces and self.conservative
        if want_grad_pos:
            positions = positions.detach().requires_grad_(True)
        strain = None
        if stress:
            strain = torch.zeros_like(cell, requires_grad=True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            positions = positions + torch.einsum("ni,nij->nj", positions, sym[graph.batch])
            cell = cell + torch.bmm(cell, sym)

        i, j = graph.edge_index
        offsets = torch.einsum("ei,eij->ej", graph.shifts, cell[graph.batch[i]])
        vectors = positions[j] - positions[i] + offsets  # (E, 3)
        lengths = torch.linalg.vector_norm(vectors, dim=-1)  # (E,)
        keep = lengths < self.cutoff
        edge_index = graph.edge_index
        if not bool(keep.all()):  # lists built with a skin carry pairs beyond the cutoff
            edge_index, vectors, lengths = edge_index[:, keep], vectors[keep], lengths[keep]

        y, direct_forces = self.atomic_outputs(species, edge_index, vectors, lengths)
        energies = self.scale * y + self.shift + self.e0[species]  # (N,)
        energy = torch.zeros(graph.n_structures, dtype=self.dtype, device=energies.device)
        energy = energy.index_add(0, graph.batch, energies)  # (B,)
        out = {"energy": energy, "energies": energies}

        inputs = ([positions] if want_grad_pos else []) + ([strain] if stress else [])
        if inputs:
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph)
        if forces:
            out["forces"] = -grads[0] if want_grad_pos else self.scale * direct_forces
        if stress:
            volume = torch.linalg.det(graph.cell).abs()
            periodic = graph.pbc.all(dim=1) & (volume > 0)
            safe_volume = torch.where(periodic, volume, torch.ones_like(volume))
            sigma = grads[-1] / safe_volume[:, None, None]
            out["stress"] = torch.where(periodic[:, None, None], sigma, torch.full_like(sigma, float("nan")))
        return out


def cosine_cutoff(lengths: torch.Tensor, cutoff: float) -> torch.Tensor:
    """f(r) = ½ (cos(π r / r_c) + 1) for r < r_c, else 0: smooth to first order at r_c."""
    return torch.where(lengths < cutoff, 0.5 * (torch.cos(torch.pi * lengths / cutoff) + 1.0), 0.0)


def scatter_sum(src: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Sum rows of ``src`` (E, ...) into ``n`` rows by ``index`` (E,)."""
    out = torch.zeros((n,) + src.shape[1:], dtype=src.dtype, device=src.device)
    return out.index_add(0, index, src)
