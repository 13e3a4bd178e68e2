"""Labellers: ASE calculators (EMT, tblite) and PySCF single points / composites, against direct calls."""

import pickle

import ase.units
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from pimlip_ase.errors import ConfigError, LabellingError
from pimlip_ase.workflow.cbs import combine, parse_spec
from pimlip_ase.workflow.label import (
    STRUCTURE_ID,
    ASELabeller,
    Labeller,
    LabelResult,
    PySCFLabeller,
    make_labeller,
)

HARTREE = ase.units.Hartree


def _water() -> Atoms:
    water = molecule("H2O")
    water.positions[1] += [0.03, -0.02, 0.01]  # no symmetry, so every force component is tested
    return water


def _pyscf_mol(atoms: Atoms, basis: str, spin: int = 0):
    from pyscf import gto

    atom = [(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)]
    return gto.M(atom=atom, basis=basis, unit="Angstrom", spin=spin, verbose=0)


# --------------------------------------------------------------------------------------------
# ASE calculators


def test_emt_labels_match_direct_emt_with_stress_only_for_3d_pbc():
    cell = bulk("Cu", cubic=True)
    cell.rattle(0.05, seed=3)
    labeller = ASELabeller("emt")
    result = labeller.label(cell)
    direct = cell.copy()
    direct.calc = EMT()
    assert result.energy == pytest.approx(direct.get_potential_energy(), abs=1e-12)
    np.testing.assert_allclose(result.forces, direct.get_forces(), atol=1e-12)
    np.testing.assert_allclose(result.stress, direct.get_stress(voigt=True), atol=1e-12)
    assert result.record["method"] == "emt" and result.record["program_version"] == ase.__version__
    assert result.record["wall_time_s"] >= 0 and cell.calc is None  # the input is left alone
    slab = cell.copy()
    slab.pbc = [True, True, False]
    assert labeller.label(slab).stress is None
    assert isinstance(labeller, Labeller)
    assert pickle.loads(pickle.dumps(labeller)).label(cell).energy == result.energy


def test_factory_labeller_and_its_errors():
    labeller = ASELabeller(EMT)
    assert labeller.method == "EMT"
    assert labeller.label(bulk("Al", cubic=True)).forces.shape == (4, 3)
    with pytest.raises(ConfigError, match="not picklable"):
        ASELabeller(lambda: EMT(), method="emt")
    with pytest.raises(ConfigError, match="emt, gfn2-xtb, gfn1-xtb, xtb"):
        ASELabeller("lj")
    unsupported = Atoms("U2", positions=[[0, 0, 0], [0, 0, 2.5]])
    unsupported.info[STRUCTURE_ID] = 7
    with pytest.raises(LabellingError, match=r"emt failed on U2 \(row 7\)"):
        ASELabeller("emt").label(unsupported)


def test_make_labeller_names():
    assert make_labeller(" EMT ").method == "emt"
    with pytest.raises(ConfigError) as info:
        make_labeller("dft")
    assert "'dft'" in str(info.value) and "pyscf:" in str(info.value) and "emt" in str(info.value)


@pytest.mark.xtb
def test_gfn2_xtb_matches_direct_tblite():
    pytest.importorskip("tblite")
    from tblite.ase import TBLite

    water = _water()
    result = make_labeller("xtb").label(water)
    direct = water.copy()
    direct.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert result.energy == pytest.approx(direct.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(result.forces, direct.get_forces(), atol=1e-7)
    assert result.stress is None and result.record["program"].startswith("tblite")
    assert make_labeller("gfn1-xtb").label(water).energy != pytest.approx(result.energy, abs=1e-3)


# --------------------------------------------------------------------------------------------
# PySCF


@pytest.mark.cbs
def test_pyscf_hf_and_mp2_energies_match_direct_pyscf():
    pytest.importorskip("pyscf")
    from pyscf import mp, scf
    from pyscf.data.elements import chemcore

    water = _water()
    mf = scf.RHF(_pyscf_mol(water, "cc-pvdz"))
    mf.conv_tol = 1e-10
    e_hf = mf.kernel()
    e_mp2_fc = mp.MP2(mf, frozen=chemcore(mf.mol)).kernel()[0]
    e_mp2_ae = mp.MP2(mf).kernel()[0]
    hf = make_labeller("pyscf:hf/cc-pvdz").label(water)
    assert hf.energy / HARTREE == pytest.approx(e_hf, abs=1e-8)
    fc = make_labeller("pyscf:mp2/cc-pvdz", forces=False).label(water)
    assert fc.energy / HARTREE == pytest.approx(e_hf + e_mp2_fc, abs=1e-8) and fc.forces is None
    ae = make_labeller("pyscf:mp2/cc-pvdz", frozen_core=False, forces=False).label(water)
    assert ae.energy / HARTREE == pytest.approx(e_hf + e_mp2_ae, abs=1e-8)
    assert fc.record["components"]["hf/cc-pvdz"]["scf"] == pytest.approx(e_hf, abs=1e-8)
    assert fc.record["program"] == "pyscf" and fc.record["frozen_core"] is True


def _fd_forces(labeller: PySCFLabeller, atoms: Atoms, step: float = 2e-3) -> np.ndarray:
    """-dE/dr (eV/Å) by the fourth-order central difference."""
    forces = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            energy = {}
            for n in (-2, -1, 1, 2):
                shifted = atoms.copy()
                shifted.positions[i, k] += n * step
                energy[n] = labeller.label(shifted).energy
            forces[i, k] = -(energy[-2] - 8 * energy[-1] + 8 * energy[1] - energy[2]) / (12 * step)
    return forces


@pytest.mark.cbs
@pytest.mark.parametrize("spec", ["mp2/6-31g", "hf/6-31g"])
def test_pyscf_analytic_forces_match_finite_differences(spec):
    pytest.importorskip("pyscf")
    water = _water()
    analytic = PySCFLabeller(spec, frozen_core=True).label(water).forces
    assert analytic is not None and analytic.shape == (3, 3)
    energy_only = PySCFLabeller(spec, frozen_core=True, forces=False)
    np.testing.assert_allclose(analytic, _fd_forces(energy_only, water), atol=1e-5)  # eV/Å
    np.testing.assert_allclose(analytic.sum(axis=0), 0.0, atol=1e-6)


@pytest.mark.cbs
def test_pyscf_composite_and_open_shell_match_direct_pyscf():
    pytest.importorskip("pyscf")
    from pyscf import cc, mp, scf

    water = _water()
    result = PySCFLabeller("mp2/6-31g + d:ccsd(t)/sto-3g", frozen_core=False).label(water)
    assert result.forces is None
    big = scf.RHF(_pyscf_mol(water, "6-31g")).run(conv_tol=1e-10)
    small = scf.RHF(_pyscf_mol(water, "sto-3g")).run(conv_tol=1e-10)
    coupled = cc.CCSD(small).run()
    delta = coupled.e_corr + coupled.ccsd_t() - mp.MP2(small).kernel()[0]
    expected = big.e_tot + mp.MP2(big).kernel()[0] + delta
    assert result.energy / HARTREE == pytest.approx(expected, abs=1e-7)
    comps = result.record["components"]
    assert {"hf/6-31g", "mp2/6-31g", "mp2/sto-3g", "ccsd/sto-3g", "ccsd(t)/sto-3g"} <= set(comps)
    assert combine(parse_spec(result.record["method"]), comps) * HARTREE == result.energy

    radical = Atoms("OH", positions=[[0, 0, 0], [0, 0, 0.97]])
    radical.info["spin"] = 1
    uhf = scf.UHF(_pyscf_mol(radical, "sto-3g", spin=1)).run(conv_tol=1e-10)
    open_shell = PySCFLabeller("mp2/sto-3g", frozen_core=False).label(radical)
    assert open_shell.energy / HARTREE == pytest.approx(uhf.e_tot + mp.MP2(uhf).kernel()[0], abs=1e-8)
    assert open_shell.record["spin"] == 1 and open_shell.forces.shape == (2, 3)


@pytest.mark.cbs
def test_pyscf_failures_and_config_errors():
    pytest.importorskip("pyscf")
    water = _water()
    water.info[STRUCTURE_ID] = 12
    with pytest.raises(
        LabellingError, match=r"SCF did not converge in 1 cycles for H2O \(row 12\).*hf/sto-3g"
    ):
        PySCFLabeller("hf/sto-3g", max_cycle=1).label(water)
    with pytest.raises(LabellingError, match="molecules only"):
        PySCFLabeller("hf/sto-3g").label(bulk("Cu"))
    with pytest.raises(LabellingError, match="spin 1"):
        PySCFLabeller("hf/sto-3g", spin=1).label(water)
    with pytest.raises(ConfigError, match="not available"):
        PySCFLabeller("mp2/cc-pv[dt]z", forces=True)
    with pytest.raises(ConfigError, match="not available"):
        PySCFLabeller("mp2/sto-3g", density_fit=True, forces=True)
    with pytest.raises(ConfigError, match="no basis 'cc-pvdx'.*cc"):
        PySCFLabeller("mp2/cc-pvdx")
    labeller = pickle.loads(pickle.dumps(PySCFLabeller("hf/sto-3g", density_fit=True)))
    assert isinstance(labeller.label(_water()), LabelResult)
