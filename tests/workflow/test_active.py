"""Active learning: generator specs, the store's bookkeeping, the random baseline, resume after SIGKILL."""

from __future__ import annotations

import csv
import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from pimlip_ase.errors import ConfigError
from pimlip_ase.keys import ENERGY
from pimlip_ase.workflow.active import ActiveConfig, ActiveLearning, _train_member
from pimlip_ase.workflow.candidates import check_generator, run_generators
from pimlip_ase.workflow.label import make_labeller
from pimlip_ase.workflow.recipe import load_recipe
from pimlip_ase.workflow.store import CANDIDATE, Store


def test_generator_specs_name_the_problem():
    assert check_generator({"type": "rattle", "n": 2, "sigma": 0.1}, "x")["type"] == "rattle"
    with pytest.raises(ConfigError, match=r"unknown generator type 'wiggle'; valid: \['interstitial', 'md'"):
        check_generator({"type": "wiggle"}, "initial[0]")
    with pytest.raises(
        ConfigError, match=r"\['sigm'\] for generator 'rattle'; valid: \['distribution', 'n', 'sigma'\]"
    ):
        check_generator({"type": "rattle", "n": 2, "sigm": 0.1}, "initial[0]")
    with pytest.raises(ConfigError, match=r"'rattle' needs \['sigma'\]"):
        check_generator({"type": "rattle", "n": 2}, "initial[0]")
    with pytest.raises(ConfigError, match="'committee' or 'reference'"):
        check_generator({"type": "md", "temperature_K": 300, "n_snapshots": 2, "calculator": "dft"}, "x")
    with pytest.raises(ConfigError, match="committee must be ≥ 2"):
        ActiveConfig(committee=1, initial=[{"type": "rattle", "n": 2, "sigma": 0.1}])


def test_generators_are_seeded_and_md_temperatures_expand():
    from ase.build import bulk
    from ase.calculators.emt import EMT

    cells = [bulk("Cu", cubic=True)]
    specs = [
        {"type": "rattle", "n": 2, "sigma": 0.1},
        {"type": "md", "temperature_K": [300, 900], "n_snapshots": 2, "interval": 2},
    ]
    first = run_generators(specs, cells, {"committee": EMT()}, seed=3)
    again = run_generators(specs, cells, {"committee": EMT()}, seed=3)
    assert [a.info["generator"] for a in first] == ["rattle"] * 2 + ["md"] * 4
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0].positions, run_generators(specs[:1], cells, {}, seed=4)[0].positions)
    with pytest.raises(ConfigError, match="calculator: reference"):
        run_generators(specs[1:], cells, {"committee": None}, seed=0)


def test_store_keeps_every_candidate_and_each_iteration_is_recorded(tiny_run):
    store = Store(tiny_run.active.store_path)
    records = tiny_run.active.records
    assert [r["n_train_labels"] for r in records] == [4, 7, 10]
    assert tiny_run.active.stop_reason == "label budget of 10 spent"
    for k in (1, 2):
        rows = store.rows(iteration=k)
        assert len(rows) == 6 + 3  # 6 rattled cells + 3 committee-MD snapshots, all kept
        done = [kvp for _, _, kvp in rows if kvp["status"] == "done"]
        assert len(done) == 3 and all(kvp["selected"] for kvp in done)
        assert all(kvp["status"] in ("done", CANDIDATE) and kvp["force_std"] > 0 for _, _, kvp in rows)
        assert records[k - 1]["n_selected"] == 3 and records[k - 1]["n_candidates"] == 9
    assert store.count(role="test", status="done") == 3
    with open(tiny_run.active.output / "iterations.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["n_train_labels"]) for r in rows] == [4, 7, 10]
    assert all(float(r["test_forces_mae"]) > 0 for r in rows)


def test_random_baseline_reuses_the_labels_and_matches_the_schedule(tiny_run):
    al, rnd = Store(tiny_run.active.store_path), Store(tiny_run.random.store_path)
    assert [r["n_train_labels"] for r in tiny_run.random.records] == [4, 7, 10]
    for role in ("train", "test"):
        mine, theirs = al.labelled_atoms(role=role, iteration=0), rnd.labelled_atoms(role=role, iteration=0)
        assert [a.info[ENERGY] for a in mine] == [a.info[ENERGY] for a in theirs]
        for a, b in zip(mine, theirs, strict=True):  # copied with the provenance: not labelled again
            assert al.record(a.info["db_id"]) == rnd.record(b.info["db_id"])


def test_resume_refuses_a_finished_folder_or_a_changed_recipe(tiny_run, tiny_recipe):
    recipe = load_recipe(tiny_recipe)
    args = (recipe.training, recipe.labeller, recipe.structures, tiny_run.active.output)
    with pytest.raises(ConfigError, match="already holds an active-learning run"):
        ActiveLearning(recipe.active_learning, *args, label_workers=0).run()
    changed = ActiveConfig(**{**tiny_recipe["active_learning"], "per_iteration": 2})
    with pytest.raises(ConfigError, match=r"recipe changed in \['config'\]"):
        ActiveLearning(changed, *args, label_workers=0).run(resume=True)
    done = ActiveLearning(recipe.active_learning, *args, label_workers=0).run(resume=True)
    assert done.committee == tiny_run.active.committee  # a finished loop is only read back
    with pytest.raises(ConfigError, match="train_on must include 'energy'"):
        ActiveLearning(recipe.active_learning, *args, train_on=["forces"])
    assert make_labeller("emt").method == "emt"


def _snapshot(store: Store) -> dict[int, tuple]:
    return {
        rid: (kvp["status"], kvp.get(ENERGY), store.record(rid).get("wall_time_s"))
        for rid, _, kvp in store.rows()
    }


def _start(recipe_path, out, *extra) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pimlip_ase.cli", "run", str(recipe_path), "--output", str(out), *extra],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_when(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.monotonic() + 120
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before {what}: {proc.stdout.read()}"
    os.killpg(proc.pid, signal.SIGKILL)  # the run and any worker it started, as a batch system would
    proc.wait()


def test_killed_loop_resumes_without_relabelling_or_losing_structures(tiny_run, tiny_recipe, tmp_path):
    tiny_recipe["active_learning"]["compare_random"] = False  # the loop is what is killed here
    tiny_recipe["checks"] = {}
    path, out = tmp_path / "recipe.yaml", tmp_path / "run"
    path.write_text(yaml.safe_dump(tiny_recipe))
    store_path = out / "active" / "store.db"
    kills = [  # mid-training of iteration 1, then between its candidates and their labels
        (lambda: (out / "active/committee/iter_001/member_0/checkpoints/last.pt").exists(), "training"),
        (lambda: store_path.exists() and Store(store_path).count(iteration=2) > 0, "candidates"),
    ]
    before: dict[int, tuple] = {}
    for i, (ready, what) in enumerate(kills):
        _kill_when(_start(path, out, *(["--resume"] if i else [])), ready, what)
        now = _snapshot(Store(store_path))
        assert {k: v for k, v in now.items() if k in before and v[0] == "done"} == {
            k: v for k, v in before.items() if v[0] == "done"
        }  # labels survive; nothing relabelled
        before = now
    assert not (out / "summary.json").exists()
    final = _start(path, out, "--resume")
    assert final.wait(timeout=300) == 0, final.stdout.read()
    resumed, straight = Store(store_path), Store(tiny_run.active.store_path)
    after = _snapshot(resumed)
    assert all(after[k] == v for k, v in before.items() if v[0] == "done")
    assert [(k, v[0]) for k, v in after.items()] == [(k, v[0]) for k, v in _snapshot(straight).items()]
    for (_, a, kvp_a), (_, b, kvp_b) in zip(resumed.rows(), straight.rows(), strict=True):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-10)
        assert kvp_a.get(ENERGY) == pytest.approx(kvp_b.get(ENERGY), abs=1e-10)


def test_loop_stops_when_nothing_improves_and_labels_nothing_more(tiny_recipe, tmp_path):
    tiny_recipe["training"]["optim"]["max_epochs"] = 1
    tiny_recipe["active_learning"].update(
        initial=[{"type": "rattle", "n": 3, "sigma": 0.05}],
        test=[{"type": "rattle", "n": 2, "sigma": 0.05}],
        candidates=[{"type": "rattle", "n": 4, "sigma": 0.1}],
        patience=1,
        min_improvement=0.999,
        compare_random=False,
        label_budget=20,
    )
    recipe = load_recipe(tiny_recipe)
    result = ActiveLearning(
        recipe.active_learning,
        recipe.training,
        recipe.labeller,
        recipe.structures,
        tmp_path / "run",
        label_workers=0,
    ).run()
    assert result.stop_reason == "error and disagreement stopped improving for 1 iterations"
    assert [r["n_train_labels"] for r in result.records] == [3, 6]
    assert result.records[-1]["n_selected"] == 0  # chosen, then the loop stopped: none labelled
    store = Store(result.store_path)
    assert store.count(iteration=2, status="pending") == 0 and store.count(iteration=2, status=CANDIDATE) == 4


def test_member_killed_before_its_data_changed_is_trained_again(cu_dataset, tmp_path, caplog):
    """Labels retried after a kill change a member's training set: its checkpoint cannot be resumed,
    so the member starts afresh on the new data instead of stopping the loop."""
    out = tmp_path / "member"
    cfg = {
        "model": {"name": "schnet", "cutoff": 3.0, "n_features": 8, "n_interactions": 1},
        "data": {"train": cu_dataset[:8], "valid": 0.25},
        "optim": {"max_epochs": 1, "batch_size": 4},
        "output": str(out),
    }
    _train_member(cfg, None)
    (out / "model.pt").unlink()  # killed after its last checkpoint, before the model file
    more = {**cfg, "data": {"train": cu_dataset[:12], "valid": 0.25}}
    with caplog.at_level(logging.WARNING, logger="pimlip_ase.workflow.active"):
        assert _train_member(more, None) == str(out / "model.pt")
    assert (
        "data differ from the checkpoint's (other structures or labels); training this member again"
        in caplog.text
    )
    sizes = re.findall(r"(\d+) train / (\d+) valid", (out / "train.log").read_text())
    assert [int(a) + int(b) for a, b in sizes][::2] == [8, 12]  # first run, (refused resume,) new run
