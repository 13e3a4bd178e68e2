"""Reference labellers: one protocol, ``label(atoms) -> LabelResult``, for any ASE calculator
(EMT, GFN-xTB through tblite) and for PySCF wavefunction methods with CBS extrapolation.

Results are in ASE units: energy eV, forces eV/Å (N, 3), stress eV/Å³ Voigt (6,). Labellers are
plain picklable objects; :func:`pimlip_ase.workflow.store.label_pending` ships them to worker
processes. Build one from a string with :func:`make_labeller`.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import ase.units
import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from pimlip_ase.errors import ConfigError, LabellingError
from pimlip_ase.workflow.cbs import METHODS, CBSPlan, combine, component_key, hartree_to_ev, parse_spec

#: ``atoms.info`` key under which the store puts a structure's row id (used in error messages).
STRUCTURE_ID = "db_id"

#: Calculator names accepted by :class:`ASELabeller` (``"xtb"`` is GFN2-xTB).
ASE_CALCULATORS = ("emt", "gfn2-xtb", "gfn1-xtb", "xtb")


@dataclass
class LabelResult:
    """Reference labels of one structure.

    energy: eV. forces: (N, 3) eV/Å or None. stress: (6,) Voigt eV/Å³ (xx yy zz yz xz xy) or None.
    record: provenance — ``method``, ``basis``, ``program``, ``program_version``, ``wall_time_s``
    and, for PySCF, the single-point ``components`` (Eh) a CBS energy was combined from.
    """

    energy: float
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    record: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Labeller(Protocol):
    """Anything with a ``method`` name and ``label(atoms) -> LabelResult``; must be picklable."""

    method: str

    def label(self, atoms: Atoms) -> LabelResult: ...


def describe(atoms: Atoms) -> str:
    """Short name of a structure for messages: formula and, when known, its store row id."""
    row = atoms.info.get(STRUCTURE_ID)
    return f"{atoms.get_chemical_formula()} (row {row})" if row is not None else atoms.get_chemical_formula()


def _version(module: str) -> str:
    try:
        return importlib.metadata.version(module.split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------
# ASE calculators


def _named_calculator(name: str, kwargs: dict[str, Any]) -> Calculator:
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT(**kwargs)
    from tblite.ase import TBLite

    method = "GFN1-xTB" if name == "gfn1-xtb" else "GFN2-xTB"
    return TBLite(method=method, **{"verbosity": 0, **kwargs})


class ASELabeller:
    """Labels with an ASE calculator, built fresh for each structure in the worker.

    ``calculator`` is a name from :data:`ASE_CALCULATORS` (``"emt"``; ``"gfn2-xtb"``/``"xtb"`` and
    ``"gfn1-xtb"`` through tblite, with forces) or a picklable zero-argument factory returning an
    ASE calculator (a module-level class or function, or a ``functools.partial`` of one).
    ``calc_kwargs`` go to the named calculator (e.g. ``charge=``, ``multiplicity=`` for tblite).
    Stress is labelled for 3D-periodic cells when the calculator implements it.
    """

    def __init__(
        self, calculator: str | Callable[[], Calculator], method: str | None = None, **calc_kwargs: Any
    ) -> None:
        if isinstance(calculator, str):
            name = calculator.strip().lower()
            if name not in ASE_CALCULATORS:
                raise ConfigError(
                    f"unknown calculator {calculator!r}; valid names: {', '.join(ASE_CALCULATORS)}"
                )
            if name != "emt" and importlib.util.find_spec("tblite") is None:
                raise ConfigError(f"{name} needs tblite: pip install 'pimlip_ase[xtb]'")
            calculator = "gfn2-xtb" if name == "xtb" else name
        elif calc_kwargs:
            raise ConfigError("calc_kwargs apply to named calculators only; bind them in the factory")
        try:
            pickle.dumps(calculator)
        except Exception as err:
            raise ConfigError(
                f"calculator factory {calculator!r} is not picklable ({err}); labelling runs in worker "
                "processes, so pass a module-level class/function or a functools.partial of one"
            ) from err
        self.calculator = calculator
        self.calc_kwargs = calc_kwargs
        self.method = method or (
            calculator if isinstance(calculator, str) else getattr(calculator, "__name__", "")
        )
        if not self.method:
            raise ConfigError(f"cannot name the method of {calculator!r}; pass method='...'")

    def _build(self) -> Calculator:
        if isinstance(self.calculator, str):
            return _named_calculator(self.calculator, self.calc_kwargs)
        return self.calculator()

    def label(self, atoms: Atoms) -> LabelResult:
        """Energy (eV), forces (eV/Å) and, for 3D-periodic cells, stress (Voigt eV/Å³)."""
        start = time.perf_counter()
        work = atoms.copy()
        calc = work.calc = self._build()
        props = calc.implemented_properties
        try:
            energy = work.get_potential_energy()
            forces = work.get_forces() if "forces" in props else None
            stress = work.get_stress(voigt=True) if "stress" in props and work.pbc.all() else None
        except Exception as err:
            raise LabellingError(f"{self.method} failed on {describe(atoms)}: {err}") from err
        record = {
            "method": self.method,
            "basis": None,
            "program": type(calc).__module__,
            "program_version": _version(type(calc).__module__),
            "wall_time_s": time.perf_counter() - start,
        }
        return LabelResult(float(energy), forces, stress, record)


# --------------------------------------------------------------------------------------------
# PySCF


def _check_basis(name: str) -> None:
    from pyscf.gto.basis import ALIAS, _format_basis_name

    if _format_basis_name(name) not in ALIAS:
        close = difflib.get_close_matches(_format_basis_name(name), list(ALIAS), n=3)
        raise ConfigError(f"PySCF has no basis {name!r}; close names: {', '.join(close) or 'none'}")


class PySCFLabeller:
    """HF / MP2 / CCSD / CCSD(T) single points and CBS composites with PySCF (molecules only).

    ``spec`` follows :mod:`pimlip_ase.workflow.cbs` (e.g. ``"mp2/cc-pvdz"``,
    ``"mp2/cc-pv[tq]z + d:ccsd(t)/cc-pvdz"``). One SCF and one correlated run per basis yield every
    method the plan needs in that basis; the energies (Eh) are kept in ``record["components"]``.
    Restricted references for ``spin == 0`` (2S, PySCF's convention), unrestricted otherwise;
    ``atoms.info["charge"]`` / ``["spin"]`` override the defaults per structure.

    Forces are analytic gradients, computed when cheap: HF, or MP2 without density fitting, in a
    single basis (``forces=None``, the default); ``forces=False`` never computes them and
    ``forces=True`` raises ConfigError where they are not available. SCF or CCSD non-convergence
    raises LabellingError naming the structure, method and basis.
    """

    def __init__(
        self,
        spec: str,
        frozen_core: bool = True,
        density_fit: bool = False,
        charge: int = 0,
        spin: int = 0,
        forces: bool | None = None,
        max_cycle: int = 100,
        conv_tol: float = 1e-10,
    ) -> None:
        if importlib.util.find_spec("pyscf") is None:
            raise ConfigError("PySCF labelling needs pyscf: pip install 'pimlip_ase[cbs]'")
        self.plan: CBSPlan = parse_spec(spec)
        for basis in self.plan.by_basis():
            _check_basis(basis)
        single = self.plan.single_point
        cheap = single is not None and (single[0] == "hf" or (single[0] == "mp2" and not density_fit))
        if forces and not cheap:
            raise ConfigError(
                f"analytic forces for {self.plan.spec!r} are not available; they are for HF, or MP2 "
                "without density fitting, in one basis. Use forces=None for energies only"
            )
        self.forces = cheap if forces is None else forces
        self.method = self.plan.spec
        self.options = dict(
            frozen_core=frozen_core,
            density_fit=density_fit,
            charge=charge,
            spin=spin,
            max_cycle=max_cycle,
            conv_tol=conv_tol,
        )

    def _scf(self, atoms: Atoms, basis: str, charge: int, spin: int):
        from pyscf import gto, scf

        opts = self.options
        try:
            mol = gto.M(
                atom=[
                    (s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)
                ],
                unit="Angstrom",
                basis=basis,
                charge=charge,
                spin=spin,
                verbose=0,
            )
        except RuntimeError as err:  # e.g. electron count and spin inconsistent, element not in basis
            raise LabellingError(
                f"cannot set up {describe(atoms)} in {basis} (charge {charge}, spin {spin}): {err}"
            ) from err
        mf = scf.RHF(mol) if spin == 0 else scf.UHF(mol)
        if opts["density_fit"]:
            mf = mf.density_fit()
        mf.max_cycle, mf.conv_tol = opts["max_cycle"], opts["conv_tol"]
        mf.kernel()
        if not mf.converged:
            raise LabellingError(
                f"SCF did not converge in {opts['max_cycle']} cycles for {describe(atoms)} with "
                f"hf/{basis} ({self.method}); raise max_cycle or check charge/spin"
            )
        return mf

    def _run_basis(self, atoms: Atoms, basis: str, top: str, charge: int, spin: int):
        """Components (Eh) of every method up to ``top`` in ``basis``, and the solver for gradients."""
        from pyscf import cc, mp
        from pyscf.data.elements import chemcore

        mf = self._scf(atoms, basis, charge, spin)
        frozen = chemcore(mf.mol) if self.options["frozen_core"] else None
        corr: dict[str, float] = {"hf": 0.0}
        solver = mf
        if top == "mp2":
            solver = mp.MP2(mf, frozen=frozen)
            solver.kernel()
            corr["mp2"] = solver.e_corr
        elif top in ("ccsd", "ccsd(t)"):
            solver = cc.CCSD(mf, frozen=frozen)
            solver.kernel()
            if not solver.converged:
                raise LabellingError(
                    f"CCSD did not converge for {describe(atoms)} in {basis} ({self.method})"
                )
            corr["mp2"], corr["ccsd"] = solver.emp2, solver.e_corr
            if top == "ccsd(t)":
                corr["ccsd(t)"] = solver.e_corr + solver.ccsd_t()
        scf = float(mf.e_tot)
        parts = {
            component_key(m, basis): {"total": scf + c, "scf": scf, "corr": float(c)} for m, c in corr.items()
        }
        return parts, solver

    def label(self, atoms: Atoms) -> LabelResult:
        """Energy (eV) from the CBS plan; forces (eV/Å) where cheap; stress always None."""
        if atoms.pbc.any():
            raise LabellingError(f"PySCFLabeller handles molecules only; {describe(atoms)} is periodic")
        import pyscf

        start = time.perf_counter()
        charge = int(atoms.info.get("charge", self.options["charge"]))
        spin = int(atoms.info.get("spin", self.options["spin"]))
        components: dict[str, dict[str, float]] = {}
        forces = None
        for basis, top in self.plan.by_basis().items():
            parts, solver = self._run_basis(atoms, basis, top, charge, spin)
            components.update(parts)
            if self.forces:
                gradient = solver.nuc_grad_method().kernel()  # Eh/Bohr, (N, 3)
                forces = -hartree_to_ev(np.asarray(gradient)) / ase.units.Bohr
        record = {
            "method": self.method,
            "basis": list(self.plan.by_basis()),
            "program": "pyscf",
            "program_version": pyscf.__version__,
            "wall_time_s": time.perf_counter() - start,
            "components": components,
            "scf_scheme": self.plan.scf,
            **self.options,
            "charge": charge,
            "spin": spin,
        }
        return LabelResult(hartree_to_ev(combine(self.plan, components)), forces, None, record)


# --------------------------------------------------------------------------------------------


def make_labeller(spec: str, **kwargs: Any) -> Labeller:
    """Labeller from a method string.

    ``"emt"``; ``"xtb"`` or ``"gfn2-xtb"``; ``"gfn1-xtb"``; ``"pyscf:<cbs spec>"`` such as
    ``"pyscf:mp2/cc-pvdz"`` or ``"pyscf:mp2/cc-pv[tq]z + d:ccsd(t)/cc-pvdz"``. ``kwargs`` go to the
    labeller (e.g. ``frozen_core=False`` for PySCF, ``charge=1`` for tblite).
    """
    name = spec.strip()
    if name.lower().startswith("pyscf:"):
        return PySCFLabeller(name[len("pyscf:") :], **kwargs)
    if name.lower() in ASE_CALCULATORS:
        return ASELabeller(name.lower(), **kwargs)
    raise ConfigError(
        f"unknown labelling method {spec!r}; valid: {', '.join(ASE_CALCULATORS)}, or "
        f"'pyscf:<method>/<basis>' with methods {', '.join(METHODS)} (e.g. 'pyscf:mp2/cc-pv[tq]z')"
    )
