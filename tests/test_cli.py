"""The `pimlip` command end to end on tiny data."""

from __future__ import annotations

import json

import ase.io
import pytest
import yaml

from pimlip_ase import build_model
from pimlip_ase.cli import build_parser, main
from pimlip_ase.modelfile import save_model


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
    cfg = {
        "model": {"name": "schnet", "cutoff": 3.0, "n_features": 8, "n_interactions": 1},
        "data": {
            "train": str(tmp_path / "train.extxyz"),
            "valid": 0.25,
            "test": str(tmp_path / "test.extxyz"),
        },
        "loss": {"energy": 1.0, "forces": 10.0, "stress": 100.0},
        "optim": {"max_epochs": 2, "batch_size": 4},
        "output": str(tmp_path / "run"),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert "test errors" in out and "forces" in out and "stress" in out
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "run" / "model.pt"),
                "--data",
                str(tmp_path / "test.extxyz"),
                "--json",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_structures"] == 6 and metrics["n_forces"] == 6 * 32
    assert 0 < metrics["forces_mae"] < 5 and metrics["stress_mae"] > 0


def test_eval_reports_the_taylor_residual_of_a_direct_force_head(cu_dataset, tmp_path, capsys):
    ase.io.write(tmp_path / "test.extxyz", cu_dataset[30:33])
    for forces, expected in (("direct", True), ("autograd", False)):
        model = build_model(
            "painn", species=["Cu"], cutoff=3.0, n_features=8, n_interactions=1, forces=forces
        )
        save_model(model, tmp_path / f"{forces}.pt")
        argv = ["eval", "--model", str(tmp_path / f"{forces}.pt"), "--data", str(tmp_path / "test.extxyz")]
        assert main(argv + ["--json"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert ("taylor_residual_rms" in metrics) is expected
        assert ("forces_from_energy_mae" in metrics) is expected  # the head vs its energy's gradient
        if expected:
            assert metrics["taylor_residual_rms"] > 0
            assert 0 < metrics["forces_from_energy_mae"] != metrics["forces_mae"]
            assert main(argv) == 0
            out = capsys.readouterr().out
            assert "RMS Taylor residual" in out and "forces as −∇E of the model's energy" in out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "none.pt"), "--data", "x.extxyz"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--output", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "pitc+pisc" in out and "plain" in out  # the energy-only comparison table
    assert "stability verdict:" in out and "nvt" in out and "phonons" in out and "labels: 7 training" in out
    report = tmp_path / "demo" / "cu_emt_active_learning" / "report" / "report.md"
    assert f"report: {report}" in out and report.is_file()
    assert (tmp_path / "demo" / "pitc+pisc" / "model.pt").exists()


def test_md_and_phonons_print_a_verdict(trained_cu_model, tmp_path, capsys):
    model, spec = str(trained_cu_model), "{bulk: Cu, crystal: fcc, a: 3.61, cubic: true, repeat: [2, 2, 2]}"
    short = ["--duration", "0.02", "--timestep", "2", "--temperature", "300"]
    plot = ["--plot", str(tmp_path / "md.png")]
    assert main(["md", "--model", model, model, "--structure", spec, *short, *plot]) == 0
    out = capsys.readouterr().out
    assert (
        "NVT pass: 0.02 ps at 300 K (bonds within 0.5 Å): stable" in out
        and (tmp_path / "md.png").stat().st_size > 0
    )
    nve = ["--ensemble", "nve", "--max-drift", "1e6"]
    assert main(["md", "--model", model, "--structure", spec, *nve, *short]) == 0
    assert "NVE pass: drift" in capsys.readouterr().out
    code = main(
        [
            "phonons",
            "--model",
            model,
            "--structure",
            "{bulk: Cu, crystal: fcc, a: 3.61}",
            "--supercell",
            "2",
            "2",
            "2",
            "--mesh",
            "4",
            "4",
            "4",
            "--reference",
            "emt",
            "--plot",
            str(tmp_path / "bands.png"),
        ]
    )
    out = capsys.readouterr().out
    assert "MAE vs reference" in out and out.startswith("phonons pass" if code == 0 else "phonons FAIL")
    assert (tmp_path / "bands.png").stat().st_size > 0


def test_label_fills_a_store(tmp_path, capsys):
    from ase.build import bulk

    from pimlip_ase.workflow.store import Store

    store = Store(tmp_path / "s.db")
    store.add([bulk("Cu", cubic=True), bulk("Cu", cubic=True) * (1, 1, 2)])
    assert main(["label", "--db", str(tmp_path / "s.db"), "--method", "emt", "--workers", "1"]) == 0
    assert "2 labelled, 0 pending, 0 failed" in capsys.readouterr().out
    assert len(store.labelled_atoms(method="emt")) == 2
