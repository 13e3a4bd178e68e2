"""SchNet (Schütt et al., J. Chem. Phys. 148, 241722 (2018)): continuous-filter convolutions.

Each interaction updates atom features x_i (N, F) by
    x_i ← x_i + Dense(ssp(Dense( Σ_j W(r_ij) ⊙ Dense(x_j) )))
with the filter W(r) = Dense(ssp(Dense(gaussians(r)))) · f_cut(r). A two-layer MLP reads one scalar
per atom. ssp(x) = softplus(x) − ln 2 (shifted softplus), smooth to all orders (double backward).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import PotentialModel, cosine_cutoff, scatter_sum


class ShiftedSoftplus(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(x) - math.log(2.0)


class GaussianRBF(nn.Module):
    """n Gaussians exp(−(r − μ_k)² / (2 w²)) with centres μ_k evenly spaced on [0, r_c], w = spacing."""

    def __init__(self, n_rbf: int, cutoff: float) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n_rbf))
        self.width = cutoff / (n_rbf - 1)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * ((r[:, None] - self.centers) / self.width) ** 2)


class Interaction(nn.Module):
    def __init__(self, n_features: int, n_rbf: int) -> None:
        super().__init__()
        self.filter = nn.Sequential(
            nn.Linear(n_rbf, n_features), ShiftedSoftplus(), nn.Linear(n_features, n_features)
        )
        self.in2f = nn.Linear(n_features, n_features, bias=False)
        self.f2out = nn.Sequential(
            nn.Linear(n_features, n_features), ShiftedSoftplus(), nn.Linear(n_features, n_features)
        )

    def forward(self, x, edge_index, rbf, fcut):  # x (N, F), rbf (E, K), fcut (E,)
        i, j = edge_index
        w = self.filter(rbf) * fcut[:, None]  # (E, F)
        messages = self.in2f(x)[j] * w  # (E, F)
        return x + self.f2out(scatter_sum(messages, i, x.shape[0]))


class SchNet(PotentialModel):
    """SchNet with ``n_features`` channels, ``n_interactions`` blocks and ``n_rbf`` Gaussians."""

    architecture = "schnet"

    def __init__(
        self,
        species,
        cutoff: float = 5.0,
        n_features: int = 64,
        n_interactions: int = 3,
        n_rbf: int = 20,
        forces: str = "autograd",
        dtype: torch.dtype | str = torch.float64,
    ) -> None:
        super().__init__(species, cutoff, forces, dtype)
        self.n_features, self.n_interactions, self.n_rbf = n_features, n_interactions, n_rbf
        self.embedding = nn.Embedding(len(self.species), n_features)
        self.rbf = GaussianRBF(n_rbf, cutoff)
        self.interactions = nn.ModuleList(Interaction(n_features, n_rbf) for _ in range(n_interactions))
        self.readout = nn.Sequential(
            nn.Linear(n_features, n_features // 2), ShiftedSoftplus(), nn.Linear(n_features // 2, 1)
        )
        self.to(self._init_dtype)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            **super().hyperparameters(),
            "n_features": self.n_features,
            "n_interactions": self.n_interactions,
            "n_rbf": self.n_rbf,
        }

    def atomic_outputs(self, species, edge_index, vectors, lengths):
        x = self.embedding(species)  # (N, F)
        rbf = self.rbf(lengths)  # (E, K)
        fcut = cosine_cutoff(lengths, self.cutoff)  # (E,)
        for interaction in self.interactions:
            x = interaction(x, edge_index, rbf, fcut)
        return self.readout(x).squeeze(-1), None  # (N,)
