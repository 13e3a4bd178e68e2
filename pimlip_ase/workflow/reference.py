"""A labeller seen as an ASE calculator, so the stability checks and the generators can run the
reference method (EMT, GFN2-xTB, PySCF) exactly as they run a model.

Every evaluation is one ``labeller.label(atoms)`` call; nothing is written to a store. Results are
in ASE units: ``energy``/``free_energy`` eV, ``forces`` (N, 3) eV/Å, ``stress`` Voigt eV/Å³.
"""

from __future__ import annotations

from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .label import Labeller, make_labeller

__all__ = ["ReferenceCalculator", "reference_calculator"]


class ReferenceCalculator(Calculator):
    """ASE calculator that labels each geometry with ``labeller`` (see :mod:`.label`).

    A labeller that gives no forces (e.g. a CBS energy) raises ``PropertyNotImplementedError`` when
    forces are asked for; the same for stress on cells that are not 3D-periodic. ``n_calls`` counts
    the reference calculations made.
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, labeller: Labeller, **kwargs) -> None:
        super().__init__(**kwargs)
        self.labeller = labeller
        self.n_calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        result = self.labeller.label(self.atoms)
        self.n_calls += 1
        self.results = {"energy": result.energy, "free_energy": result.energy}
        if result.forces is not None:
            self.results["forces"] = result.forces
        if result.stress is not None:
            self.results["stress"] = result.stress
        missing = [p for p in properties if p not in self.results]
        if missing:
            raise PropertyNotImplementedError(
                f"reference method {self.labeller.method!r} gives no {', '.join(missing)} for "
                f"{self.atoms.get_chemical_formula()}"
            )


def reference_calculator(spec: str, **options) -> ReferenceCalculator:
    """:class:`ReferenceCalculator` for a :func:`.label.make_labeller` spec such as ``"emt"``."""
    return ReferenceCalculator(make_labeller(spec, **options))
