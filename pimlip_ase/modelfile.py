"""The self-describing model file: one ``.pt`` of plain data, safe to load.

Contents (a dict written by ``torch.save``): ``format`` and ``version``; ``architecture`` and its
``hyperparameters`` (species, cutoff, sizes, force mode); ``dtype``; ``state_dict`` (tensors, which
include E0, scale and shift); ``provenance`` (config, dataset hash, metrics — JSON-like data); and a
SHA-256 ``checksum`` over all of it. Reading uses ``torch.load(weights_only=True)``, which refuses
arbitrary pickled objects, so a model file can never execute code. Writes go to a temporary file in
the same folder that is renamed into place, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import ModelFileError, PimlipError
from .models import REGISTRY, PotentialModel, build_model

FORMAT = "pimlip_ase.model"
VERSION = 1
_REQUIRED = ("format", "version", "architecture", "hyperparameters", "dtype", "state_dict", "checksum")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_plain(value: Any) -> Any:
    """Convert to JSON-like plain data (paths and other objects become strings)."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return str(value)


def _checksum(payload: dict[str, Any]) -> str:
    h = hashlib.sha256()
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "checksum")}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(payload["state_dict"]):
        t = payload["state_dict"][name]
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_model(model: PotentialModel, path: str | Path, provenance: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically. Returns the path."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": model.architecture,
        "hyperparameters": to_plain(model.hyperparameters()),
        "dtype": str(model.dtype).removeprefix("torch."),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "provenance": to_plain(provenance or {}),
    }
    payload["checksum"] = _checksum(payload)
    atomic_torch_save(payload, path)
    return Path(path)


def read_payload(path: str | Path) -> dict[str, Any]:
    """Load and verify a model file's raw contents; every failure is a ModelFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, objects refused by weights_only, ...
        raise ModelFileError(
            f"{str(path)!r} is not a readable pimlip_ase model file (corrupt, truncated, or it holds "
            f"objects other than plain data, which are never unpickled): {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{str(path)!r} is not a pimlip_ase model file (format tag missing)")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise ModelFileError(f"{str(path)!r} lacks the entries {missing}")
    if payload["version"] > VERSION:
        raise ModelFileError(
            f"{str(path)!r} has format version {payload['version']}; this pimlip_ase reads "
            f"up to {VERSION}: upgrade pimlip_ase"
        )
    if _checksum(payload) != payload["checksum"]:
        raise ModelFileError(f"{str(path)!r} fails its checksum: the file was modified after it was written")
    return payload


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> PotentialModel:
    """Rebuild a model from a file written by :func:`save_model` (in eval mode)."""
    payload = read_payload(path)
    arch = payload["architecture"]
    if arch not in REGISTRY:
        raise ModelFileError(f"{str(path)!r} names architecture {arch!r}; known: {sorted(REGISTRY)}")
    try:
        model = build_model(arch, **payload["hyperparameters"], dtype=payload["dtype"])
        model.load_state_dict(payload["state_dict"], strict=True)
    except (PimlipError, RuntimeError) as err:
        raise ModelFileError(f"{str(path)!r}: weights do not fit architecture {arch!r}: {err}") from None
    model.provenance = payload.get("provenance", {})
    return model.to(device=device, dtype=dtype or model.dtype).eval()
