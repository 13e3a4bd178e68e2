"""Loss terms: supervised energy, forces and stress, and the PIWSL consistency losses PITC and PISC.

PIWSL (Takamoto, Zaverkin & Niepert, ICML 2025). For a structure A with positions R draw two zero-mean
displacements δ1, δ2 (``perturb.py``); C = R + δ1, B = R + δ2, δ3 = δ1 − δ2. With the model's energies
E and forces F = −∇E (every one carrying gradient; only the draws are constants):

    PITC:  r1 = E(C) − [E(A) − Σ_i δ1_i · ((1−k) F_i(A) + k F_i(C))]
    PISC:  r2 = E(C) − [E(B) − Σ_i δ3_i · ((1−k) F_i(B) + k F_i(C))]

Σ_i runs over the atoms of each structure (scatter by batch index), never over the batch. For a
conservative model r1(k=0) = ½ δ1ᵀ H δ1 + O(ε³) — a curvature penalty that biases toward softer
potentials — while r1(k=½) = O(ε³) (trapezoid rule). Each residual is normalised like the energy term
(per atom by default) and squared. The label-anchored PITC uses E_ref(A) (and F_ref(A) where it exists)
in place of E(A), F(A).
"""

from __future__ import annotations

import dataclasses

import torch

from .data import Graph, collate
from .errors import ConfigError
from .perturb import DISTRIBUTIONS, zero_mean_displacements


@dataclasses.dataclass
class LossConfig:
    """Weights and PIWSL settings. Energies are normalised per atom unless ``energy_norm="total"``.

    epsilon: displacement amplitude, Å (``epsilon_mode="absolute"``) or a fraction of each structure's
    shortest pair distance (``"relative"``). k ∈ [0, ½]: weight of the end-point force in the Taylor
    step; the default ½ (trapezoid) because k = 0 penalises curvature and softened the forces in our
    benchmark (benchmarks/results/cbs_routes.md), while k = ½ lowered force errors.
    pitc_anchor: "model" (E(A), F(A) predicted) or "label" (reference values at A).
    """

    energy: float = 1.0
    forces: float = 0.0
    stress: float = 0.0
    pitc: float = 0.0
    pisc: float = 0.0
    epsilon: float = 0.05
    epsilon_mode: str = "absolute"
    distribution: str = "uniform"
    k: float = 0.5
    pitc_anchor: str = "model"
    energy_norm: str = "per_atom"

    def __post_init__(self) -> None:
        for name in ("energy", "forces", "stress", "pitc", "pisc", "epsilon"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be ≥ 0, got {getattr(self, name)}")
        checks = {
            "epsilon_mode": ("absolute", "relative"),
            "distribution": DISTRIBUTIONS,
            "pitc_anchor": ("model", "label"),
            "energy_norm": ("per_atom", "total"),
        }
        for name, options in checks.items():
            if getattr(self, name) not in options:
                raise ConfigError(f"loss.{name}={getattr(self, name)!r}; use one of {options}")
        if not 0.0 <= self.k <= 0.5:
            raise ConfigError(f"loss.k must be in [0, 0.5], got {self.k}")

    @property
    def piwsl(self) -> bool:
        return self.pitc > 0 or self.pisc > 0


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[mask]``; exactly zero (with gradient graph intact) when nothing is masked in."""
    if not bool(mask.any()):
        return values.sum() * 0.0
    return values[mask].mean()


def energy_loss(pred: torch.Tensor, graph: Graph, per_atom: bool = True) -> torch.Tensor:
    """Mean squared energy error over structures with an energy label, per atom by default (eV²)."""
    err = pred - graph.energy
    if per_atom:
        err = err / graph.n_atoms.to(err.dtype)
    return _masked_mean(err**2, graph.energy_mask)


def forces_loss(pred: torch.Tensor, graph: Graph) -> torch.Tensor:
    """Mean squared force-component error over atoms with a force label ((eV/Å)²)."""
    return _masked_mean(((pred - graph.forces) ** 2).mean(dim=-1), graph.forces_mask)


def stress_loss(pred: torch.Tensor, graph: Graph) -> torch.Tensor:
    """Mean squared stress-component error over structures with a stress label ((eV/Å³)²)."""
    mask = graph.stress_mask
    err = torch.where(mask[:, None, None], pred - graph.stress, torch.zeros_like(graph.stress))
    return _masked_mean((err**2).mean(dim=(1, 2)), mask)


def taylor_residual(
    e_start: torch.Tensor,
    f_start: torch.Tensor,
    e_end: torch.Tensor,
    f_end: torch.Tensor,
    step: torch.Tensor,
    batch: torch.Tensor,
    k: float,
) -> torch.Tensor:
    """r = E_end − [E_start − Σ_i step_i · ((1−k) F_start,i + k F_end,i)] per structure.

    Shapes: energies (B,), forces and step (N, 3), batch (N,). Returns (B,) in eV. The sum over i
    runs over each structure's own atoms (index_add by ``batch``).
    """
    work = (step * ((1.0 - k) * f_start + k * f_end)).sum(dim=-1)  # (N,)
    per_structure = torch.zeros_like(e_end).index_add(0, batch, work)  # (B,)
    return e_end - (e_start - per_structure)


def _epsilon(graph: Graph, cfg: LossConfig) -> float | torch.Tensor:
    """ε in Å: absolute, or relative to each structure's shortest pair distance."""
    if cfg.epsilon_mode == "absolute":
        return cfg.epsilon
    i, j = graph.edge_index
    offsets = torch.einsum("ei,eij->ej", graph.shifts, graph.cell[graph.batch[i]])
    d = torch.linalg.vector_norm(graph.positions[j] - graph.positions[i] + offsets, dim=-1)
    dmin = torch.full((graph.n_structures,), float("inf"), dtype=d.dtype, device=d.device)
    dmin = dmin.scatter_reduce(0, graph.batch[i], d, reduce="amin")
    return cfg.epsilon * torch.where(torch.isfinite(dmin), dmin, torch.ones_like(dmin))


class LossFunction:
    """Total loss for one batch: Σ weights · terms, returning (loss, {term: value}).

    With PITC/PISC on, A, B and C are evaluated as one concatenated batch (one forward, one double
    backward). Displacements come from ``generator`` so runs are reproducible and resumable.
    """

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg

    def _normalise(self, r: torch.Tensor, graph: Graph) -> torch.Tensor:
        return r / graph.n_atoms.to(r.dtype) if self.cfg.energy_norm == "per_atom" else r

    def __call__(
        self, model: torch.nn.Module, graph: Graph, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        if not cfg.piwsl:
            out = model(graph, forces=cfg.forces > 0, stress=cfg.stress > 0, create_graph=True)
            return self._total(self._supervised(out, graph))

        n, dtype = graph.n_structures, graph.positions.dtype
        d1 = zero_mean_displacements(graph.batch, n, _epsilon(graph, cfg), cfg.distribution, generator, dtype)
        d2 = zero_mean_displacements(graph.batch, n, _epsilon(graph, cfg), cfg.distribution, generator, dtype)
        graph_c = graph.with_positions(graph.positions + d1, model.cutoff)
        # Forces (and their double backward) only where a term uses them: A always, B for PISC, and C
        # only when k > 0; with k = 0 the energy at C comes from a cheaper energy-only pass.
        with_forces = [graph] + (
            [graph.with_positions(graph.positions + d2, model.cutoff)] if cfg.pisc > 0 else []
        )
        if cfg.k > 0:
            with_forces.append(graph_c)
        out = model(collate(with_forces), forces=True, stress=cfg.stress > 0, create_graph=True)
        energies = torch.split(out["energy"], n)
        forces = torch.split(out["forces"], graph.positions.shape[0])
        out_a = {key: value[:n] if key in ("energy", "stress") else value for key, value in out.items()}
        out_a["forces"] = forces[0]
        terms = self._supervised(out_a, graph)
        if cfg.k > 0:
            e_c, f_c = energies[-1], forces[-1]
        else:
            e_c, f_c = model(graph_c, forces=False)["energy"], torch.zeros_like(forces[0])
        if cfg.pitc > 0:
            e_start, f_start = energies[0], forces[0]
            if cfg.pitc_anchor == "label":
                e_start = torch.where(graph.energy_mask, graph.energy, e_start)
                f_start = torch.where(graph.forces_mask[:, None], graph.forces, f_start)
            r1 = taylor_residual(e_start, f_start, e_c, f_c, d1, graph.batch, cfg.k)
            terms["pitc"] = (self._normalise(r1, graph) ** 2).mean()
        if cfg.pisc > 0:
            r2 = taylor_residual(energies[1], forces[1], e_c, f_c, d1 - d2, graph.batch, cfg.k)
            terms["pisc"] = (self._normalise(r2, graph) ** 2).mean()
        return self._total(terms)

    def _supervised(self, out: dict[str, torch.Tensor], graph: Graph) -> dict[str, torch.Tensor]:
        terms = {"energy": energy_loss(out["energy"], graph, self.cfg.energy_norm == "per_atom")}
        if "forces" in out:
            terms["forces"] = forces_loss(out["forces"], graph)
        if "stress" in out:
            terms["stress"] = stress_loss(out["stress"], graph)
        return terms

    def _total(self, terms: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        total = sum(getattr(self.cfg, name) * value for name, value in terms.items())
        return total, {name: float(value.detach()) for name, value in terms.items()}
