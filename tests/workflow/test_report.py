"""The report of a tiny run: every file exists and report.md states the numbers of the run."""

from __future__ import annotations

import json
import shutil

from PIL import Image

from pimlip_ase.cli import main


def test_report_states_the_run_and_draws_its_plots(tiny_run):
    report = tiny_run.report
    text = report.read_text()
    final = tiny_run.active.records[-1]
    assert report == tiny_run.output / "report" / "report.md"
    assert f"**Verdict: {tiny_run.verdict}**" in text
    assert (
        f"**{final['n_train_labels']} training structures**" in text and "3 held-out test structures" in text
    )
    assert f"test force MAE {1e3 * final['test_forces_mae']:.1f} meV/Å" in text
    assert "label budget of 10 spent" in text and "| phonons |" in text and "| nvt | pass |" in text
    assert "Active learning vs random selection" in text
    for name in ("active_learning", "al_vs_random", "parity", "learning_curves", "phonons", "md"):
        assert f"![{name}]({name}.png)" in text
        with Image.open(report.parent / f"{name}.png") as image:
            assert image.size[0] >= 500 and image.size[1] >= 300
    summary = json.loads((tiny_run.output / "summary.json").read_text())
    assert summary["labels"] == 10 and set(summary["timings"]) >= {"active_learning_s", "checks_s", "total_s"}


def test_report_rebuilds_from_the_folder_alone(tiny_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run.output, copy)
    shutil.rmtree(copy / "report")
    (copy / "random" / "iterations.csv").unlink()
    assert main(["report", str(copy)]) == 0
    text = (copy / "report" / "report.md").read_text()
    assert "report written to" in capsys.readouterr().out
    assert "Active learning vs random" not in text and not (copy / "report" / "al_vs_random.png").exists()
    assert "| iteration | training labels |" in text
