"""Training: config validation, energy-only PIWSL runs, resume after SIGKILL, fine-tuning."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import ase.io
import numpy as np
import pytest
import torch
import yaml

from pimlip_ase import PIMLIPCalculator, load_model, train
from pimlip_ase.data import build_graphs
from pimlip_ase.errors import ConfigError, MissingLabelError, ResumeDataError, UnknownElementError
from pimlip_ase.training import ema_update, load_config, refit_reference_energies

TINY_MODEL = {"name": "painn", "cutoff": 3.0, "n_features": 8, "n_interactions": 1}


def _energy_only(structures):
    out = []
    for a in structures:
        b = a.copy()
        b.arrays.pop("REF_forces", None)
        b.info.pop("REF_stress", None)
        out.append(b)
    return out


def _config(data, output, **loss):
    return {
        "model": dict(TINY_MODEL),
        "data": {"train": data, "valid": 0.25},
        "loss": {"energy": 1.0, **loss},
        "optim": {"max_epochs": 3, "batch_size": 4, "lr": 1e-3},
        "output": str(output),
        "seed": 1,
    }


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match=r"top-level.*\['modle'\]"):
        load_config({"modle": {}, "data": {"train": "x"}})
    with pytest.raises(ConfigError, match=r"\['learning_rate'\] in config section 'optim'.*'lr'"):
        load_config({"data": {"train": "x"}, "optim": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match="data.train is required"):
        load_config({"model": {"name": "painn"}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="epsilon_mode"):
        load_config({"data": {"train": "x"}, "loss": {"epsilon_mode": "bond"}})


def test_missing_force_labels_are_reported(cu_dataset, tmp_path):
    cfg = _config(_energy_only(cu_dataset[:8]), tmp_path / "r", forces=1.0)
    with pytest.raises(MissingLabelError, match="REF_forces"):
        train(cfg)


def test_energy_only_piwsl_run_logs_every_term_and_serves_the_model(cu_dataset, tmp_path):
    data = tmp_path / "train.extxyz"
    ase.io.write(data, _energy_only(cu_dataset[:12]))
    cfg = _config(str(data), tmp_path / "run", pitc=1.0, pisc=0.01, k=0.5)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = train(tmp_path / "c.yaml")
    with open(tmp_path / "run" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3
    for term in ("train_energy", "train_pitc", "train_pisc", "val_energy_per_atom_mae"):
        assert all(float(r[term]) > 0 for r in rows), term
    log = (tmp_path / "run" / "train.log").read_text()
    assert "validation energies cannot detect" in log
    atoms = cu_dataset[20].copy()
    atoms.calc = PIMLIPCalculator(result.model_path)
    assert np.isfinite(atoms.get_forces()).all()
    assert load_model(result.model_path).provenance["config"]["loss"]["pitc"] == 1.0
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(tmp_path / "c.yaml")


def _run_cli(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "pimlip_ase.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_killed_run_resumes_to_the_uninterrupted_result(cu_dataset, tmp_path):
    data = tmp_path / "train.extxyz"
    ase.io.write(data, cu_dataset[:16])
    configs = {}
    for name in ("straight", "killed"):
        cfg = _config(str(data), tmp_path / name, forces=10.0, pitc=0.5)
        cfg["optim"]["max_epochs"] = 6
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump(cfg))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = _run_cli("train", "--config", str(configs["killed"]), env=env)
    ckpt, metrics = tmp_path / "killed" / "checkpoints" / "last.pt", tmp_path / "killed" / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt.exists() and metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model.pt").exists(), "the run finished before it could be killed"
    resumed = _run_cli("train", "--config", str(configs["killed"]), "--resume", env=env)
    assert resumed.wait() == 0, resumed.stdout.read()
    straight = train(configs["straight"])

    a, b = (
        load_model(straight.model_path).state_dict(),
        load_model(tmp_path / "killed" / "model.pt").state_dict(),
    )
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-9, atol=1e-11)
    with open(metrics) as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == list(range(1, 7))


def test_resume_refuses_other_data_given_in_memory(cu_dataset, tmp_path):
    """In-memory data has no path in the config: resuming checks the structures and labels themselves."""
    structures = [a.copy() for a in cu_dataset[:8]]
    cfg = _config(structures, tmp_path / "run")
    cfg["optim"]["max_epochs"] = 1
    first = train(cfg)
    relabelled = [a.copy() for a in structures]
    for a in relabelled:  # every label, so both the training and the validation split change
        a.info["REF_energy"] += 0.1
    with pytest.raises(ResumeDataError, match="the train and valid data differ from the checkpoint's"):
        train({**cfg, "data": {**cfg["data"], "train": relabelled}}, resume=True)
    assert train(cfg, resume=True).valid_metrics == first.valid_metrics  # same data: nothing left to do


def test_fine_tuning_refits_reference_energies(cu_dataset, tmp_path):
    base = train(_config(cu_dataset[:12], tmp_path / "base", forces=10.0))
    shifted = []
    for a in _energy_only(cu_dataset[12:24]):
        a.info["REF_energy"] += 0.75 * len(a)  # another "level of theory": +0.75 eV/atom
        shifted.append(a)
    plain, moved = load_model(base.model_path), load_model(base.model_path)
    refit_reference_energies(plain, build_graphs(_energy_only(cu_dataset[12:24]), plain.cutoff))
    refit_reference_energies(moved, build_graphs(shifted, moved.cutoff))
    # least squares is linear in the labels: the refit moves E0 by exactly the shift per atom
    assert float(moved.e0[0] - plain.e0[0]) == pytest.approx(0.75, abs=1e-9)
    cfg = _config(shifted, tmp_path / "tuned")
    cfg["init_from"] = str(base.model_path)
    tuned = train(cfg)
    assert load_model(tuned.model_path).hyperparameters() == plain.hyperparameters()
    assert tuned.valid_metrics["energy_per_atom_mae"] < 0.5 * 0.75  # far better than ignoring the shift
    ni = cu_dataset[0].copy()
    ni[0].symbol = "Ni"
    ni.info["REF_energy"] = 0.0
    cfg = _config([ni] * 4, tmp_path / "ni")
    cfg["init_from"] = str(base.model_path)
    with pytest.raises(UnknownElementError, match="Ni"):
        train(cfg)


def test_ema_warms_up_so_early_updates_follow_the_model():
    """The EMA decay is min(ema, (1+t)/(10+t)) at update t: the second update (t = 1) keeps only
    2/11 of the average, while late updates keep the configured 0.99."""
    model = torch.nn.Linear(1, 1, bias=False)
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=ema_update(0.99), use_buffers=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
        ema.update_parameters(model)  # t = 0: a copy
        model.weight.fill_(1.0)
        ema.update_parameters(model)  # t = 1: d = 2/11
        assert float(ema.module.weight.detach()) == pytest.approx(9 / 11)
        for _ in range(2000):  # d reaches 0.99 at t = 890
            ema.update_parameters(model)
        model.weight.fill_(2.0)
        ema.update_parameters(model)
    assert float(ema.module.weight.detach()) == pytest.approx(0.99 * 1.0 + 0.01 * 2.0)
    with pytest.raises(ConfigError, match="ema"):
        ema_update(1.5)


def test_ignored_first_epochs_are_never_kept(cu_dataset, tmp_path):
    """With ``optim.ignore_first_epochs`` the kept model is one of the later epochs even when an early
    one validates best, and no patience is spent before; a checkpoint written before the setting
    existed still resumes."""
    cfg = _config(cu_dataset[:8], tmp_path / "run")
    cfg["optim"] |= {"max_epochs": 5, "patience": 1, "lr": 0.0}  # lr 0: every epoch validates alike
    first_wins = train(cfg)
    assert first_wins.best_epoch == 1  # no later epoch improves on the first: it is kept
    cfg["output"] = str(tmp_path / "ignored")
    cfg["optim"]["ignore_first_epochs"] = 3
    result = train(cfg)
    assert result.best_epoch == 4  # epochs 1–3 are skipped; epoch 5 is the one patience allows
    with open(tmp_path / "ignored" / "metrics.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="ignore_first_epochs"):
        load_config({"data": {"train": "x"}, "optim": {"max_epochs": 3, "ignore_first_epochs": 3}})
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    del state["config"]["optim"]["ignore_first_epochs"]  # as written by an earlier version
    torch.save(state, ckpt)
    cfg |= {"output": str(tmp_path / "run")}
    cfg["optim"]["ignore_first_epochs"] = 0
    assert train(cfg, resume=True).best_epoch == 1
