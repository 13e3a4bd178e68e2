"""Smoke tests of the benchmark scripts' quick modes, run as a user would (a subprocess), writing
their tables to a temporary folder: every row is there and every number is finite."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"


def run_script(name: str, *args: str, results: Path) -> str:
    cmd = [sys.executable, str(BENCH / name), *args, "--threads", "1", "--results", str(results)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(f"| {first_cell}")
    ]


def means(cells: list[str]) -> list[float]:
    """The means of "mean ± std" cells."""
    return [float(c.split("±")[0]) for c in cells]


@pytest.mark.slow
def test_calculator_speed_quick(tmp_path):
    run_script("calculator_speed.py", "--quick", "--repeats", "3", results=tmp_path)
    text = (tmp_path / "calculator_speed.md").read_text()
    for system in ("hexanol (21)", "Cu fcc 108"):
        rows = table_rows(text, system)
        assert [r[1] for r in rows] == ["float32", "float64"]
        for r in rows:
            ms, per_atom = float(r[2]), float(r[3])
            assert ms > 0 and per_atom > 0 and math.isfinite(float(r[4]))
    assert (tmp_path / "calculator_speed.png").stat().st_size > 0
    assert not (tmp_path / "work" / "calculator_speed_partial.json").exists()  # removed once complete


@pytest.mark.slow
def test_training_cost_quick(tmp_path):
    run_script("training_cost.py", "--quick", "--batch-size", "2", results=tmp_path)
    rows = table_rows((tmp_path / "training_cost.md").read_text(), "Cu fcc 32")
    ratios = {r[2]: float(r[4]) for r in rows}
    assert ratios["energy+forces"] == 1.0
    # a PIWSL step evaluates more geometries than a plain one: it cannot be cheaper
    assert ratios["energy + PITC+PISC, k=½"] > ratios["energy only"]
    assert ratios["energy+forces + PITC+PISC, k=½"] > ratios["energy+forces"]
    assert len(ratios) == 9 and all(math.isfinite(v) and v > 0 for v in ratios.values())


@pytest.mark.slow
def test_data_efficiency_quick(tmp_path):
    run_script("data_efficiency.py", "--preset", "quick", results=tmp_path)
    text = (tmp_path / "data_efficiency_quick.md").read_text()
    rows = table_rows(text, "cu")
    assert sorted(r[2] for r in rows) == ["E", "E+F", "E+PIWSL k=½"]
    assert all(math.isfinite(v) and v > 0 for r in rows for v in means(r[5:8]))
    assert all(r[8] == "" for r in rows)  # −∇E errors: direct-force heads only
    settings = {r[2]: r[9] for r in rows}  # the PIWSL run's (ε, w_PITC); none for the others
    assert settings == {"E": "", "E+F": "", "E+PIWSL k=½": "(0.05, 1.0)"}
    stable = {r[2]: r[10] for r in rows}  # NVT stable time (ps) of the energy-only models only
    assert stable["E+F"] == ""
    assert all(0.0 <= means([stable[m]])[0] <= 0.05 for m in ("E", "E+PIWSL k=½"))
    assert "zero-force predictor" in text
    runs = tmp_path / "data_efficiency_runs.jsonl"
    assert len(runs.read_text().splitlines()) == 3
    run_script("data_efficiency.py", "--preset", "quick", results=tmp_path)  # resumes: nothing to redo
    assert len(runs.read_text().splitlines()) == 3
    # rows scored on another test set are scored again from their saved models, keeping their
    # training time and NVT stable time, with the same errors on the same test set
    first = [json.loads(line) for line in runs.read_text().splitlines()]
    runs.write_text("".join(json.dumps(r | {"test_set": "another"}) + "\n" for r in first))
    run_script("data_efficiency.py", "--preset", "quick", results=tmp_path)
    again = [json.loads(line) for line in runs.read_text().splitlines()][3:]
    assert [r["method"] for r in again] == [r["method"] for r in first]
    for old, new in zip(first, again, strict=True):
        assert new["n_test"] == 120 and new["test_set"] == old["test_set"] != "another"
        assert new["train_pool"] == old["train_pool"]
        assert new["train_s"] == old["train_s"] and new.get("nvt_stable_ps") == old.get("nvt_stable_ps")
        assert new["test_forces_mae_meV_A"] == pytest.approx(old["test_forces_mae_meV_A"], rel=1e-9)
    # a training run killed after its last checkpoint continues from it instead of starting over: same
    # model and errors, and its training time is the sum of its epochs' (before and after the kill)
    folder = next((tmp_path / "work").glob("cu-painn-E-25-0-*"))
    (folder / "valid.json").unlink()
    (folder / "model.pt").unlink()
    kept = [r for r in again if r["method"] != "E"]
    runs.write_text("".join(json.dumps(r) + "\n" for r in kept))
    run_script("data_efficiency.py", "--preset", "quick", results=tmp_path)
    resumed = json.loads(runs.read_text().splitlines()[-1])
    with (folder / "metrics.csv").open() as fh:
        epochs = list(csv.DictReader(fh))
    assert resumed["method"] == "E" and resumed["train_s"] == sum(float(r["time_s"]) for r in epochs)
    assert resumed["test_forces_mae_meV_A"] == pytest.approx(first[0]["test_forces_mae_meV_A"], rel=1e-9)
    # a direct-force head's row also scores the gradient of its energy, and for energy-only training
    # runs NVT on that gradient too; a row without these is scored again, keeping its training and
    # its head's NVT time
    direct = ("--models", "painn-direct", "--methods", "E", "E+F")
    run_script("data_efficiency.py", "--preset", "quick", *direct, results=tmp_path)
    energy_row, forces_row = (json.loads(line) for line in runs.read_text().splitlines()[-2:])
    for row in (energy_row, forces_row):
        assert row["model"] == "painn-direct" and row["test_grad_forces_mae_meV_A"] > 0
        assert row["test_grad_forces_mae_meV_A"] != row["test_forces_mae_meV_A"]
    assert 0.0 <= energy_row["grad_nvt_stable_ps"] <= 0.05 and "grad_nvt_stable_ps" not in forces_row
    cells = {
        r[2]: r
        for r in table_rows((tmp_path / "data_efficiency_quick.md").read_text(), "cu")
        if r[1] == "painn-direct"
    }
    assert means([cells["E+F"][8]])[0] == pytest.approx(forces_row["test_grad_forces_mae_meV_A"], abs=0.06)
    assert means([cells["E"][11]])[0] == pytest.approx(energy_row["grad_nvt_stable_ps"], abs=0.006)
    assert cells["E+F"][10:12] == ["", ""]
    stripped = {k: v for k, v in energy_row.items() if "grad" not in k}
    runs.write_text(runs.read_text() + json.dumps(stripped) + "\n")
    run_script("data_efficiency.py", "--preset", "quick", *direct, results=tmp_path)
    again = json.loads(runs.read_text().splitlines()[-1])
    assert again["method"] == "E" and again["train_s"] == energy_row["train_s"]  # its saved model
    assert again["nvt_stable_ps"] == energy_row["nvt_stable_ps"]
    for key in ("test_grad_forces_mae_meV_A", "grad_nvt_stable_ps"):
        assert again[key] == pytest.approx(energy_row[key], rel=1e-9)


def test_water_md_pool(tmp_path, monkeypatch):
    """The water learning curve's generated pool: made as the shipped set (GFN2-xTB MD at its three
    temperatures, with MD seeds the shipped set and the extra test runs do not use), MP2/cc-pVTZ
    reference and GFN2-xTB cheap labels on every structure, shuffled, cached, identical when re-read."""
    pytest.importorskip("pyscf")
    pytest.importorskip("tblite")
    monkeypatch.syspath_prepend(str(BENCH))
    import efficiency_data as edata

    from pimlip_ase.datasets.generate_cbs_water import SEEDS, TEMPERATURES_K

    monkeypatch.setattr(edata, "WORK", tmp_path)
    monkeypatch.setattr(edata, "WATER_POOL", "md")
    monkeypatch.setattr(edata, "POOL", 6)
    pool = edata.pool("water")
    assert len(pool) == 6
    assert {a.info["md_temperature_K"] for a in pool} == set(TEMPERATURES_K)
    assert {int(a.info["md_seed"]) for a in pool} == set(edata.WATER_POOL_SEEDS)
    assert not set(edata.WATER_POOL_SEEDS) & {*SEEDS, edata.EXTRA_SEEDS, edata.EXTRA_SEEDS + 1}
    assert [int(a.info["frame"]) for a in pool] != sorted(int(a.info["frame"]) for a in pool)
    for a in pool:
        assert a.get_chemical_symbols() == ["O", "H", "H"] and a.info["REF_method"] == "mp2/cc-pvtz"
        assert abs(a.info["REF_energy"] - a.info["CHEAP_energy"]) > 1.0  # MP2 and xTB: other zeros
        assert a.arrays["REF_forces"].shape == a.arrays["CHEAP_forces"].shape == (3, 3)
        assert abs(a.arrays["REF_forces"].sum(axis=0)).max() < 1e-6  # translation invariance
    again = edata.pool("water")
    assert [a.info["REF_energy"] for a in again] == [a.info["REF_energy"] for a in pool]


def test_direct_heads_choose_piwsl_settings_by_energy_and_taylor_residual(monkeypatch):
    """Energy-only PITC/PISC runs of a direct-force head pick (ε, w) by validation energy + the head's
    Taylor residual; every other run keeps validation energy alone, and rows chosen by the two rules
    are neither reused for each other nor tabulated together."""
    monkeypatch.syspath_prepend(str(BENCH))
    import data_efficiency as de

    assert de.selection("painn-direct", "E+PIWSL k=½", tune=True) == de.DIRECT_SELECTION
    assert de.selection("painn-128-direct", "E+PIWSL k=0", tune=True) == de.DIRECT_SELECTION
    for model, method, tune in (
        ("painn", "E+PIWSL k=½", True),  # conservative: validation energy
        ("painn-direct", "E+PIWSL k=½", False),  # untuned: nothing to choose
        ("painn-direct", "E+F+PIWSL k=½", True),  # with forces: no (ε, w) grid
        ("painn-direct", "E", True),
    ):
        assert de.selection(model, method, tune) is None
    row = {"system": "cu", "train_pool": "p", "method": "E+PIWSL k=½", "model": "painn-direct", "n": 25}
    row |= {"seed": 0, "epochs": 60, "lr": 2e-3}
    chosen = row | {"select": de.DIRECT_SELECTION}
    assert de.run_key(row) != de.run_key(chosen)
    assert de.column(row) == "E+PIWSL k=½" != de.column(chosen)


def test_small_validation_sets_skip_the_first_epochs(monkeypatch):
    """With a preset's "ignore_first", runs of ours with ≤ 10 validation structures (N ≤ 50) skip that
    fraction of the epoch cap in early stopping; such runs get their own key and folder, the others
    and MACE's keep theirs."""
    monkeypatch.syspath_prepend(str(BENCH))
    import data_efficiency as de

    monkeypatch.setattr(de, "IGNORE_FIRST", 0.1)
    monkeypatch.setattr(de, "POOL_ID", {"water": "p"})
    assert de.ignored_epochs("painn", 25, 200) == de.ignored_epochs("schnet", 50, 200) == 20
    assert de.ignored_epochs("painn", 100, 200) == de.ignored_epochs("mace", 25, 200) == 0
    row = {"system": "water", "train_pool": "p", "method": "E", "model": "painn", "n": 25, "seed": 0}
    assert de.run_key(row) != de.run_key(row | {"ignore_first_epochs": 20})
    assert de.run_dir("water", "painn", "E", 25, 0, 200).name.endswith("-skip20")
    assert "skip" not in de.run_dir("water", "painn", "E", 100, 0, 200).name
    monkeypatch.setattr(de, "IGNORE_FIRST", 0.0)
    assert "skip" not in de.run_dir("water", "painn", "E", 25, 0, 200).name


def test_tables_keep_to_the_recorded_pools(monkeypatch, tmp_path):
    """A table records the pool and test set it was made from: ``--table-only`` tabulates on those
    without building a pool, and a run whose freshly built pool differs (another machine's MD bits)
    stops naming both ids, unless ``--new-pool``, instead of replacing the table with fewer rows."""
    monkeypatch.syspath_prepend(str(BENCH))
    import data_efficiency as de

    built = {"train_pool": "aaaa1111", "test_set": "t1", "baselines": "zero-force 500"}
    monkeypatch.setattr(de, "RESULTS", tmp_path)
    for name in ("POOL_ID", "TEST_ID", "BASELINES"):
        monkeypatch.setattr(de, name, {})
    monkeypatch.setattr(de.edata, "train_pool_id", lambda s: built["train_pool"])
    monkeypatch.setattr(de.edata, "test_fingerprint", lambda s: built["test_set"])
    monkeypatch.setattr(de.edata, "baselines", lambda s: built["baselines"])

    de.set_ids("mini", ["cu"], table_only=False, new_pool=False)  # nothing recorded yet: builds
    de.record_ids("mini", ["cu"])
    record = json.loads((tmp_path / de.POOLS_FILE).read_text())["mini"]["cu"]
    assert {k: record[k] for k in built} == built and "ase" in record["built_with"]

    def unbuildable(system):
        raise AssertionError("--table-only built a pool")

    monkeypatch.setattr(de.edata, "train_pool_id", unbuildable)
    monkeypatch.setattr(de.edata, "test_fingerprint", unbuildable)
    monkeypatch.setattr(de, "POOL_ID", {})
    de.set_ids("mini", ["cu"], table_only=True, new_pool=False)
    assert (de.POOL_ID, de.TEST_ID, de.BASELINES) == (
        {"cu": "aaaa1111"},
        {"cu": "t1"},
        {"cu": "zero-force 500"},
    )

    monkeypatch.setattr(de.edata, "train_pool_id", lambda s: "bbbb2222")
    monkeypatch.setattr(de.edata, "test_fingerprint", lambda s: "t2")
    assert de.set_ids("mini", ["cu"], table_only=False, new_pool=False) == ["cu"]
    with pytest.raises(SystemExit, match="aaaa1111 → bbbb2222.*t1 → t2.*no recorded run"):
        de.accept_rebuilt("mini", "cu", de.PRESETS["mini"], tune=False)
    assert de.set_ids("mini", ["cu"], table_only=False, new_pool=True) == []
    de.record_ids("mini", ["cu"])
    assert json.loads((tmp_path / de.POOLS_FILE).read_text())["mini"]["cu"]["train_pool"] == "bbbb2222"


def test_a_rebuilt_pool_joins_its_table_only_when_retrained_runs_agree(monkeypatch, tmp_path):
    """A pool rebuilt with other ids counts as the recorded one only after recorded runs retrained on
    it give their test errors again (within SAME_DATA_RTOL): then the acceptance and its evidence are
    recorded, its rows keep their own ids but join the table, and its runs skip the recorded ones."""
    monkeypatch.syspath_prepend(str(BENCH))
    import data_efficiency as de

    monkeypatch.setattr(de, "RESULTS", tmp_path)
    monkeypatch.setattr(de, "RUNS", tmp_path / "runs.jsonl")
    for name in ("POOL_ID", "TEST_ID", "BASELINES", "SAME_AS"):
        monkeypatch.setattr(de, name, {})
    monkeypatch.setattr(de, "LR", de.DEFAULT_LR)
    monkeypatch.setattr(de, "IGNORE_FIRST", 0.0)
    pools = {"mini": {"cu": {"train_pool": "aaaa1111", "test_set": "t1", "baselines": "b"}}}
    (tmp_path / de.POOLS_FILE).write_text(json.dumps(pools))
    recorded = {"system": "cu", "trainer": de.TRAINER, "model": "painn", "n": 25, "seed": 0, "epochs": 60}
    recorded |= {"train_pool": "aaaa1111", "test_set": "t1", "train_s": 3.0}
    rows = [
        recorded
        | {"method": m, "test_energy_mae_meV_atom": e, "test_forces_mae_meV_A": f}
        | {"test_forces_rmse_meV_A": 1.4 * f, "eps": 0.05, "w": 1.0}
        for m, e, f in (("E", 20.0, 300.0), ("E+F", 30.0, 100.0), ("E+PIWSL k=½", 20.0, 290.0))
    ]
    de.RUNS.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(de.edata, "train_pool_id", lambda s: "bbbb2222")
    monkeypatch.setattr(de.edata, "test_fingerprint", lambda s: "t2")
    monkeypatch.setattr(de.edata, "baselines", lambda s: "b")
    retrained = []

    def run_one(system, method, model, n, seed, epochs, tune, scale):
        retrained.append(method)
        row = next(r for r in rows if r["method"] == method)
        return {k: v * scale for k, v in row.items() if k.endswith(("_atom", "_A"))}

    monkeypatch.setattr(de, "run_one", lambda *a, **k: run_one(*a, scale=1.05))
    assert de.set_ids("mini", ["cu"], table_only=False, new_pool=False) == ["cu"]
    with pytest.raises(SystemExit, match="differ by more than 0.001: painn E N=25 seed 0: relative"):
        de.accept_rebuilt("mini", "cu", de.PRESETS["mini"], tune=False)
    assert sorted(retrained) == ["E", "E+F"]  # ours without PITC/PISC, one run per method
    assert "same_data" not in json.loads((tmp_path / de.POOLS_FILE).read_text())["mini"]["cu"]

    monkeypatch.setattr(de, "run_one", lambda *a, **k: run_one(*a, scale=1.0 + 1e-6))
    de.accept_rebuilt("mini", "cu", de.PRESETS["mini"], tune=False)
    entry = json.loads((tmp_path / de.POOLS_FILE).read_text())["mini"]["cu"]
    (alias,) = entry["same_data"]
    assert (alias["train_pool"], alias["test_set"]) == ("bbbb2222", "t2")
    assert {c["run"] for c in alias["reproduced"]} == {"painn E N=25 seed 0", "painn E+F N=25 seed 0"}
    assert de.current_pair("cu") == ("aaaa1111", "t1")
    new_row = rows[0] | {"train_pool": "bbbb2222", "test_set": "t2", "n": 100}
    assert de.table_pair(new_row) == ("aaaa1111", "t1")
    assert de.run_key(rows[0] | {"train_pool": "bbbb2222", "test_set": "t2"}) == de.run_key(rows[0])
    assert "1 `cu` rows were trained and scored on a rebuild" in de.table([*rows, new_row], "mini", 1)
    de.record_ids("mini", ["cu"])  # the recorded entry stays, with its accepted rebuild
    assert json.loads((tmp_path / de.POOLS_FILE).read_text())["mini"]["cu"] == entry

    monkeypatch.setattr(de, "SAME_AS", {})  # a later process reads the acceptance back
    assert de.set_ids("mini", ["cu"], table_only=False, new_pool=False) == []
    assert de.current_pair("cu") == ("aaaa1111", "t1")
