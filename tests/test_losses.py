"""PITC/PISC: exact results on an analytic potential, and one regression test per known pitfall of
the public reference implementation (see the module docstring of pimlip_ase.losses)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pimlip_ase import build_model
from pimlip_ase.data import atoms_to_graph, collate
from pimlip_ase.errors import ConfigError
from pimlip_ase.losses import LossConfig, LossFunction, taylor_residual, work
from pimlip_ase.perturb import zero_mean_displacements
from pimlip_ase.training import load_config

from .conftest import cu_cell


def harmonic(x, hessian):
    """E = ½ xᵀHx per structure, F = −Hx. x: (N, 3) for one structure."""
    flat = x.reshape(-1)
    return 0.5 * flat @ hessian @ flat, -(hessian @ flat).reshape(-1, 3)


@pytest.fixture()
def spd_hessian():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 12))
    return torch.tensor(a @ a.T + 12 * np.eye(12))


def test_harmonic_residuals_exact(spd_hessian):
    batch = torch.zeros(4, dtype=torch.long)
    gen = torch.Generator().manual_seed(1)
    x_a = torch.randn((4, 3), generator=gen, dtype=torch.float64)
    delta = zero_mean_displacements(batch, 1, 0.05, generator=gen)
    e_a, f_a = harmonic(x_a, spd_hessian)
    e_c, f_c = harmonic(x_a + delta, spd_hessian)
    # k = ½ (trapezoid) is exact for a quadratic energy
    w_a, w_c = work(f_a, delta, batch, 1), work(f_c, delta, batch, 1)
    r_half = taylor_residual(e_a[None], w_a, e_c[None], w_c, k=0.5)
    assert abs(float(r_half)) < 1e-12
    # k = 0 leaves exactly the curvature term ½ δᵀHδ
    r0 = taylor_residual(e_a[None], w_a, e_c[None], w_c, k=0.0)
    d = delta.reshape(-1)
    assert float(r0) == pytest.approx(float(0.5 * d @ spd_hessian @ d), rel=1e-12)
    assert float(r0) > 0


def test_pitfall_1_and_2_sums_are_per_structure_without_padding(spd_hessian):
    """Residuals of a batch of unequal-size structures equal those computed one structure at a time."""
    sizes = [4, 2, 3]
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    gen = torch.Generator().manual_seed(2)
    delta = zero_mean_displacements(batch, 3, 0.05, generator=gen)
    x = torch.randn((9, 3), generator=gen, dtype=torch.float64)
    es, fs, ecs, fcs = [], [], [], []
    for s, n in enumerate(sizes):
        h = spd_hessian[: 3 * n, : 3 * n]
        e, f = harmonic(x[batch == s], h)
        ec, fc = harmonic(x[batch == s] + delta[batch == s], h)
        es.append(e), fs.append(f), ecs.append(ec), fcs.append(fc)
    batched = taylor_residual(
        torch.stack(es),
        work(torch.cat(fs), delta, batch, 3),
        torch.stack(ecs),
        work(torch.cat(fcs), delta, batch, 3),
        0.5,
    )
    for s in range(3):
        one = torch.zeros(sizes[s], dtype=torch.long)
        single = taylor_residual(
            es[s][None],
            work(fs[s], delta[batch == s], one, 1),
            ecs[s][None],
            work(fcs[s], delta[batch == s], one, 1),
            0.5,
        )
        assert float(batched[s]) == pytest.approx(float(single), rel=1e-12)


def test_pitfall_2_batching_different_sizes_adds_no_atoms():
    small, big = cu_cell((1, 1, 1)), cu_cell((2, 1, 1))
    g = collate([atoms_to_graph(small, 4.0), atoms_to_graph(big, 4.0)])
    assert g.positions.shape[0] == len(small) + len(big)
    assert g.n_atoms.tolist() == [4, 8]


def test_pitfall_3_misspelt_key_is_an_error_not_a_silent_default():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['kk'\].*'k'"):
        load_config({"data": {"train": "x.extxyz"}, "loss": {"kk": 0.5}})
    with pytest.raises(ConfigError, match="k must be in"):
        LossConfig(k=0.7)


def test_pitfall_4_displacements_scale_linearly_in_epsilon():
    batch = torch.zeros(20000, dtype=torch.long)
    for eps in (0.05, 0.2):
        d = zero_mean_displacements(batch, 1, eps, "uniform", torch.Generator().manual_seed(0))
        # u ~ U(−1, 1) has standard deviation 1/√3, so δ has ε/√3 (not ε²/√3)
        assert float(d.std()) == pytest.approx(eps / np.sqrt(3), rel=0.02)
        assert float(d.abs().max()) <= 2 * eps
        assert torch.allclose(d.mean(0), torch.zeros(3, dtype=d.dtype), atol=1e-12)
    g = torch.Generator().manual_seed(0)
    d = zero_mean_displacements(batch, 1, 0.1, "gaussian", g)
    assert float(d.std()) == pytest.approx(0.1, rel=0.02)


@pytest.mark.parametrize(
    ("derivatives", "b_block", "c_block", "n_blocks"),
    [("autograd", 1, 2, 3), ("finite_difference", 3, 1, 5)],  # A, B, C  |  A, then C, A+hδ1, B, B+hδ3
)
def test_pitfall_4_perturbed_copy_is_displaced_by_exactly_delta(derivatives, b_block, c_block, n_blocks):
    """The structures B and C the loss evaluates sit at R + δ with |δ| ~ ε, not at R + ε·δ."""
    torch.manual_seed(0)
    atoms = cu_cell()
    atoms.info["REF_energy"] = -1.0
    graph = atoms_to_graph(atoms, 4.0)
    model = build_model("schnet", species=["Cu"], cutoff=4.0, n_features=8, n_interactions=1)
    seen = []
    original_forward = model.forward

    def spy(g, **kw):
        seen.append(g.positions.detach().clone())
        return original_forward(g, **kw)

    model.forward = spy
    gen = torch.Generator().manual_seed(5)
    LossFunction(LossConfig(pitc=1.0, pisc=1.0, epsilon=0.1, k=0.0, derivatives=derivatives))(
        model, graph, gen
    )
    n = len(atoms)
    positions = torch.cat(seen)
    assert positions.shape[0] == n_blocks * n
    d_b, d_c = (positions[i * n : (i + 1) * n] - positions[:n] for i in (b_block, c_block))
    for d in (d_b, d_c):
        assert 0.1 / np.sqrt(3) * 0.7 < float(d.std()) < 0.1 / np.sqrt(3) * 1.3


def test_pitfall_5_energies_in_kcal_per_mol_are_converted_once():
    from ase import units

    atoms = cu_cell((1, 1, 1))
    atoms.info["REF_energy"] = -100.0
    atoms.arrays["REF_forces"] = np.ones((4, 3))
    from pimlip_ase.data import LabelKeys

    g = atoms_to_graph(atoms, 4.0, LabelKeys(energy_unit="kcal/mol"))
    kcal = units.kcal / units.mol
    assert float(g.energy) == pytest.approx(-100.0 * kcal)
    assert float(g.forces[0, 0]) == pytest.approx(kcal)
    with pytest.raises(ConfigError, match="energy_unit"):
        LabelKeys(energy_unit="kcal")


@pytest.mark.parametrize("derivatives", ["autograd", "finite_difference"])
def test_piwsl_losses_train_the_parameters(derivatives):
    torch.manual_seed(0)
    atoms = cu_cell()
    atoms.rattle(0.1, seed=0)
    graph = collate([atoms_to_graph(atoms, 4.0), atoms_to_graph(cu_cell((1, 1, 2)), 4.0)])
    model = build_model("painn", species=["Cu"], cutoff=4.0, n_features=8, n_interactions=1)
    model.set_reference([0.0], 1.0, 0.0)
    for term in ("pitc", "pisc"):
        fn = LossFunction(LossConfig(energy=0.0, **{term: 1.0}, epsilon=0.1, derivatives=derivatives))
        loss, terms = fn(model, graph, torch.Generator().manual_seed(0))
        assert terms[term] > 0 and set(terms) - {"forces"} == {"energy", term}
        model.zero_grad()
        loss.backward()
        # the filter weights act only through pair distances: they get gradient via the work terms
        grad = model.messages[0].filter.weight.grad
        assert grad is not None and float(grad.abs().sum()) > 0


def test_label_anchored_pitc_uses_reference_energy():
    torch.manual_seed(0)
    atoms = cu_cell()
    atoms.rattle(0.05, seed=1)
    atoms.info["REF_energy"] = 123.0  # absurd on purpose: the anchored residual must see it
    graph = atoms_to_graph(atoms, 4.0)
    model = build_model("schnet", species=["Cu"], cutoff=4.0, n_features=8, n_interactions=1)
    plain = LossFunction(LossConfig(energy=0.0, pitc=1.0))(model, graph, torch.Generator().manual_seed(0))[1]
    anchored = LossFunction(LossConfig(energy=0.0, pitc=1.0, pitc_anchor="label"))(
        model, graph, torch.Generator().manual_seed(0)
    )[1]
    assert anchored["pitc"] > 1e3 * plain["pitc"]


def test_masked_labels_do_not_enter_the_loss():
    torch.manual_seed(0)
    with_e = cu_cell()
    with_e.info["REF_energy"] = -10.0
    without = cu_cell()
    without.rattle(0.1, seed=2)  # no label at all
    model = build_model("schnet", species=["Cu"], cutoff=4.0, n_features=8, n_interactions=1)
    fn = LossFunction(LossConfig(energy=1.0, forces=1.0))
    both = fn(model, collate([atoms_to_graph(with_e, 4.0), atoms_to_graph(without, 4.0)]))[1]
    alone = fn(model, atoms_to_graph(with_e, 4.0))[1]
    assert both["energy"] == pytest.approx(alone["energy"], rel=1e-12)
    assert both["forces"] == 0.0


def _piwsl_terms_and_gradient(model, graph, **loss):
    fn = LossFunction(LossConfig(**loss))
    total, terms = fn(model, graph, torch.Generator().manual_seed(3))
    model.zero_grad()
    total.backward()
    return terms, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "loss",
    [
        {"energy": 0.0, "pitc": 1.0, "pisc": 1.0, "k": 0.0},
        {"energy": 0.0, "pitc": 1.0, "pisc": 1.0, "k": 0.5},
        {"energy": 0.0, "forces": 1.0, "pitc": 1.0, "pisc": 0.1, "k": 0.5},
        {"energy": 0.0, "pitc": 1.0, "k": 0.5, "pitc_anchor": "label"},
        {"energy": 0.0, "forces": 1.0, "pitc": 1.0, "k": 0.0, "pitc_anchor": "label"},
        {"energy": 0.0, "pisc": 1.0, "k": 0.5},
        {"energy": 0.0, "stress": 1.0, "pitc": 1.0, "pisc": 0.1, "k": 0.5},
    ],
)
def test_finite_difference_work_terms_match_autograd(loss):
    """Energy-only passes give the PITC/PISC residuals and their parameter gradients of the double
    backward through forces, on a periodic cell and a molecule batched together."""
    from ase.build import molecule

    torch.manual_seed(0)
    cu = cu_cell()
    cu.rattle(0.05, seed=4)
    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=5)
    bare = cu_cell((1, 1, 2))  # no labels at all: the label-anchored PITC falls back to the model
    bare.rattle(0.05, seed=6)
    for i, atoms in enumerate((cu, mol)):
        atoms.info["REF_energy"] = -1.0 - i
        atoms.arrays["REF_forces"] = np.full((len(atoms), 3), 0.1)
    cu.info["REF_stress"] = np.full(6, 0.01)
    model = build_model("painn", species=["C", "Cu", "H", "O"], cutoff=4.0, n_features=16, n_interactions=2)
    model.set_reference([-1000.0, -1500.0, -13.0, -2000.0], 0.3, 0.1)  # keV-scale E0 as for real data
    graph = collate([atoms_to_graph(a, 4.0) for a in (cu, mol, bare)])
    t_ad, g_ad = _piwsl_terms_and_gradient(model, graph, derivatives="autograd", epsilon=0.1, **loss)
    t_fd, g_fd = _piwsl_terms_and_gradient(model, graph, derivatives="finite_difference", epsilon=0.1, **loss)
    for term in ("pitc", "pisc"):
        if term in loss:
            assert t_fd[term] > 1e-10
            assert t_fd[term] == pytest.approx(t_ad[term], rel=1e-3)
    # one-sided differences with h = 1e-4 of δ: both agree to a few 1e-4 of the residual, and so
    # does the gradient of every parameter tensor that gets one
    assert g_fd.keys() == g_ad.keys()
    largest = max(float(g.norm()) for g in g_ad.values())
    for name, g in g_ad.items():
        if float(g.norm()) > 1e-6 * largest:
            assert float((g_fd[name] - g).norm()) < 5e-3 * float(g.norm()), name


def test_derivatives_auto_uses_autograd_where_finite_differences_cannot_serve():
    graph = atoms_to_graph(cu_cell(), 4.0)
    direct = build_model("painn", species=["Cu"], cutoff=4.0, n_features=8, n_interactions=1, forces="direct")
    single = build_model(
        "schnet", species=["Cu"], cutoff=4.0, n_features=8, n_interactions=1, dtype="float32"
    )
    plain = build_model("schnet", species=["Cu"], cutoff=4.0, n_features=8, n_interactions=1)
    auto = LossFunction(LossConfig(pitc=1.0))
    assert not auto._finite_difference(direct) and not auto._finite_difference(single)
    assert auto._finite_difference(plain)
    for model in (direct, single):
        with pytest.raises(ConfigError, match="finite_difference.*conservative float64"):
            LossFunction(LossConfig(pitc=1.0, derivatives="finite_difference"))(model, graph)
        assert auto(model, graph, torch.Generator().manual_seed(0))[1]["pitc"] >= 0
    with pytest.raises(ConfigError, match="derivatives"):
        LossConfig(derivatives="numeric")
