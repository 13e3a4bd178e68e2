"""PaiNN (Schütt, Unke, Gastegger, ICML 2021): equivariant message passing with scalar and vector
features, s_i (N, F) and v_i (N, 3, F).

Message (per pair, summed over neighbours j of i), with φ(s_j) and W(r_ij) split into three F-blocks:
    Δs_i = Σ_j φ_s(s_j) W_s(r_ij),
    Δv_i = Σ_j φ_vv(s_j) W_vv(r_ij) v_j + φ_vs(s_j) W_vs(r_ij) r̂_ij,
W(r) = Dense(sin(nπr/r_c)/r) · f_cut(r). Update, with U, V linear maps over channels:
    a = MLP([s_i, ‖V v_i‖]) split into (a_vv, a_sv, a_ss),
    Δv_i = a_vv U v_i,    Δs_i = a_sv ⟨U v_i, V v_i⟩ + a_ss.
Readout: per-atom scalar energy from s; optionally a direct force head F_i = Σ_c w_c g_c(s_i) v_ic
(a gated linear map of the vectors: rotation-equivariant but not −∇E).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import PotentialModel, cosine_cutoff, scatter_sum

_NORM_EPS = 1e-8  # keeps ‖V v‖ differentiable at v = 0 (features start at zero)


class SineRBF(nn.Module):
    """sin(n π r / r_c) / r for n = 1 … n_rbf."""

    def __init__(self, n_rbf: int, cutoff: float) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.arange(1, n_rbf + 1) * torch.pi / cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return torch.sin(r[:, None] * self.freqs) / r[:, None]


class Message(nn.Module):
    def __init__(self, n_features: int, n_rbf: int) -> None:
        super().__init__()
        self.phi = nn.Sequential(
            nn.Linear(n_features, n_features), nn.SiLU(), nn.Linear(n_features, 3 * n_features)
        )
        self.filter = nn.Linear(n_rbf, 3 * n_features)

    def forward(self, s, v, edge_index, basis, unit):  # s (N,F) v (N,3,F) or None (= 0) unit (E,3)
        """``basis`` (E, K+1) = [rbf · f_cut, f_cut], so that W(r) = filter(rbf) · f_cut is one matmul
        with the bias as the last column (no (E, 3F) product with f_cut)."""
        i, j = edge_index
        weight = torch.cat([self.filter.weight, self.filter.bias[:, None]], dim=1)  # (3F, K+1)
        x = self.phi(s)[j] * nn.functional.linear(basis, weight)  # (E, 3F)
        x_vv, x_s, x_vs = torch.chunk(x, 3, dim=-1)  # (E, F) each
        dv = x_vs[:, None, :] * unit[:, :, None]  # (E, 3, F)
        if v is not None:  # the first layer's vectors are zero: skip the (E, 3, F) gather and product
            dv = dv + x_vv[:, None, :] * v[j]
        n = s.shape[0]
        dv = scatter_sum(dv, i, n)
        return s + scatter_sum(x_s, i, n), dv if v is None else v + dv


class Update(nn.Module):
    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.U = nn.Linear(n_features, n_features, bias=False)
        self.V = nn.Linear(n_features, n_features, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * n_features, n_features), nn.SiLU(), nn.Linear(n_features, 3 * n_features)
        )

    def forward(self, s, v):
        uv, vv = self.U(v), self.V(v)  # (N, 3, F)
        vv_norm = torch.sqrt((vv * vv).sum(dim=1) + _NORM_EPS)  # (N, F)
        a_vv, a_sv, a_ss = torch.chunk(self.mlp(torch.cat([s, vv_norm], dim=-1)), 3, dim=-1)
        return s + a_sv * (uv * vv).sum(dim=1) + a_ss, v + a_vv[:, None, :] * uv


class PaiNN(PotentialModel):
    """PaiNN with ``n_features`` channels, ``n_interactions`` message/update pairs, ``n_rbf`` radial
    functions; ``forces="direct"`` adds the direct (non-conservative) force head."""

    architecture = "painn"
    supports_direct_forces = True

    def __init__(
        self,
        species,
        cutoff: float = 5.0,
        n_features: int = 128,
        n_interactions: int = 3,
        n_rbf: int = 20,
        forces: str = "autograd",
        dtype: torch.dtype | str = torch.float64,
    ) -> None:
        super().__init__(species, cutoff, forces, dtype)
        self.n_features, self.n_interactions, self.n_rbf = n_features, n_interactions, n_rbf
        self.embedding = nn.Embedding(len(self.species), n_features)
        self.rbf = SineRBF(n_rbf, cutoff)
        self.messages = nn.ModuleList(Message(n_features, n_rbf) for _ in range(n_interactions))
        self.updates = nn.ModuleList(Update(n_features) for _ in range(n_interactions))
        self.readout = nn.Sequential(
            nn.Linear(n_features, n_features // 2), nn.SiLU(), nn.Linear(n_features // 2, 1)
        )
        if forces == "direct":
            self.force_gate = nn.Linear(n_features, n_features)
            self.force_out = nn.Linear(n_features, 1, bias=False)
        self.to(self._init_dtype)

    def hyperparameters(self) -> dict[str, Any]:
        return {
            **super().hyperparameters(),
            "n_features": self.n_features,
            "n_interactions": self.n_interactions,
            "n_rbf": self.n_rbf,
        }

    def atomic_outputs(self, species, edge_index, vectors, lengths):
        s = self.embedding(species)  # (N, F)
        v = None  # (N, 3, F) vectors, zero before the first message
        fcut = cosine_cutoff(lengths, self.cutoff)[:, None]  # (E, 1)
        basis = torch.cat([self.rbf(lengths) * fcut, fcut], dim=1)  # (E, K+1), see Message.forward
        unit = vectors / lengths[:, None]  # (E, 3)
        for message, update in zip(self.messages, self.updates, strict=True):
            s, v = message(s, v, edge_index, basis, unit)
            s, v = update(s, v)
        energy = self.readout(s).squeeze(-1)  # (N,)
        if self.forces_mode != "direct":
            return energy, None
        forces = self.force_out(v * self.force_gate(s)[:, None, :]).squeeze(-1)  # (N, 3)
        return energy, forces
