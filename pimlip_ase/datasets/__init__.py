"""Small shipped datasets, read as lists of labelled ``ase.Atoms``.

``load_dataset("water_cbs")`` returns the structures of ``water_cbs.extxyz`` in this folder, with
``info["REF_energy"]`` (eV) and, where the set has forces, ``arrays["REF_forces"]`` (eV/Å). See
``README.md`` here for each set's level of theory and how it was regenerated
(``generate_cbs_water.py``). CBS sets also hold every single-point component in Hartree under keys
made by :func:`component_info_key`; :func:`cbs_components` turns them back into the mapping that
:func:`pimlip_ase.workflow.cbs.combine` reads, so an extrapolation can be redone without recomputing.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from ase import Atoms

from pimlip_ase.errors import ConfigError

_SUFFIX = ".extxyz"
#: Prefix of flattened CBS component keys in ``atoms.info`` (values in Hartree).
COMPONENT_PREFIX = "Eh_"
_PARTS = ("scf", "corr")
#: Correlated methods as written in component keys ("ccsd(t)" has no brackets there).
_METHOD_TOKENS = {"hf": "hf", "mp2": "mp2", "ccsd": "ccsd", "ccsd_t": "ccsd(t)"}


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    folder = importlib.resources.files(__name__)
    return sorted(p.name[: -len(_SUFFIX)] for p in folder.iterdir() if p.name.endswith(_SUFFIX))


def load_dataset(name: str) -> list[Atoms]:
    """Structures of the shipped set ``name`` (e.g. ``"water_cbs"``), in file order.

    Energies ``info["REF_energy"]`` in eV, forces ``arrays["REF_forces"]`` in eV/Å (only in sets
    that have them). Raises ConfigError listing the available names for an unknown one.
    """
    import ase.io

    names = available_datasets()
    if name not in names:
        raise ConfigError(f"no shipped dataset {name!r}; available: {', '.join(names) or 'none'}")
    resource = importlib.resources.files(__name__) / f"{name}{_SUFFIX}"
    with importlib.resources.as_file(resource) as path:
        return list(ase.io.read(path, index=":", format="extxyz"))


def component_info_key(method: str, basis: str, part: str) -> str:
    """Flat, extxyz-safe ``info`` key of one CBS component (Hartree).

    ``method`` in hf/mp2/ccsd/ccsd(t), ``part`` "scf" or "corr": e.g. ``("ccsd(t)", "cc-pvdz",
    "corr")`` -> ``"Eh_corr_ccsd_t_cc-pvdz"``.
    """
    token = method.replace("(", "_").replace(")", "")
    if token not in _METHOD_TOKENS or part not in _PARTS:
        raise ConfigError(
            f"cannot name component {method}/{basis} ({part}); methods: "
            f"{', '.join(_METHOD_TOKENS.values())}; parts: {', '.join(_PARTS)}"
        )
    return f"{COMPONENT_PREFIX}{part}_{token}_{basis}"


def cbs_components(atoms: Atoms) -> dict[str, dict[str, float]]:
    """``{"method/basis": {"scf": Eh, "corr": Eh}}`` from a structure's flattened component keys."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in atoms.info.items():
        if not key.startswith(COMPONENT_PREFIX):
            continue
        part, rest = key[len(COMPONENT_PREFIX) :].split("_", 1)
        token = next(
            (t for t in sorted(_METHOD_TOKENS, key=len, reverse=True) if rest.startswith(t + "_")), None
        )
        if part not in _PARTS or token is None:
            raise ConfigError(f"malformed CBS component key {key!r}; expected e.g. 'Eh_corr_mp2_cc-pvtz'")
        basis = rest[len(token) + 1 :]
        out.setdefault(f"{_METHOD_TOKENS[token]}/{basis}", {})[part] = float(value)
    return out
