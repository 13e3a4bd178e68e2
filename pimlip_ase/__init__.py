"""pimlip_ase: machine-learned interatomic potentials with physics-informed weak supervision.

Public API: ``PIMLIPCalculator``, ``build_model``, ``load_model``, ``save_model``, ``train``. They are
imported on first use, so that light entry points (workers, ``pimlip --help``) do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "PIMLIPCalculator": "calculator",
    "build_model": "models",
    "load_model": "modelfile",
    "save_model": "modelfile",
    "train": "training",
}
__all__ = list(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'pimlip_ase' has no attribute {name!r}")
