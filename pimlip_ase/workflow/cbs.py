"""Two-point complete-basis-set (CBS) extrapolation and composite-method specs.

Every energy in this module is in Hartree (Eh). :func:`hartree_to_ev` is the one place an energy
becomes eV; call it once, on the final number.

Extrapolation models, for cardinal numbers X < Y of a correlation-consistent basis family
(cc-pVDZ: 2, cc-pVTZ: 3, ...). Each model reads ``E_X = E_CBS + A f(X)`` with one unknown ``A``, so
two energies fix ``E_CBS = (f(X) E_Y - f(Y) E_X) / (f(X) - f(Y))``:

* correlation energy, Helgaker et al., J. Chem. Phys. 106, 9639 (1997): ``f(X) = X**-3``;
* SCF ``"exponential"``, Halkier et al., Chem. Phys. Lett. 302, 437 (1999): ``f(X) = exp(-1.63 X)``;
* SCF ``"karton"``, Karton & Martin, Theor. Chem. Acc. 115, 330 (2006):
  ``f(X) = (X + 1) exp(-9 sqrt(X))``;
* SCF ``"largest"``: no extrapolation, the SCF energy in the larger basis.

Composite specs (case and spaces are ignored)::

    spec   := term (" + " term)* [";" option ("," option)*]
    term   := method "/" basis              the base: SCF + correlation, both extrapolated
            | "d:" high ["-" low] "/" basis  a correction: corr(high) - corr(low), extrapolated;
                                             low defaults to the method of the term before it
    basis  := a name with at most one bracket of two cardinal letters, e.g. cc-pv[tq]z
    option := "scf=" (largest | exponential | karton)

``"mp2/cc-pv[tq]z + d:ccsd(t)/cc-pvdz"`` is MP2/CBS(TZ, QZ) plus a CCSD(T) - MP2 correction in
cc-pVDZ. The SCF scheme defaults to ``exponential`` for an extrapolated ``hf`` term and to
``largest`` otherwise. :func:`parse_spec` turns a spec into a :class:`CBSPlan`; the single points
it needs are :meth:`CBSPlan.jobs`; :func:`combine` turns their energies (stored by
``"method/basis"``) into the final energy, so an extrapolation can be redone from stored components
without recomputing anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import ase.units

from pimlip_ase.errors import ConfigError

#: Methods in increasing order of cost; a run at one level yields every level below it.
METHODS = ("hf", "mp2", "ccsd", "ccsd(t)")
#: SCF extrapolation schemes accepted by ``scf=`` and :func:`extrapolate_scf`.
SCF_SCHEMES = ("largest", "exponential", "karton")
#: Cardinal letters allowed inside a basis bracket, and their cardinal numbers.
CARDINALS = {"d": 2, "t": 3, "q": 4, "5": 5, "6": 6, "7": 7}

_EXPONENTIAL_ALPHA = 1.63
_BRACKET = re.compile(r"\[([^\]]*)\]")


def hartree_to_ev(energy_eh):
    """Energy (or array of energies, gradients) in Hartree -> eV, with ``ase.units.Hartree``."""
    return energy_eh * ase.units.Hartree


# --------------------------------------------------------------------------------------------
# Two-point formulas


def _two_point(f: Callable[[int], float], e_x: float, e_y: float, x: int, y: int) -> float:
    """E_CBS of the model E_X = E_CBS + A f(X) through (X, E_X) and (Y, E_Y); energies in Eh."""
    if not 0 < x < y:
        raise ConfigError(f"two-point extrapolation needs cardinal numbers 0 < X < Y, got X={x}, Y={y}")
    fx, fy = f(x), f(y)
    return (fx * e_y - fy * e_x) / (fx - fy)


def corr_helgaker(e_x: float, e_y: float, x: int, y: int) -> float:
    """CBS correlation energy (Eh) from E_X = E_CBS + A X^-3 (Helgaker et al. 1997)."""
    return _two_point(lambda n: n**-3.0, e_x, e_y, x, y)


def scf_exponential(e_x: float, e_y: float, x: int, y: int, alpha: float = _EXPONENTIAL_ALPHA) -> float:
    """CBS SCF energy (Eh) from E_X = E_CBS + B exp(-alpha X), alpha = 1.63 (Halkier et al. 1999)."""
    return _two_point(lambda n: math.exp(-alpha * n), e_x, e_y, x, y)


def scf_karton(e_x: float, e_y: float, x: int, y: int) -> float:
    """CBS SCF energy (Eh) from E_X = E_CBS + A (X+1) exp(-9 sqrt X) (Karton & Martin 2006)."""
    return _two_point(lambda n: (n + 1) * math.exp(-9.0 * math.sqrt(n)), e_x, e_y, x, y)


def extrapolate_scf(scheme: str, e_x: float, e_y: float, x: int, y: int) -> float:
    """CBS SCF energy (Eh) from SCF energies in bases X < Y with one of :data:`SCF_SCHEMES`."""
    if scheme == "largest":
        return e_y
    if scheme == "exponential":
        return scf_exponential(e_x, e_y, x, y)
    if scheme == "karton":
        return scf_karton(e_x, e_y, x, y)
    raise ConfigError(f"unknown SCF extrapolation scheme {scheme!r}; valid schemes: {', '.join(SCF_SCHEMES)}")


# --------------------------------------------------------------------------------------------
# Specs and plans


@dataclass(frozen=True)
class Term:
    """One term of a composite spec.

    ``method`` is the (high) method; ``low`` is the method subtracted in a correction term
    (None for the base term); ``bases`` holds one basis or two (smaller first) with their
    ``cardinals`` (0 where a single basis carries no bracket).
    """

    method: str
    bases: tuple[str, ...]
    cardinals: tuple[int, ...]
    low: str | None = None

    def __str__(self) -> str:
        basis = self.bases[0] if len(self.bases) == 1 else self._bracketed()
        if self.low is None:
            return f"{self.method}/{basis}"
        return f"d:{self.method}-{self.low}/{basis}"

    def _bracketed(self) -> str:
        a, b = self.bases
        i = next(k for k in range(len(a)) if a[k] != b[k])
        return f"{a[:i]}[{a[i]}{b[i]}]{a[i + 1 :]}"


@dataclass(frozen=True)
class CBSPlan:
    """A parsed composite spec: the terms, the SCF scheme, and the canonical spec string."""

    terms: tuple[Term, ...]
    scf: str

    @property
    def spec(self) -> str:
        """Canonical spec string (lower case, explicit correction methods and SCF scheme)."""
        text = " + ".join(str(t) for t in self.terms)
        return f"{text}; scf={self.scf}" if len(self.terms[0].bases) == 2 else text

    def jobs(self) -> tuple[tuple[str, str], ...]:
        """The (method, basis) single points this plan needs, without duplicates, in spec order."""
        jobs: dict[tuple[str, str], None] = {}
        for term in self.terms:
            for basis in term.bases:
                jobs[(term.method, basis)] = None
                if term.low is not None:
                    jobs[(term.low, basis)] = None
        return tuple(jobs)

    def by_basis(self) -> dict[str, str]:
        """Basis -> the most expensive method needed in it (one run per basis yields the rest)."""
        top: dict[str, str] = {}
        for method, basis in self.jobs():
            if METHODS.index(method) >= METHODS.index(top.get(basis, "hf")):
                top[basis] = method
        return top

    @property
    def single_point(self) -> tuple[str, str] | None:
        """(method, basis) when the plan is one method in one basis, else None."""
        jobs = self.jobs()
        return jobs[0] if len(jobs) == 1 else None


def _parse_basis(text: str, spec: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    brackets = _BRACKET.findall(text)
    if not brackets:
        if not text or "[" in text or "]" in text:
            raise ConfigError(f"bad basis {text!r} in spec {spec!r}; write e.g. cc-pvdz or cc-pv[tq]z")
        return (text,), (0,)
    letters = brackets[0]
    if len(brackets) > 1 or len(letters) != 2 or any(c not in CARDINALS for c in letters):
        raise ConfigError(
            f"bad basis {text!r} in spec {spec!r}: use one bracket of two cardinal letters from "
            f"{', '.join(CARDINALS)} (two-point extrapolation only), e.g. cc-pv[tq]z"
        )
    x, y = CARDINALS[letters[0]], CARDINALS[letters[1]]
    if x >= y:
        raise ConfigError(f"bad basis {text!r} in spec {spec!r}: put the smaller cardinal first, e.g. [tq]")
    bases = tuple(_BRACKET.sub(c, text, count=1) for c in letters)
    return bases, (x, y)


def _check_method(name: str, term: str, spec: str) -> str:
    if name not in METHODS:
        raise ConfigError(
            f"unknown method {name!r} in term {term!r} of spec {spec!r}; valid methods: {', '.join(METHODS)}"
        )
    return name


def _parse_term(text: str, previous: str | None, spec: str) -> Term:
    delta = text.startswith("d:")
    body = text[2:] if delta else text
    if body.count("/") != 1:
        raise ConfigError(f"bad term {text!r} in spec {spec!r}: write method/basis, e.g. mp2/cc-pv[tq]z")
    methods, basis = body.split("/")
    bases, cardinals = _parse_basis(basis, spec)
    if not delta:
        if previous is not None:
            raise ConfigError(f"term {text!r} in spec {spec!r}: only the first term may lack 'd:'")
        return Term(_check_method(methods, text, spec), bases, cardinals)
    if previous is None:
        raise ConfigError(f"spec {spec!r} starts with a correction {text!r}; put the base term first")
    high, _, low = methods.partition("-")
    high, low = _check_method(high, text, spec), _check_method(low or previous, text, spec)
    if METHODS.index(high) <= METHODS.index(low):
        raise ConfigError(f"correction {text!r} in spec {spec!r}: {high} must be above {low} in {METHODS}")
    return Term(high, bases, cardinals, low)


def _parse_options(text: str, spec: str) -> dict[str, str]:
    options = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if key != "scf" or not sep:
            raise ConfigError(f"unknown option {item!r} in spec {spec!r}; valid options: scf=<scheme>")
        if value not in SCF_SCHEMES:
            raise ConfigError(
                f"unknown SCF scheme {value!r} in spec {spec!r}; valid schemes: {', '.join(SCF_SCHEMES)}"
            )
        options[key] = value
    return options


def parse_spec(spec: str) -> CBSPlan:
    """Parse a composite spec (grammar in the module docstring) into a :class:`CBSPlan`.

    Raises ConfigError naming the bad part and listing the valid choices.
    """
    text = "".join(spec.lower().split())
    body, _, opts = text.partition(";")
    if not body:
        raise ConfigError(f"empty method spec {spec!r}; write e.g. 'mp2/cc-pvdz' or 'mp2/cc-pv[tq]z'")
    terms: list[Term] = []
    for part in body.split("+"):
        previous = terms[-1].method if terms else None
        terms.append(_parse_term(part, previous, spec))
    base = terms[0]
    default = "exponential" if base.method == "hf" and len(base.bases) == 2 else "largest"
    return CBSPlan(tuple(terms), _parse_options(opts, spec).get("scf", default))


# --------------------------------------------------------------------------------------------
# Combining stored components


def component_key(method: str, basis: str) -> str:
    """Key of one single-point result in a components dict: ``"method/basis"``."""
    return f"{method}/{basis}"


def _lookup(components: Mapping[str, Mapping[str, float]], method: str, basis: str, part: str) -> float:
    key = component_key(method, basis)
    try:
        return float(components[key][part])
    except KeyError:
        raise ConfigError(
            f"component {key!r} (part {part!r}) is missing; available components: "
            f"{', '.join(sorted(components)) or 'none'}"
        ) from None


def _corr(term: Term, method: str, components: Mapping[str, Mapping[str, float]]) -> float:
    if method == "hf":
        return 0.0
    values = [_lookup(components, method, b, "corr") for b in term.bases]
    if len(values) == 1:
        return values[0]
    return corr_helgaker(values[0], values[1], *term.cardinals)


def combine(plan: CBSPlan, components: Mapping[str, Mapping[str, float]]) -> float:
    """Final composite energy (Eh) from single-point components.

    ``components`` maps ``"method/basis"`` to ``{"total": Eh, "scf": Eh, "corr": Eh}`` (only
    ``scf`` and ``corr`` are read). Raises ConfigError when a needed component is missing.
    """
    base = plan.terms[0]
    scf = [_lookup(components, base.method, b, "scf") for b in base.bases]
    energy = scf[0] if len(scf) == 1 else extrapolate_scf(plan.scf, scf[0], scf[1], *base.cardinals)
    energy += _corr(base, base.method, components)
    for term in plan.terms[1:]:
        energy += _corr(term, term.method, components) - _corr(term, term.low, components)
    return energy
