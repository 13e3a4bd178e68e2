"""Δ-learning: a cheap method plus a learned correction, served as one ASE calculator.

The correction model is trained on Δ-labels, the difference between a reference level (e.g.
CCSD(T)/CBS, energies only) and a cheap method that has forces (e.g. GFN2-xTB through tblite):

    ΔE(R) = E_ref(R) − E_cheap(R)                     eV
    ΔF(R) = F_ref(R) − F_cheap(R)                     eV/Å, only where the reference has forces
    Δσ(R) = σ_ref(R) − σ_cheap(R)                     Voigt eV/Å³, only where it has stress

and served as E = E_cheap + E_θ, F = F_cheap − ∇E_θ, σ = σ_cheap + σ_θ. The summed forces are the
exact negative gradient of the summed energy whenever both parts are conservative, so MD conserves
energy. Trained on energies alone, the model still predicts forces through the cheap method: the
correction is small and smooth, so few reference energies go far.

Serving uses ASE's own ``ase.calculators.mixing.SumCalculator`` (see :func:`delta_calculator`):
it evaluates each calculator in turn and sums every property that *both* implement, so the summed
results are ``energy``, ``forces``, ``energies`` and ``stress`` (3D-periodic cells) when the cheap
calculator implements them (tblite does; it lacks ``free_energy``); ``energy_contributions`` and
``forces_contributions`` hold the [cheap, correction] parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator
from ase.calculators.mixing import SumCalculator
from ase.stress import full_3x3_to_voigt_6_stress

from pimlip_ase.errors import ConfigError
from pimlip_ase.keys import ENERGY, FORCES, STRESS
from pimlip_ase.workflow.label import Labeller, describe
from pimlip_ase.workflow.store import METHOD_KEY

#: ``atoms.info`` keys a Δ-structure carries besides its Δ-labels: the cheap energy (eV) that was
#: subtracted (E_ref = REF_energy + cheap_energy) and the cheap method's name.
CHEAP_ENERGY = "cheap_energy"
CHEAP_METHOD = "cheap_method"

#: Matching tolerance (Å) between the positions of a reference structure and its cheap twin.
POSITION_TOLERANCE = 1e-6


def _voigt(stress: Any) -> np.ndarray:
    """Stress as Voigt (6,) eV/Å³ from (6,) or (3, 3)."""
    arr = np.asarray(stress, dtype=float)
    return full_3x3_to_voigt_6_stress(arr) if arr.shape == (3, 3) else arr


def _check_same_structure(index: int, reference: Atoms, cheap: Atoms) -> None:
    if len(reference) != len(cheap) or not np.array_equal(reference.numbers, cheap.numbers):
        raise ConfigError(
            f"structure {index}: reference {describe(reference)} and cheap "
            f"{describe(cheap)} have different atoms; pass the lists in the same order"
        )
    shift = float(np.abs(reference.positions - cheap.positions).max(initial=0.0))
    if shift > POSITION_TOLERANCE:
        raise ConfigError(
            f"structure {index} ({describe(reference)}): positions differ from the cheap "
            f"twin by up to {shift:.3g} Å; Δ-labels need the same geometry"
        )


def subtract_labels(
    reference: Sequence[Atoms], cheap: Sequence[Atoms], cheap_method: str = "cheap"
) -> list[Atoms]:
    """Δ-structures from two aligned labelled lists (same geometries, same order).

    Each output is a copy of the reference geometry with ``info[REF_energy]`` = E_ref − E_cheap
    (eV), ``arrays[REF_forces]`` = F_ref − F_cheap (eV/Å, only where both have forces) and
    ``info[REF_stress]`` = σ_ref − σ_cheap (Voigt eV/Å³, only where both have stress), plus
    ``info["cheap_energy"]`` and ``info["cheap_method"]``; ``info["REF_method"]``, when present,
    becomes ``"<reference> - <cheap>"``. A reference label that is missing stays
    missing (its loss term is masked); a cheap structure without an energy is an error.
    """
    if len(reference) != len(cheap):
        raise ConfigError(
            f"{len(reference)} reference structures but {len(cheap)} cheap ones; "
            "Δ-labels need one cheap twin per reference structure"
        )
    out = []
    for i, (ref, low) in enumerate(zip(reference, cheap, strict=True)):
        _check_same_structure(i, ref, low)
        if ENERGY not in low.info:
            raise ConfigError(f"cheap structure {i} ({describe(low)}) has no {ENERGY!r}")
        delta = Atoms(ref.numbers, ref.positions, cell=ref.cell, pbc=ref.pbc)
        delta.info.update({k: v for k, v in ref.info.items() if k not in (ENERGY, STRESS)})
        delta.info[CHEAP_ENERGY] = float(low.info[ENERGY])
        delta.info[CHEAP_METHOD] = cheap_method
        if METHOD_KEY in ref.info:
            delta.info[METHOD_KEY] = f"{ref.info[METHOD_KEY]} - {cheap_method}"
        if ENERGY in ref.info:
            delta.info[ENERGY] = float(ref.info[ENERGY]) - float(low.info[ENERGY])
        if FORCES in ref.arrays and FORCES in low.arrays:
            delta.arrays[FORCES] = np.asarray(ref.arrays[FORCES]) - np.asarray(low.arrays[FORCES])
        if STRESS in ref.info and STRESS in low.info:
            delta.info[STRESS] = _voigt(ref.info[STRESS]) - _voigt(low.info[STRESS])
        out.append(delta)
    return out


def _label_cheap(atoms: Atoms, cheap: BaseCalculator | Labeller, want_stress: bool) -> Atoms:
    """A copy of ``atoms`` labelled by the cheap calculator or labeller (eV, eV/Å, Voigt eV/Å³)."""
    labelled = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    if isinstance(cheap, Labeller):
        result = cheap.label(atoms)
        energy, forces, stress = result.energy, result.forces, result.stress
    else:
        work = labelled.copy()
        work.calc = cheap
        energy, forces = work.get_potential_energy(), work.get_forces()
        stress = work.get_stress(voigt=True) if want_stress else None
    labelled.info[ENERGY] = float(energy)
    if forces is not None:
        labelled.arrays[FORCES] = np.asarray(forces, dtype=float)
    if stress is not None:
        labelled.info[STRESS] = _voigt(stress)
    return labelled


def delta_labels(
    structures: Sequence[Atoms], cheap: BaseCalculator | Labeller, cheap_method: str | None = None
) -> list[Atoms]:
    """Δ-structures (see :func:`subtract_labels`) for labelled ``structures`` and a cheap method.

    ``cheap`` is an ASE calculator instance (evaluated in this process, structure by structure) or a
    :class:`~pimlip_ase.workflow.label.Labeller` (e.g. ``make_labeller("gfn2-xtb")``). Stress is
    computed only for structures whose reference has it. For many structures or an expensive cheap
    method, label through a Store and call :func:`subtract_labels` on the two lists instead.
    """
    name = cheap_method or getattr(cheap, "method", None) or type(cheap).__name__
    twins = [_label_cheap(a, cheap, STRESS in a.info and bool(a.pbc.all())) for a in structures]
    return subtract_labels(structures, twins, name)


def delta_calculator(
    cheap: BaseCalculator, correction: str | Path | Any, **calc_kwargs: Any
) -> SumCalculator:
    """One ASE calculator serving cheap method + learned correction (energies, forces, stress summed).

    ``correction``: a model file (or model, or list of them: a committee) trained on Δ-labels;
    ``calc_kwargs`` go to :class:`~pimlip_ase.calculator.PIMLIPCalculator` (``device``, ``dtype``).
    Returns ASE's ``SumCalculator([cheap, PIMLIPCalculator(correction)])``; results in eV, eV/Å,
    Voigt eV/Å³. A committee's ``energy_std`` is on ``calc.mixer.calcs[1].results``.
    """
    from pimlip_ase.calculator import PIMLIPCalculator

    if not isinstance(cheap, BaseCalculator):
        raise ConfigError(f"the cheap part must be an ASE calculator instance, got {type(cheap).__name__}")
    return SumCalculator([cheap, PIMLIPCalculator(correction, **calc_kwargs)])
