"""Structure generators: reproducibility, zero-mean rattles, strain bounds, normal-mode physics."""

import json

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.cluster import Icosahedron
from ase.optimize import BFGS
from pymatgen.core import Lattice, Molecule, Structure

from pimlip_ase.errors import ConfigError, InvalidStructureError
from pimlip_ase.workflow import generate as gen


@pytest.fixture
def cu_cell() -> Atoms:
    """2x2x2 conventional EMT Cu (32 atoms) carrying labels that generators must drop."""
    atoms = bulk("Cu", "fcc", a=3.59, cubic=True) * (2, 2, 2)
    atoms.info["REF_energy"] = -1.0
    atoms.arrays["REF_forces"] = np.ones((len(atoms), 3))
    return atoms


@pytest.fixture(scope="module")
def cu13() -> Atoms:
    """EMT-relaxed Cu13 icosahedron (a cluster: 3N − 6 = 33 vibrational modes)."""
    atoms = Icosahedron("Cu", 2)
    atoms.center(vacuum=5.0)
    atoms.calc = EMT()
    BFGS(atoms, logfile=None).run(fmax=1e-5)
    return atoms


def _assert_clean(atoms: Atoms, name: str) -> dict:
    assert atoms.calc is None
    assert "REF_energy" not in atoms.info and "REF_forces" not in atoms.arrays
    assert atoms.info["generator"] == name
    return json.loads(atoms.info["generator_params"])


@pytest.mark.parametrize("distribution", ["gaussian", "uniform"])
def test_rattle_reproducible_zero_mean(cu_cell, distribution):
    a = gen.rattle_structures(cu_cell, 3, 0.1, distribution, seed=4)
    b = gen.rattle_structures(cu_cell, 3, 0.1, distribution, seed=4)
    c = gen.rattle_structures(cu_cell, 3, 0.1, distribution, seed=5)
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x.positions, y.positions)
        assert not np.allclose(x.positions, z.positions)
        delta = x.positions - cu_cell.positions
        np.testing.assert_allclose(delta.mean(axis=0), 0.0, atol=1e-12)
        assert np.abs(delta).max() > 0.01
    assert not np.allclose(a[0].positions, a[1].positions)  # every draw is new
    params = _assert_clean(a[1], "rattle")
    assert params == {"distribution": distribution, "index": 1, "seed": 4, "sigma": 0.1}
    assert "parent" not in a[0].info


def test_rattle_amplitudes(cu_cell):
    big = cu_cell * (2, 2, 2)  # 256 atoms, 768 components per structure
    gauss = np.concatenate([s.positions - big.positions for s in gen.rattle_structures(big, 4, 0.05)])
    assert gauss.std() == pytest.approx(0.05, rel=0.05)
    unif = gen.rattle_structures(big, 1, 0.05, "uniform", parent="abc")[0]
    delta = unif.positions - big.positions
    assert np.abs(delta).max() <= 2 * 0.05  # |u − mean(u)| ≤ 2ε
    assert delta.std() == pytest.approx(0.05 / np.sqrt(3), rel=0.1)
    assert unif.info["parent"] == "abc"
    with pytest.raises(ConfigError, match="gaussian"):
        gen.rattle_structures(big, 1, 0.05, "cauchy")
    with pytest.raises(ConfigError):
        gen.rattle_structures(big, 0, 0.05)


def test_strain_magnitudes_and_scaled_positions(cu_cell):
    out = gen.strain_structures(cu_cell, 20, 0.03, seed=1)
    assert out[0].info["generator"] == "strain"
    largest = 0.0
    for s in out:
        strain = np.array(json.loads(s.info["generator_params"])["strain"])
        from_cell = np.linalg.solve(cu_cell.cell.array, s.cell.array) - np.eye(3)
        np.testing.assert_allclose(from_cell, strain, atol=1e-10)
        np.testing.assert_allclose(strain, strain.T)
        assert np.abs(strain).max() <= 0.03
        largest = max(largest, np.abs(strain).max())
        np.testing.assert_allclose(s.get_scaled_positions(), cu_cell.get_scaled_positions(), atol=1e-12)
    assert largest > 0.02  # the bound is used, not just respected
    again = gen.strain_structures(cu_cell, 20, 0.03, seed=1)
    np.testing.assert_array_equal(again[7].cell.array, out[7].cell.array)

    rattled = gen.strain_structures(cu_cell, 2, 0.02, rattle_sigma=0.05, seed=2)[0]
    strained = gen.strain_structures(cu_cell, 2, 0.02, seed=2)[0]
    np.testing.assert_allclose(rattled.cell.array, strained.cell.array)
    delta = rattled.positions - strained.positions
    np.testing.assert_allclose(delta.mean(axis=0), 0.0, atol=1e-12)
    assert delta.std() == pytest.approx(0.05, rel=0.3)
    with pytest.raises(ConfigError):
        gen.strain_structures(cu_cell, 1, 1.5)


def test_normal_modes_equipartition(cu13):
    modes = gen.harmonic_modes(cu13, EMT())
    assert modes.n_zero == 6 and len(modes.omega2) == 3 * 13 - 6
    assert modes.frequencies_THz.min() > 0.5  # a minimum: no soft or imaginary modes
    temperature = 20.0
    kt = units.kB * temperature
    samples = gen.normal_mode_structures(cu13, EMT(), 300, temperature, seed=3, modes=modes)
    assert json.loads(samples[0].info["generator_params"])["n_modes"] == 33
    e0 = cu13.get_potential_energy()
    de = []
    for s in samples:
        s.calc = EMT()
        de.append(s.get_potential_energy() - e0)
        np.testing.assert_allclose(s.get_center_of_mass(), cu13.get_center_of_mass(), atol=1e-10)
    # harmonic limit: <E_pot − E0> = (3N − 6)/2 kT; the statistical error is ~1.4 % here
    assert np.mean(de) / kt == pytest.approx((3 * 13 - 6) / 2, rel=0.06)
    again = gen.normal_mode_structures(cu13, EMT(), 2, temperature, seed=3, modes=modes)
    np.testing.assert_array_equal(again[1].positions, samples[1].positions)
    # quantum amplitudes (zero-point motion) are larger than classical ones at 20 K
    quantum = gen.normal_mode_structures(cu13, EMT(), 50, temperature, seed=3, modes=modes, quantum=True)
    classical = samples[:50]
    spread = [np.mean([np.sum((s.positions - cu13.positions) ** 2) for s in x]) for x in (quantum, classical)]
    assert spread[0] > 1.5 * spread[1]


def test_normal_modes_periodic_keep_rotations():
    cu = bulk("Cu", "fcc", a=3.59, cubic=True)
    modes = gen.harmonic_modes(cu, EMT())
    assert modes.n_zero == 3 and len(modes.omega2) == 9
    assert modes.frequencies_THz.min() > 1.0
    out = gen.normal_mode_structures(cu, EMT(), 2, 300.0, modes=modes, parent=12)
    assert out[0].info["parent"] == 12 and out[0].info["generator"] == "normal_modes"


def test_normal_modes_warn_on_imaginary():
    cu = bulk("Cu", "bcc", a=2.87, cubic=True) * (2, 2, 2)  # BCC Cu is unstable under EMT
    with pytest.warns(UserWarning, match="imaginary"):
        gen.normal_mode_structures(cu, EMT(), 1, 100.0)


def test_md_snapshots(cu_cell):
    out = gen.md_structures(cu_cell, EMT(), 300.0, 3, interval=5, equilibration_steps=5, seed=2)
    assert len(out) == 3
    params = [_assert_clean(s, "md") for s in out]
    assert [p["step"] for p in params] == [10, 15, 20]
    assert all(np.all(np.isfinite(s.positions)) for s in out)
    assert not np.allclose(out[0].positions, cu_cell.positions)
    again = gen.md_structures(cu_cell, EMT(), 300.0, 3, interval=5, equilibration_steps=5, seed=2)
    np.testing.assert_array_equal(again[2].positions, out[2].positions)


def test_vacancies():
    cu = bulk("Cu", "fcc", a=3.59, cubic=True)
    out = gen.vacancy_structures(cu, supercell=2, parent=1)
    assert len(out) == 1 and len(out[0]) == 31  # one symmetry-distinct site
    assert json.loads(out[0].info["generator_params"])["element"] == "Cu"
    assert out[0].info["parent"] == 1
    nacl = bulk("NaCl", "rocksalt", a=5.64)
    both = gen.vacancy_structures(nacl, supercell=(2, 2, 2))
    assert sorted(s.get_chemical_formula() for s in both) == ["Cl7Na8", "Cl8Na7"]
    chosen = gen.vacancy_structures(cu, supercell=[[2, 0, 0], [0, 2, 0], [0, 0, 1]], indices=[3, 5])
    assert [len(s) for s in chosen] == [15, 15]
    with pytest.raises(ConfigError):
        gen.vacancy_structures(cu, indices=[99])


@pytest.mark.parametrize("placement", ["void", "random"])
def test_interstitials(placement):
    cu = bulk("Cu", "fcc", a=3.59, cubic=True)
    out = gen.interstitial_structures(cu, "H", 3, supercell=2, placement=placement, seed=7)
    again = gen.interstitial_structures(cu, "H", 3, supercell=2, placement=placement, seed=7)
    for s, t in zip(out, again, strict=True):
        assert len(s) == 33 and s[-1].symbol == "H"
        np.testing.assert_array_equal(s.positions, t.positions)
        params = json.loads(s.info["generator_params"])
        nearest = s.get_distances(32, list(range(32)), mic=True).min()
        assert nearest == pytest.approx(params["nearest_distance"])
        assert nearest >= params["min_distance"]
    if placement == "void":  # the octahedral hole of FCC Cu is a/2 = 1.795 Å from its neighbours
        assert params["nearest_distance"] > 1.5
    with pytest.raises(InvalidStructureError, match="interstitial"):
        gen.interstitial_structures(cu, "Cu", 1, placement=placement, min_distance=2.5)
    with pytest.raises(ConfigError):
        gen.interstitial_structures(cu, "Xx", 1)


def test_pymatgen_inputs():
    structure = Structure(
        Lattice.cubic(3.59), ["Cu"] * 4, [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    )
    rattled = gen.rattle_structures(structure, 2, 0.05)
    assert len(rattled) == 2 and rattled[0].pbc.all() and len(rattled[0]) == 4
    assert len(gen.strain_structures(structure, 1, 0.01)[0]) == 4
    assert len(gen.vacancy_structures(structure, supercell=2)[0]) == 31
    molecule = Molecule(["C", "O"], [[0, 0, 0], [0, 0, 1.13]])
    mol = gen.rattle_structures(molecule, 1, 0.05)[0]
    assert mol.get_chemical_formula() == "CO" and not mol.pbc.any()
    with pytest.raises(InvalidStructureError, match="pymatgen"):
        gen.rattle_structures("Cu", 1, 0.1)
