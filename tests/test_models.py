"""The contract every architecture satisfies: conservative forces and stress match finite differences,
and energies are invariant under rotation, translation, permutation and supercell repetition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

from pimlip_ase import PIMLIPCalculator, build_model
from pimlip_ase.data import atoms_to_graph
from pimlip_ase.errors import ConfigError, UnknownElementError

from .conftest import cu_cell

ARCHS = {
    "schnet": {"n_features": 16, "n_interactions": 2},
    "painn": {"n_features": 16, "n_interactions": 2},
}


def make_model(arch, species, forces="autograd", dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = build_model(arch, species=species, cutoff=5.0, forces=forces, dtype=dtype, **ARCHS[arch])
    # a non-trivial scale so forces are O(0.1–1 eV/Å) and the comparison is meaningful
    model.set_reference(np.linspace(-3.0, -1.0, len(species)), 2.0, -0.1)
    return model


def vacancy_cell():
    atoms = cu_cell()
    del atoms[5]
    atoms.rattle(0.08, seed=3)
    return atoms, ["Cu"]


def small_primitive():
    """Two atoms in a skewed cell far shorter than the 5 Å cutoff: many images of each atom."""
    atoms = bulk("Cu", "fcc", a=3.61) * (2, 1, 1)
    atoms.set_cell(
        atoms.cell[:] @ np.array([[1.0, 0.02, 0.0], [0.0, 0.98, 0.03], [0.01, 0.0, 1.02]]), scale_atoms=True
    )
    atoms.rattle(0.05, seed=4)
    return atoms, ["Cu"]


def free_molecule():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.03, seed=5)
    return atoms, ["H", "C", "O"]


SYSTEMS = {"vacancy": vacancy_cell, "primitive": small_primitive, "molecule": free_molecule}


@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("arch", ARCHS)
def test_forces_and_stress_match_finite_differences(arch, system):
    atoms, species = SYSTEMS[system]()
    atoms.calc = PIMLIPCalculator(make_model(arch, species))
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-3  # not trivially zero (tolerance below is 1e-5)
    numeric = calculate_numerical_forces(atoms, eps=1e-4)
    assert np.abs(forces - numeric).max() < 1e-5
    if atoms.pbc.all():
        stress = atoms.get_stress()
        assert np.abs(stress).max() > 1e-4
        numeric_s = calculate_numerical_stress(atoms, eps=1e-5)
        assert np.abs(stress - numeric_s).max() < 1e-6


def _energy(model, atoms):
    atoms = atoms.copy()
    atoms.calc = PIMLIPCalculator(model)
    return atoms.get_potential_energy(), atoms.get_forces()


@pytest.mark.parametrize("arch,forces", [("schnet", "autograd"), ("painn", "autograd"), ("painn", "direct")])
def test_rotation_translation_permutation_invariance(arch, forces):
    model = make_model(arch, ["H", "C", "O"], forces=forces)
    atoms, _ = free_molecule()
    e0, f0 = _energy(model, atoms)

    rot = atoms.copy()
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    rot.positions = rot.positions @ q.T
    e_rot, f_rot = _energy(model, rot)
    assert e_rot == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(f_rot, f0 @ q.T, atol=1e-10)

    moved = atoms.copy()
    moved.positions += np.array([3.1, -7.2, 0.4])
    e_tr, f_tr = _energy(model, moved)
    assert e_tr == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(f_tr, f0, atol=1e-10)

    perm = np.random.default_rng(1).permutation(len(atoms))
    e_p, f_p = _energy(model, atoms[perm])
    assert e_p == pytest.approx(e0, abs=1e-10)
    np.testing.assert_allclose(f_p, f0[perm], atol=1e-10)


@pytest.mark.parametrize("arch", ARCHS)
def test_supercell_energy_is_extensive(arch):
    model = make_model(arch, ["Cu"])
    prim = bulk("Cu", "fcc", a=3.61)
    prim.rattle(0.0)
    e1, _ = _energy(model, prim)
    super_ = prim * (2, 2, 2)
    e8, f8 = _energy(model, super_)
    assert e8 == pytest.approx(8 * e1, rel=1e-10, abs=1e-9)
    # a rattled cell and its explicit 2x1x1 repetition: same energy per atom, same forces per image
    cell, _ = small_primitive()
    e_c, f_c = _energy(model, cell)
    e_2, f_2 = _energy(model, cell * (2, 1, 1))
    assert e_2 == pytest.approx(2 * e_c, rel=1e-10)
    np.testing.assert_allclose(f_2, np.concatenate([f_c, f_c]), atol=1e-10)


@pytest.mark.parametrize("arch,forces", [("schnet", "autograd"), ("painn", "autograd"), ("painn", "direct")])
def test_energy_and_forces_are_continuous_where_a_pair_leaves_the_cutoff(arch, forces):
    """A dimer just inside and just outside r_c: every pair term (filter weights and biases alike)
    is cut off smoothly, so the energy matches two free atoms and the forces vanish."""
    model = make_model(arch, ["Cu"], forces=forces)
    rc = model.cutoff
    e_in, f_in = _energy(model, Atoms("Cu2", positions=[[0, 0, 0], [rc - 1e-6, 0, 0]]))
    e_out, f_out = _energy(model, Atoms("Cu2", positions=[[0, 0, 0], [rc + 1e-6, 0, 0]]))
    assert e_in == pytest.approx(e_out, abs=1e-9)
    np.testing.assert_allclose(f_in, f_out, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_float32_agrees_with_float64(arch):
    atoms, species = vacancy_cell()
    model64 = make_model(arch, species)
    model32 = make_model(arch, species, dtype=torch.float32)
    model32.load_state_dict(
        {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in model64.state_dict().items()}
    )
    assert model32.dtype == torch.float32 and next(model32.parameters()).dtype == torch.float32
    e64, f64 = _energy(model64, atoms)
    e32, f32 = _energy(model32, atoms)
    assert e32 == pytest.approx(e64, rel=1e-5)
    np.testing.assert_allclose(f32, f64, atol=1e-4)


def test_unknown_element_is_named():
    model = make_model("schnet", ["Cu"])
    atoms = cu_cell()
    atoms[0].symbol = "Au"
    atoms.calc = PIMLIPCalculator(model)
    with pytest.raises(UnknownElementError, match=r"Au.*\['Cu'\]"):
        atoms.get_potential_energy()


def test_bad_hyperparameters_and_names():
    with pytest.raises(ConfigError, match="available"):
        build_model("nequip", species=["Cu"])
    with pytest.raises(ConfigError, match="n_feature"):
        build_model("painn", species=["Cu"], n_feature=8)
    with pytest.raises(ConfigError, match="no direct force head"):
        build_model("schnet", species=["Cu"], forces="direct")
    with pytest.raises(ConfigError, match="unknown"):
        build_model("painn", species=["Xx"])


def test_direct_head_is_equivariant_but_not_a_gradient():
    model = make_model("painn", ["Cu"], forces="direct")
    assert not model.conservative
    atoms, _ = vacancy_cell()
    with pytest.warns(UserWarning, match="not the gradient"):
        atoms.calc = PIMLIPCalculator(model)
    forces = atoms.get_forces()
    numeric = calculate_numerical_forces(atoms, eps=1e-4)
    assert np.abs(forces).max() > 1e-3
    assert np.abs(forces - numeric).max() > 1e-3  # a direct head is not −∇E
    graph = atoms_to_graph(atoms, model.cutoff)
    with model.forces_from_energy():  # the same model's energy gradient, its head unused
        assert model.conservative
        gradient = model(graph)["forces"].detach().numpy()
        atoms.calc = PIMLIPCalculator(model)  # e.g. to run MD on the gradient
        np.testing.assert_allclose(atoms.get_forces(), gradient, atol=1e-12)
    np.testing.assert_allclose(gradient, numeric, atol=1e-6)
    assert model.forces_mode == "direct"  # the head serves again after the block
    np.testing.assert_allclose(model(graph)["forces"].detach().numpy(), forces, atol=1e-12)
