"""Architectures and their name -> class registry."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import PotentialModel
from .painn import PaiNN
from .schnet import SchNet

REGISTRY: dict[str, type[PotentialModel]] = {cls.architecture: cls for cls in (SchNet, PaiNN)}


def build_model(name: str, **hyperparameters: Any) -> PotentialModel:
    """An untrained model of architecture ``name`` (see ``REGISTRY``); seeded by torch.manual_seed."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {sorted(REGISTRY)}")
    try:
        return REGISTRY[name](**hyperparameters)
    except TypeError as err:
        raise ConfigError(f"bad hyperparameters for model {name!r}: {err}") from err


__all__ = ["REGISTRY", "PotentialModel", "PaiNN", "SchNet", "build_model"]
