"""Error metrics of a model on labelled structures (used by training, `pimlip eval` and benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from .data import Graph, iterate_batches
from .keys import ENERGY, FORCES
from .losses import taylor_residual, work
from .models import PotentialModel
from .perturb import zero_mean_displacements

#: Metric names and units, in the order tables print them.
METRICS = {
    "energy_mae": "eV",
    "energy_rmse": "eV",
    "energy_per_atom_mae": "eV/atom",
    "energy_per_atom_rmse": "eV/atom",
    "forces_mae": "eV/Å",
    "forces_rmse": "eV/Å",
    "stress_mae": "eV/Å³",
    "stress_rmse": "eV/Å³",
}


def predict(
    model: PotentialModel,
    graphs: Sequence[Graph],
    batch_size: int = 16,
    forces: bool = True,
    stress: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """Model outputs for each batch of ``graphs`` (detached, in input order)."""
    outs = []
    for batch in iterate_batches(graphs, batch_size, shuffle=False):
        out = model(batch, forces=forces, stress=stress)
        outs.append({k: v.detach() for k, v in out.items()})
    return outs


def error_metrics(model: PotentialModel, graphs: Sequence[Graph], batch_size: int = 16) -> dict[str, float]:
    """MAE and RMSE of energy (per structure and per atom), forces (per component) and stress.

    Only labelled entries count; a metric with no labelled entry is NaN. Also returns ``n_energy``,
    ``n_forces`` (atoms) and ``n_stress``, and the mean squared errors ``mse_energy_per_atom``,
    ``mse_energy``, ``mse_forces``, ``mse_stress`` used for validation losses.
    """
    want_forces = any(bool(g.forces_mask.any()) for g in graphs)
    want_stress = any(bool(g.stress_mask.any()) for g in graphs)
    e_err, e_atom_err, f_err, s_err = [], [], [], []
    for batch in iterate_batches(graphs, batch_size, shuffle=False):
        out = model(batch, forces=want_forces, stress=want_stress)
        diff = (out["energy"].detach() - batch.energy.to(out["energy"].dtype))[batch.energy_mask]
        e_err.append(diff)
        e_atom_err.append(diff / batch.n_atoms[batch.energy_mask].to(diff.dtype))
        if want_forces:
            f_err.append(
                (out["forces"].detach() - batch.forces.to(diff.dtype))[batch.forces_mask].reshape(-1)
            )
        if want_stress:
            s_err.append(
                (out["stress"].detach() - batch.stress.to(diff.dtype))[batch.stress_mask].reshape(-1)
            )
    result: dict[str, float] = {}
    for name, errs, count_div in (
        ("energy", e_err, 1),
        ("energy_per_atom", e_atom_err, 1),
        ("forces", f_err, 3),
        ("stress", s_err, 9),
    ):
        err = torch.cat(errs) if errs else torch.zeros(0, dtype=torch.float64)
        nan = float("nan")
        result[f"{name}_mae"] = float(err.abs().mean()) if err.numel() else nan
        result[f"{name}_rmse"] = float(err.pow(2).mean().sqrt()) if err.numel() else nan
        result[f"mse_{name}"] = float(err.pow(2).mean()) if err.numel() else nan
        if name != "energy_per_atom":
            result[f"n_{name}"] = err.numel() // count_div
    return result


def taylor_consistency(
    model: PotentialModel,
    graphs: Sequence[Graph],
    epsilon: float = 0.05,
    k: float = 0.5,
    draws: int = 4,
    seed: int = 0,
    batch_size: int = 16,
) -> float:
    """RMS over structures and draws of the per-atom Taylor residual (eV/atom) of the model's own
    energies and forces: |E(R + δ) − E(R) + Σ_i δ_i · ((1−k) F_i(R) + k F_i(R + δ))| / n_atoms, with δ
    zero-mean random displacements of amplitude ``epsilon`` Å (the PITC residual, ``losses.py``).

    Needs no labels. For forces that are −∇E it is O(ε³) at k = ½ (curvature alone, O(ε²), at k = 0);
    a direct force head that disagrees with its energy leaves a residual O(ε). Energy-only training
    cannot see a direct head through validation energies; this can.
    """
    gen = torch.Generator().manual_seed(seed)
    squares = []
    for _ in range(draws):
        for batch in iterate_batches(graphs, batch_size, shuffle=False):
            n = batch.n_structures
            step = zero_mean_displacements(batch.batch, n, epsilon, "uniform", gen, batch.positions.dtype)
            moved = batch.with_positions(batch.positions + step, model.cutoff)
            ends = [model(g, forces=True) for g in (batch, moved)]
            e_a, e_c = (o["energy"].detach() for o in ends)
            w_a, w_c = (work(o["forces"].detach(), step, batch.batch, n) for o in ends)
            r = taylor_residual(e_a, w_a, e_c, w_c, k) / batch.n_atoms.to(e_a.dtype)
            squares.append(r**2)
    return float(torch.cat(squares).mean().sqrt())


def calculator_errors(
    calc: BaseCalculator, structures: Sequence[Atoms], offset: float = 0.0
) -> dict[str, float]:
    """Errors of any ASE calculator (a cheap method, a peer model, ours) against the ``REF_energy`` /
    ``REF_forces`` labels: energy MAE per structure (eV, after adding ``offset`` eV to each predicted
    energy) and per atom (eV/atom), and — when any structure has force labels — force MAE and RMSE per
    component (eV/Å)."""
    e_err, e_atom_err, f_err = [], [], []
    for ref in structures:
        atoms = ref.copy()
        atoms.calc = calc
        e_err.append(atoms.get_potential_energy() + offset - ref.info[ENERGY])
        e_atom_err.append(e_err[-1] / len(ref))
        if FORCES in ref.arrays:
            f_err.append((atoms.get_forces() - ref.arrays[FORCES]).ravel())
    out = {
        "energy_mae": float(np.mean(np.abs(e_err))),
        "energy_per_atom_mae": float(np.mean(np.abs(e_atom_err))),
    }
    if f_err:
        f = np.concatenate(f_err)
        out.update(forces_mae=float(np.mean(np.abs(f))), forces_rmse=float(np.sqrt(np.mean(f**2))))
    return out
