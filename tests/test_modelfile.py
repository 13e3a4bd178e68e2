"""The model file: round trip, and refusal of truncated, tampered and malicious files."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from pimlip_ase import PIMLIPCalculator, build_model, load_model, save_model
from pimlip_ase.errors import ModelFileError

from .conftest import cu_cell


@pytest.fixture()
def model():
    torch.manual_seed(0)
    m = build_model(
        "painn", species=["Cu", "Ni"], cutoff=4.0, n_features=8, n_interactions=1, forces="direct"
    )
    m.set_reference([-3.5, -4.0], 0.7, 0.01)
    return m


def test_round_trip_preserves_predictions_and_metadata(model, tmp_path):
    path = save_model(model, tmp_path / "m.pt", provenance={"note": "test", "path": tmp_path})
    loaded = load_model(path)
    assert loaded.hyperparameters() == model.hyperparameters()
    assert loaded.forces_mode == "direct" and loaded.dtype == torch.float64
    assert loaded.provenance["note"] == "test"
    atoms = cu_cell()
    atoms.rattle(0.05, seed=0)
    with pytest.warns(UserWarning):
        r1 = PIMLIPCalculator(model).get_property("forces", atoms)
        r2 = PIMLIPCalculator(path).get_property("forces", atoms)
    np.testing.assert_array_equal(r1, r2)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


def test_truncated_file(model, tmp_path):
    path = save_model(model, tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a readable"):
        load_model(path)


def test_tampered_weights_fail_the_checksum(model, tmp_path):
    path = save_model(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["e0"][0] += 1.0
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="checksum"):
        load_model(path)


def test_tampered_hyperparameters_fail(model, tmp_path):
    path = save_model(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["hyperparameters"]["n_features"] = 16
    torch.save(payload, path)
    with pytest.raises(ModelFileError):
        load_model(path)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_with_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "pimlip_ase.model", "x": _Exploit(str(marker))}, path)
    with pytest.raises(ModelFileError, match="never unpickled"):
        load_model(path)
    assert not marker.exists()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(ModelFileError):
        load_model(raw)
    assert not marker.exists()


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="format tag"):
        load_model(tmp_path / "other.pt")
