"""CBS extrapolation formulas, composite-spec parsing and the combination of stored components.

Reference values. No journal table was at hand that we could quote digit-for-digit with certainty,
so the literature checks use Psi4's published regression outputs for water (geometry O; H 1 1.0;
H 1 1.0 2 104.5, Å), computed with conventional integrals and all electrons correlated — repository
psi4/psi4, file tests/cbs-xtpl-energy-conv/output.ref (Psi4 1.6a1, 2022), which prints each
single-point component to 1e-12 Eh and the extrapolated result:

* SCF/[23]ZaPa-NR, exponential alpha = 1.63 (Halkier et al., CPL 302, 437 (1999)):
  E(2) = -76.043543590285, E(3) = -76.059227699104  ->  E_CBS = -76.063049479713 Eh.
* MP2/aug-cc-pV[TQ]Z, SCF from the largest basis, X^-3 correlation (Helgaker et al., JCP 106,
  9639 (1997)): HF/aTZ -76.054535394116, MP2/aTZ -76.341144031018, HF/aQZ -76.059721178632,
  MP2/aQZ -76.379588620961  ->  E_CBS = -76.40385856 Eh.
* MP2/aug-cc-pV[DT]Z, same scheme: -76.36684616 Eh (recomputed end to end with PySCF below).

The Karton–Martin SCF form has no such reference here: it is checked by the algebra (synthetic data
from the model form, to 1e-10) and by invariants (constant shift, fixed point), which also cover the
other two forms, plus the hand-derived Helgaker weights (27 E_T - 8 E_D)/19 and (64 E_Q - 27 E_T)/37.
"""

import math

import ase.units
import numpy as np
import pytest
from ase import Atoms

from pimlip_ase.errors import ConfigError
from pimlip_ase.workflow.cbs import (
    combine,
    corr_helgaker,
    extrapolate_scf,
    hartree_to_ev,
    parse_spec,
    scf_exponential,
    scf_karton,
)

FORMS = {
    corr_helgaker: lambda x: x**-3.0,
    scf_exponential: lambda x: math.exp(-1.63 * x),
    scf_karton: lambda x: (x + 1) * math.exp(-9.0 * math.sqrt(x)),
}
PAIRS = [(2, 3), (3, 4), (4, 5), (2, 4)]


@pytest.mark.parametrize("formula", list(FORMS), ids=lambda f: f.__name__)
@pytest.mark.parametrize("x,y", PAIRS)
def test_synthetic_data_from_the_model_form_recovers_the_limit(formula, x, y):
    e_cbs, amplitude = -76.4123456789, 0.731
    f = FORMS[formula]
    e_x, e_y = e_cbs + amplitude * f(x), e_cbs + amplitude * f(y)
    assert formula(e_x, e_y, x, y) == pytest.approx(e_cbs, abs=1e-10)


@pytest.mark.parametrize("formula", list(FORMS), ids=lambda f: f.__name__)
def test_invariants_shift_and_fixed_point(formula):
    e_x, e_y = -0.25, -0.29
    shift = 3.7
    assert formula(e_x + shift, e_y + shift, 3, 4) == pytest.approx(
        formula(e_x, e_y, 3, 4) + shift, abs=1e-12
    )
    assert formula(e_y, e_y, 3, 4) == pytest.approx(e_y, abs=1e-14)
    assert formula(e_x, e_y, 3, 4) < e_y  # a converging (decreasing) series extrapolates below E_Y


def test_helgaker_closed_forms():
    e_d, e_t, e_q = -0.20, -0.26, -0.28
    assert corr_helgaker(e_d, e_t, 2, 3) == pytest.approx((27 * e_t - 8 * e_d) / 19, abs=1e-14)
    assert corr_helgaker(e_t, e_q, 3, 4) == pytest.approx((64 * e_q - 27 * e_t) / 37, abs=1e-14)


def test_exponential_scf_against_psi4_zapa_water():
    # Psi4 tests/cbs-xtpl-energy-conv/output.ref, SCF/[23]ZaPa-NR block.
    assert scf_exponential(-76.043543590285, -76.059227699104, 2, 3) == pytest.approx(
        -76.063049479713, abs=1e-9
    )


def test_mp2_cbs_combination_against_psi4_water_atqz():
    # Psi4 tests/cbs-xtpl-energy-conv/output.ref, MP2/aug-cc-pV[TQ]Z "Components" and "CBS" tables.
    hf_t, mp2_t, hf_q, mp2_q = -76.054535394116, -76.341144031018, -76.059721178632, -76.379588620961
    components = {
        "mp2/aug-cc-pvtz": {"total": mp2_t, "scf": hf_t, "corr": mp2_t - hf_t},
        "mp2/aug-cc-pvqz": {"total": mp2_q, "scf": hf_q, "corr": mp2_q - hf_q},
    }
    assert combine(parse_spec("MP2/aug-cc-pV[TQ]Z"), components) == pytest.approx(-76.40385856, abs=1e-8)


def test_composite_combination_matches_hand_assembly():
    scf = {"cc-pvdz": -76.02, "cc-pvtz": -76.05, "cc-pvqz": -76.06}
    corr = {
        ("mp2", "cc-pvtz"): -0.27,
        ("mp2", "cc-pvqz"): -0.29,
        ("mp2", "cc-pvdz"): -0.20,
        ("ccsd", "cc-pvdz"): -0.21,
        ("ccsd(t)", "cc-pvdz"): -0.214,
    }
    comps = {f"{m}/{b}": {"total": scf[b] + c, "scf": scf[b], "corr": c} for (m, b), c in corr.items()}
    plan = parse_spec("mp2/cc-pv[tq]z + d:ccsd(t)/cc-pvdz")
    expected = scf["cc-pvqz"] + (64 * -0.29 - 27 * -0.27) / 37 + (-0.214 - -0.20)
    assert combine(plan, comps) == pytest.approx(expected, abs=1e-12)
    # Redo the extrapolation from the stored components with another SCF scheme: nothing recomputed.
    redone = combine(parse_spec("mp2/cc-pv[tq]z + d:ccsd(t)/cc-pvdz; scf=exponential"), comps)
    assert redone == pytest.approx(
        expected - scf["cc-pvqz"] + scf_exponential(-76.05, -76.06, 3, 4), abs=1e-12
    )
    with pytest.raises(ConfigError, match="ccsd/cc-pvtz.*available components: .*mp2/cc-pvtz"):
        combine(parse_spec("mp2/cc-pvtz + d:ccsd/cc-pvtz"), comps)


def test_plan_jobs_and_canonical_spec():
    plan = parse_spec("MP2/cc-pV[TQ]Z + d:CCSD(T)/cc-pVDZ")
    assert plan.spec == "mp2/cc-pv[tq]z + d:ccsd(t)-mp2/cc-pvdz; scf=largest"
    assert plan.jobs() == (("mp2", "cc-pvtz"), ("mp2", "cc-pvqz"), ("ccsd(t)", "cc-pvdz"), ("mp2", "cc-pvdz"))
    assert plan.by_basis() == {"cc-pvtz": "mp2", "cc-pvqz": "mp2", "cc-pvdz": "ccsd(t)"}
    assert parse_spec(plan.spec) == plan
    assert parse_spec("hf/cc-pv[dt]z").scf == "exponential"
    assert parse_spec("ccsd(t)/cc-pv[dt]z").jobs() == (("ccsd(t)", "cc-pvdz"), ("ccsd(t)", "cc-pvtz"))
    assert parse_spec("hf/cc-pvdz").single_point == ("hf", "cc-pvdz")
    assert parse_spec("hf/cc-pvdz").spec == "hf/cc-pvdz"
    chained = parse_spec("mp2/aug-cc-pv[tq]z + d:ccsd/cc-pv[dt]z + d:ccsd(t)/cc-pvdz")
    assert [(t.method, t.low) for t in chained.terms] == [("mp2", None), ("ccsd", "mp2"), ("ccsd(t)", "ccsd")]


@pytest.mark.parametrize(
    "spec,names",
    [
        ("mp3/cc-pvdz", ["'mp3'", "hf, mp2, ccsd, ccsd(t)"]),
        ("mp2/cc-pv[dtq]z", ["cc-pv[dtq]z", "two cardinal letters"]),
        ("mp2/cc-pv[qt]z", ["cc-pv[qt]z", "smaller cardinal first"]),
        ("mp2/cc-pv[tq]z; scf=linear", ["'linear'", "largest, exponential, karton"]),
        ("mp2/cc-pvdz; alpha=3", ["'alpha=3'", "scf="]),
        ("d:ccsd(t)/cc-pvdz", ["starts with a correction"]),
        ("mp2/cc-pvdz + ccsd/cc-pvdz", ["'ccsd/cc-pvdz'", "d:"]),
        ("mp2/cc-pvdz + d:hf/cc-pvdz", ["'d:hf/cc-pvdz'", "must be above"]),
        ("mp2 cc-pvdz", ["method/basis"]),
        ("", ["empty"]),
    ],
)
def test_malformed_specs_name_the_bad_part(spec, names):
    with pytest.raises(ConfigError) as info:
        parse_spec(spec)
    for name in names:
        assert name in str(info.value)


def test_unknown_scf_scheme_and_bad_cardinals():
    with pytest.raises(ConfigError, match="largest, exponential, karton"):
        extrapolate_scf("linear", -1.0, -1.1, 2, 3)
    with pytest.raises(ConfigError, match="X < Y"):
        corr_helgaker(-0.2, -0.3, 3, 3)
    assert extrapolate_scf("largest", -1.0, -1.1, 2, 3) == -1.1


def test_hartree_to_ev_is_ase_hartree():
    assert hartree_to_ev(1.0) == ase.units.Hartree
    np.testing.assert_array_equal(
        hartree_to_ev(np.array([1.0, -2.0])), [ase.units.Hartree, -2 * ase.units.Hartree]
    )


@pytest.mark.cbs
def test_pyscf_end_to_end_against_psi4_water():
    """PySCF components through the labeller reproduce Psi4's conventional-integral references."""
    pytest.importorskip("pyscf")
    from pimlip_ase.workflow.label import PySCFLabeller

    water = Atoms(
        "OH2",
        positions=[
            [0, 0, -0.068516219320],
            [0, -0.790689573744, 0.543701060715],
            [0, 0.790689573744, 0.543701060715],
        ],
    )
    mp2 = PySCFLabeller("mp2/aug-cc-pv[dt]z", frozen_core=False).label(water)
    assert mp2.energy / ase.units.Hartree == pytest.approx(-76.36684616, abs=1e-6)  # mp2_adtz_ref
    hf = PySCFLabeller("hf/aug-cc-pv[dt]z").label(water)
    assert hf.energy / ase.units.Hartree == pytest.approx(-76.05912763, abs=1e-6)  # scf_adtz_ref
    assert (
        combine(parse_spec("mp2/aug-cc-pv[dt]z"), mp2.record["components"]) * ase.units.Hartree == mp2.energy
    )
