"""Generator specs of recipes: ``{type: NAME, [calculator: committee|reference], **arguments}``.

``NAME`` is a generator of :mod:`.generate` (``GENERATORS``) and the arguments are its keyword
arguments, except those the loop sets itself (the structure, calculator, seed, parent). ``md`` and
``normal_modes`` need a calculator: the committee being trained (candidates) or the reference
method (initial and test sets, e.g. reference MD snapshots as a held-out set).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import ase
import numpy as np

from ..errors import ConfigError
from . import generate

__all__ = ["GENERATORS", "check_generator", "mix_seed", "run_generators"]

#: Generator name -> function of :mod:`.generate`; a spec is ``{type: name, **arguments}``.
GENERATORS: dict[str, Callable[..., list[ase.Atoms]]] = {
    "rattle": generate.rattle_structures,
    "strain": generate.strain_structures,
    "normal_modes": generate.normal_mode_structures,
    "md": generate.md_structures,
    "vacancy": generate.vacancy_structures,
    "interstitial": generate.interstitial_structures,
}
_NEEDS_CALC = ("md", "normal_modes")
_SET_BY_LOOP = {"atoms", "calc", "seed", "parent", "progress", "modes", "stop_on_failure"}


def check_generator(spec: Any, where: str) -> dict[str, Any]:
    """Validate one generator spec ``{type: NAME, [calculator: committee|reference], **arguments}``."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: a generator is a mapping with a 'type' (one of {sorted(GENERATORS)})")
    name = spec["type"]
    if name not in GENERATORS:
        raise ConfigError(f"{where}: unknown generator type {name!r}; valid: {sorted(GENERATORS)}")
    params = inspect.signature(GENERATORS[name]).parameters
    valid = sorted(set(params) - _SET_BY_LOOP) + (["calculator"] if name in _NEEDS_CALC else [])
    unknown = sorted(set(spec) - {"type", *valid})
    if unknown:
        raise ConfigError(f"{where}: unknown argument(s) {unknown} for generator {name!r}; valid: {valid}")
    required = [
        p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in _SET_BY_LOOP
    ]
    missing = sorted(set(required) - set(spec))
    if missing:
        raise ConfigError(f"{where}: generator {name!r} needs {missing}")
    if spec.get("calculator", "committee") not in ("committee", "reference"):
        raise ConfigError(
            f"{where}: calculator must be 'committee' or 'reference', got {spec['calculator']!r}"
        )
    return dict(spec)


def mix_seed(*keys: int) -> int:
    """A 32-bit seed mixed from integers (reproducible, different for every key tuple)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def run_generators(
    specs: Sequence[dict[str, Any]], structures: Sequence[ase.Atoms], calcs: dict[str, Any], seed: int
) -> list[ase.Atoms]:
    """Apply each spec to each start structure; MD ``temperature_K`` may be a list (one run each).

    ``calcs`` maps "committee"/"reference" to calculators (None when unavailable). Each structure
    gets ``info["start"]``, the index of its start structure.
    """
    out: list[ase.Atoms] = []
    for g, spec in enumerate(specs):
        args = {k: v for k, v in spec.items() if k not in ("type", "calculator")}
        temps = args.pop("temperature_K", None)
        runs = (
            [dict(args)]
            if temps is None
            else [dict(args, temperature_K=t) for t in np.atleast_1d(temps).tolist()]
        )
        for i, atoms in enumerate(structures):
            for r, run in enumerate(runs):
                if spec["type"] in _NEEDS_CALC:
                    calc = calcs.get(spec.get("calculator", "committee"))
                    if calc is None:
                        raise ConfigError(
                            f"generator {spec['type']!r} needs a {spec.get('calculator', 'committee')}"
                            " calculator here; use calculator: reference in initial/test sets"
                        )
                    run["calc"] = calc
                    if spec["type"] == "md":
                        run["stop_on_failure"] = True
                if "seed" in inspect.signature(GENERATORS[spec["type"]]).parameters:
                    run["seed"] = mix_seed(seed, g, i, r)
                for new in GENERATORS[spec["type"]](atoms, **run):
                    new.info["start"] = i
                    out.append(new)
    return out
