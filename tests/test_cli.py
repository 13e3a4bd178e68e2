"""The `pimlip` command end to end on tiny data."""

from __future__ import annotations

import json

import ase.io
import pytest
import yaml

from pimlip_ase.cli import build_parser, main


def test_every_command_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in commands:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: pimlip" in capsys.readouterr().out


def test_train_then_eval(cu_dataset, tmp_path, capsys):
    ase.io.write(tmp_path / "train.extxyz", cu_dataset[:12])
    ase.io.write(tmp_path / "test.extxyz", cu_dataset[30:36])
    cfg = {"model": {"name": "schnet", "cutoff": 3.0, "n_features": 8, "n_interactions": 1},
           "data": {"train": str(tmp_path / "train.extxyz"), "valid": 0.25,
                    "test": str(tmp_path / "test.extxyz")},
           "loss": {"energy": 1.0, "forces": 10.0, "stress": 100.0},
           "optim": {"max_epochs": 2, "batch_size": 4}, "output": str(tmp_path / "run")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "test errors" in out and "forces" in out and "stress" in out
    assert main(["eval", "--model", str(tmp_path / "run" / "model.pt"), "--data",
                 str(tmp_path / "test.extxyz"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_structures"] == 6 and metrics["n_forces"] == 6 * 32
    assert 0 < metrics["forces_mae"] < 5 and metrics["stress_mae"] > 0


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "none.pt"), "--data", "x.extxyz"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--output", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "pitc+pisc" in out and "plain" in out and "Langevin MD" in out
    assert (tmp_path / "demo" / "pitc+pisc" / "model.pt").exists()
