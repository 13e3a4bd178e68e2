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

Only the work terms W(X, δ) = Σ_i δ_i · F_i(X) enter the residuals, and for a conservative model W is
a directional derivative, −dE(X + tδ)/dt at t = 0. ``derivatives="finite_difference"`` takes it from
one more energy at X + hδ (h = ``FD_STEP``) instead of from forces: energy-only passes replace the
double backward through forces at A, B and C, which is what makes a PIWSL step cost less than two
energy+force steps. ``"autograd"`` takes W from the model's forces; it is the only choice for
direct-force heads (their F is not −∇E) and float32 models (round-off); ``"auto"`` picks for you.
"""

from __future__ import annotations

import dataclasses

import torch

from .data import Graph, collate
from .errors import ConfigError
from .models.base import scatter_sum
from .perturb import DISTRIBUTIONS, zero_mean_displacements

DERIVATIVES = ("auto", "finite_difference", "autograd")
#: Finite-difference step as a fraction of the displacement δ. The one-sided error of W is ½h δᵀHδ,
#: h times the k = 0 residual; at k = ½ the leading errors of the two ends cancel, leaving h · O(ε³),
#: again ~h of that residual (the loss agrees with autograd to a few 1e-4). In float64 the round-off,
#: ~1e-16 |E_i| / h per atom, stays orders of magnitude below.
FD_STEP = 1e-4


@dataclasses.dataclass
class LossConfig:
    """Weights and PIWSL settings. Energies are normalised per atom unless ``energy_norm="total"``.

    epsilon: displacement amplitude, Å (``epsilon_mode="absolute"``) or a fraction of each structure's
    shortest pair distance (``"relative"``). k ∈ [0, ½]: weight of the end-point force in the Taylor
    step; the default ½ (trapezoid) because k = 0 penalises curvature and softened the forces in our
    benchmark (benchmarks/results/cbs_routes.md), while k = ½ lowered force errors.
    pitc_anchor: "model" (E(A), F(A) predicted) or "label" (reference values at A).
    derivatives: how the PIWSL work terms δ · F are taken: "finite_difference", "autograd" or "auto"
    (finite differences for conservative float64 models, else autograd); see the module docstring.
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
    derivatives: str = "auto"

    def __post_init__(self) -> None:
        for name in ("energy", "forces", "stress", "pitc", "pisc", "epsilon"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be ≥ 0, got {getattr(self, name)}")
        checks = {
            "epsilon_mode": ("absolute", "relative"),
            "distribution": DISTRIBUTIONS,
            "pitc_anchor": ("model", "label"),
            "energy_norm": ("per_atom", "total"),
            "derivatives": DERIVATIVES,
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


def work(forces: torch.Tensor, step: torch.Tensor, batch: torch.Tensor, n_structures: int) -> torch.Tensor:
    """W = Σ_i step_i · F_i per structure (eV): forces and step (N, 3), batch (N,) -> (B,).

    The sum runs over each structure's own atoms (index_add by ``batch``), never over the batch.
    """
    return scatter_sum((step * forces).sum(dim=-1), batch, n_structures)


def taylor_residual(
    e_start: torch.Tensor, w_start: torch.Tensor, e_end: torch.Tensor, w_end: torch.Tensor, k: float
) -> torch.Tensor:
    """r = E_end − [E_start − ((1−k) W_start + k W_end)] per structure (B,), eV.

    W_X = Σ_i step_i · F_i(X) is the work term at either end of the step (see :func:`work`).
    """
    return e_end - (e_start - ((1.0 - k) * w_start + k * w_end))


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

    With PITC/PISC on, the perturbed copies are evaluated energy-only, with finite-difference work
    terms, or as one concatenated batch with forces and a double backward (``LossConfig.derivatives``).
    Displacements come from ``generator`` so runs are reproducible and resumable.
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
        if self._finite_difference(model):
            terms, ends = self._ends_by_finite_differences(model, graph, d1, d2)
        else:
            terms, ends = self._ends_by_autograd(model, graph, d1, d2)
        if cfg.pitc > 0:
            e_start, w_start = ends["E_A"], ends["W_A1"]
            if cfg.pitc_anchor == "label":
                e_start = torch.where(graph.energy_mask, graph.energy, e_start)
                has_forces = scatter_sum(graph.forces_mask.to(dtype), graph.batch, n) > 0
                w_start = torch.where(has_forces, work(graph.forces, d1, graph.batch, n), w_start)
            r1 = taylor_residual(e_start, w_start, ends["E_C"], ends["W_C1"], cfg.k)
            terms["pitc"] = (self._normalise(r1, graph) ** 2).mean()
        if cfg.pisc > 0:
            r2 = taylor_residual(ends["E_B"], ends["W_B3"], ends["E_C"], ends["W_C3"], cfg.k)
            terms["pisc"] = (self._normalise(r2, graph) ** 2).mean()
        return self._total(terms)

    def _finite_difference(self, model: torch.nn.Module) -> bool:
        """Whether the work terms come from energy differences (see ``LossConfig.derivatives``)."""
        usable = model.conservative and model.dtype == torch.float64
        if self.cfg.derivatives == "finite_difference" and not usable:
            raise ConfigError(
                "loss.derivatives='finite_difference' needs a conservative float64 model "
                f"(this one: forces={model.forces_mode!r}, dtype={model.dtype}); use 'autograd' or 'auto'"
            )
        return self.cfg.derivatives != "autograd" and usable

    def _ends_by_autograd(self, model, graph: Graph, d1: torch.Tensor, d2: torch.Tensor):
        """Supervised terms and the energies/work terms at A, B, C, with W from the model's forces.

        A, B (for PISC) and C (when k > 0) go through one concatenated forward with forces and their
        double backward; with k = 0 the energy at C comes from a cheaper energy-only pass.
        """
        cfg, n, batch = self.cfg, graph.n_structures, graph.batch
        graph_c = graph.with_positions(graph.positions + d1, model.cutoff)
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
        if cfg.k > 0:
            e_c, f_c = energies[-1], forces[-1]
        else:
            e_c, f_c = model(graph_c, forces=False)["energy"], torch.zeros_like(forces[0])
        d3 = d1 - d2
        ends = {"E_A": energies[0], "W_A1": work(forces[0], d1, batch, n), "E_C": e_c}
        ends["W_C1"] = work(f_c, d1, batch, n)
        if cfg.pisc > 0:
            ends |= {
                "E_B": energies[1],
                "W_B3": work(forces[1], d3, batch, n),
                "W_C3": work(f_c, d3, batch, n),
            }
        return self._supervised(out_a, graph), ends

    def _ends_by_finite_differences(self, model, graph: Graph, d1: torch.Tensor, d2: torch.Tensor):
        """Supervised terms and the energies/work terms at A, B, C, with W(X, δ) ≈ −[E(X + hδ) − E(X)]/h.

        A is evaluated as the supervised terms need (forces only with a force loss; at k = 0 W at A is
        then taken from them). Every other point is one energy-only forward: C, A + hδ1 (PITC), B and
        B + hδ3 (PISC), and with k > 0 C − hδ1 (PITC) and C − hδ3 (PISC). Differences are taken atom
        by atom before the sum over the structure. E_i includes the per-element E0, so the round-off
        is ~1e-16 |E_i| / h: 2e-9 eV per atom at |E_i| = 2 keV (all-electron O), but 5e-7 eV at
        50 keV (all-electron heavy elements) — there prefer ``derivatives="autograd"``.
        """
        cfg, n, batch, h = self.cfg, graph.n_structures, graph.batch, FD_STEP
        x, d3 = graph.positions, d1 - d2
        out_a = model(graph, forces=cfg.forces > 0, stress=cfg.stress > 0, create_graph=True)
        points = {"C": x + d1}
        # W at A from A's forces when a force loss computed them — but at k = ½ from energies too, so
        # that the O(h) errors of the two ends cancel
        exact_a = "forces" in out_a and cfg.k == 0
        if cfg.pitc > 0 and not exact_a:
            points["A+1"] = x + h * d1
        if cfg.pisc > 0:
            points |= {"B": x + d2, "B+3": x + d2 + h * d3}
        if cfg.k > 0 and cfg.pitc > 0:
            points["C-1"] = x + d1 - h * d1
        if cfg.k > 0 and cfg.pisc > 0:
            points["C-3"] = x + d1 - h * d3
        # one forward per point: measured as fast as one concatenated batch or faster (PaiNN, k = ½),
        # with tensors a fraction of the size
        e = {
            name: model(graph.with_positions(p, model.cutoff), forces=False)["energies"]
            for name, p in points.items()
        }
        e["A"] = out_a["energies"]

        def slope(lo: str, hi: str) -> torch.Tensor:  # −[E(hi) − E(lo)] / h: W along the step
            return -scatter_sum(e[hi] - e[lo], batch, n) / h

        ends = {"E_A": out_a["energy"], "E_C": scatter_sum(e["C"], batch, n)}
        if cfg.pitc > 0:
            ends["W_A1"] = work(out_a["forces"], d1, batch, n) if exact_a else slope("A", "A+1")
            ends["W_C1"] = slope("C-1", "C") if cfg.k > 0 else torch.zeros_like(ends["E_C"])
        if cfg.pisc > 0:
            ends |= {"E_B": scatter_sum(e["B"], batch, n), "W_B3": slope("B", "B+3")}
            ends["W_C3"] = slope("C-3", "C") if cfg.k > 0 else torch.zeros_like(ends["E_C"])
        return self._supervised(out_a, graph), ends

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
