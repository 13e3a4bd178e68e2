"""Learning curves: does weak supervision pay? Energy-only and energy+force training, plain vs
PITC+PISC (k = 0 and ½), the energy-only routes (Δ-learning on a cheap method, pretrain on cheap
energies+forces then fine-tune on reference energies), PaiNN (autograd / direct forces) and SchNet,
and MACE as the peer — same splits, same epoch budget for every column.

Systems: ``cu`` fcc Cu 32/31-atom cells (with and without a vacancy) from EMT MD at 300–1200 K, EMT
labels, cheap method a Morse pair potential; ``ethanol`` GFN2-xTB MD at 500 K (tblite), cheap method
GFN1-xTB; ``water`` the shipped MP2-level set, cheap method GFN2-xTB (when the dataset exists).
Energy-only runs pick ε and the PIWSL weight by validation energy only (unless ``--no-tune``).

Every finished run is appended to ``results/data_efficiency_runs.jsonl`` (a rerun skips it) and a
killed training run of ours continues from its last epoch's checkpoint (MACE's starts over), so a
killed benchmark resumes. ``results/data_efficiency_pools.json`` records which training pool and test
set each preset's table was made from: ``--table-only`` tabulates on those without building a pool,
and a run whose pools come out otherwise (MD and labels rebuilt with other library versions or on
another CPU differ in their last bits, and an id hashes every bit) first retrains the cheapest recorded
runs on them: if their test errors come back within ``SAME_DATA_RTOL`` the rebuilt pool is recorded
as the same data and the run goes on, adding to the table; if not it stops, unless ``--new-pool``.
Writes results/data_efficiency_<preset>.md and .png.
    python benchmarks/data_efficiency.py                    # = --preset mini-mol: ~45 min
    python benchmarks/data_efficiency.py --preset quick     # minutes: smoke test
    python benchmarks/data_efficiency.py --preset mini-mol  # ethanol + water, N = 25/100, 1 seed, 200 epochs
    python benchmarks/data_efficiency.py --preset mini      # ~2.5 h: Cu, N = 25/100, 3 seeds, 60 epochs
    python benchmarks/data_efficiency.py --preset mini-n25  # ~30 min: its N = 25, 200 epochs, lr 5e-3
    python benchmarks/data_efficiency.py --preset water-default-size  # water, default model sizes
    python benchmarks/data_efficiency.py --preset ethanol-default-size  # ethanol, PaiNN 128×3
    python benchmarks/data_efficiency.py --preset cu-default-size  # Cu N = 25, PaiNN 128×3
    python benchmarks/data_efficiency.py --preset cu-curve  # Cu N = 25 … 400, PaiNN 32×3 (± direct forces)
    python benchmarks/data_efficiency.py --preset cu-curve-200ep  # its N = 25, 50, 100 with 200 epochs
    python benchmarks/data_efficiency.py --preset ethanol-curve  # ethanol N = 25 … 1000, the same
    python benchmarks/data_efficiency.py --preset water-curve  # water (MP2) N = 25 … 1000, + SchNet, MACE
    python benchmarks/data_efficiency.py --preset cpu       # Cu + ethanol, 2 seeds, 4 models: many hours
    python benchmarks/data_efficiency.py --preset full      # the issue's full grid (days on 2 cores)
``--seeds``, ``--models`` and ``--methods`` replace a preset's seeds, models and methods and
``--sizes`` trains only some of its N, e.g. more seeds of ``mini-mol``:
    python benchmarks/data_efficiency.py --preset mini-mol --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from ase.io import write

sys.path.insert(0, str(Path(__file__).parent))
import efficiency_data as edata  # noqa: E402

from pimlip_ase import train  # noqa: E402
from pimlip_ase.data import build_graphs, split_indices  # noqa: E402
from pimlip_ase.errors import ConfigError  # noqa: E402
from pimlip_ase.evaluate import calculator_errors, error_metrics, taylor_consistency  # noqa: E402
from pimlip_ase.modelfile import load_model  # noqa: E402

RESULTS = Path(__file__).parent / "results"
RUNS = RESULTS / "data_efficiency_runs.jsonl"
POOLS_FILE = "data_efficiency_pools.json"  # per preset and system: the ids its table was made from
WORK = RESULTS / "work"

#: Every training column, in run order: energy-only and energy+force, plain and PITC+PISC (k = 0, ½),
#: and the energy-only routes (Δ on the cheap method, pretrain on cheap E+F then fine-tune).
METHODS = [
    "E",
    "E+PIWSL k=0",
    "E+PIWSL k=½",
    "E+F",
    "E+F+PIWSL k=0",
    "E+F+PIWSL k=½",
    "Δ E",
    "Δ E+PIWSL k=½",
    "finetune E",
    "finetune E+PIWSL k=½",
]


def _methods_without(*names: str) -> list[str]:
    return [m for m in METHODS if m not in names]


PRESETS = {
    "quick": {
        "sizes": [25],
        "seeds": [0],
        "systems": ["cu"],
        "epochs": 15,
        "n_test": 100,
        "test_size": 120,  # 20 structures of further MD runs: the top-up path, cheaply
        "tune": False,
        "models": ["painn"],
        "methods": ["E", "E+PIWSL k=½", "E+F"],
        "nvt": {"temperature_K": 300.0, "duration_ps": 0.05, "timestep_fs": 1.0},
    },
    "mini": {
        "sizes": [25, 100],
        "seeds": [0, 1, 2],
        "systems": ["cu"],
        "epochs": 60,
        "n_test": 300,
        "tune": False,
        "models": ["painn", "schnet", "mace"],
        "methods": ["E", "E+PIWSL k=0", "E+PIWSL k=½", "E+F", "Δ E", "finetune E"],
        # a hot crystal: bonds judged on positions averaged over ~one slow phonon period (stability_md)
        "nvt": {"temperature_K": 900.0, "duration_ps": 2.0, "timestep_fs": 2.0, "bond_average_fs": 300.0},
    },
    "cpu": {
        "sizes": [25, 100],
        "seeds": [0, 1],
        "systems": ["cu", "ethanol"],
        "epochs": 120,
        "n_test": 500,
        "models": ["painn", "painn-direct", "schnet", "mace"],
        "methods": _methods_without("E+F+PIWSL k=½"),
    },
    "full": {
        "sizes": [25, 50, 100, 200, 400, 1000],
        "seeds": [0, 1, 2],
        "systems": ["cu", "ethanol", "water"],
        "epochs": 500,
        "n_test": 500,
        "models": ["painn", "painn-direct", "schnet", "mace"],
        "methods": METHODS,
    },
}
# the molecules (ethanol GFN2-xTB, shipped MP2 water) at N = 25 / 100 (water: its pool holds 75), one
# seed, trained to convergence; energy-only PIWSL tuned by validation energy; NVT stable time of every
# energy-only model; direct-force PaiNN without the Δ / fine-tuning routes (its head needs PIWSL to learn)
PRESETS["mini-mol"] = {
    "sizes": [25, 100],
    "seeds": [0],
    "systems": ["ethanol", "water"],
    "epochs": 200,
    "lr": 5e-3,
    "n_test": 300,
    "tune": True,
    "models": ["painn", "painn-direct", "mace"],
    "methods": _methods_without("E+F+PIWSL k=0", "E+F+PIWSL k=½"),
    "model_methods": {"painn-direct": ["E", "E+PIWSL k=0", "E+PIWSL k=½", "E+F"]},
    "nvt": {"temperature_K": 500.0, "duration_ps": 2.0, "timestep_fs": 0.5},
}
# the mini preset's N = 25 again, on the same data (test set, pretraining set, pool: "pool_sizes"),
# with a budget that trains our models to convergence
PRESETS["mini-n25"] = {
    **{k: v for k, v in PRESETS["mini"].items() if k != "nvt"},
    "seeds": [0],
    "models": ["painn", "mace"],
    "sizes": [25],
    "pool_sizes": [25, 100],
    "epochs": 200,
    "lr": 5e-3,
}
# water at the models' default sizes (PaiNN 128×3, 0.58 M parameters; SchNet 64×3), 3 seeds: does a
# model large enough to over-fit 20 energies gain from PITC/PISC where PaiNN 32×3 does not?
PRESETS["water-default-size"] = {
    **PRESETS["mini-mol"],
    "sizes": [25],
    "seeds": [0, 1, 2],
    "systems": ["water"],
    "models": ["painn-128", "painn-128-direct", "schnet"],
    "model_methods": {"painn-128-direct": PRESETS["mini-mol"]["model_methods"]["painn-direct"]},
}
# ethanol with PaiNN at its default size, 3 seeds: does a larger model gain from PITC/PISC, alone or
# on top of Δ-learning, where PaiNN 32×3 does not? (k = 0 and fine-tuning left out: never better above)
PRESETS["ethanol-default-size"] = {
    **PRESETS["mini-mol"],
    "seeds": [0, 1, 2],
    "systems": ["ethanol"],
    "models": ["painn-128"],
    "methods": ["E", "E+PIWSL k=½", "Δ E", "Δ E+PIWSL k=½", "E+F"],
    "model_methods": {},
}
# Cu N = 25 with PaiNN at its default size, as mini-n25 otherwise (same splits, 200 epochs, no tuning)
PRESETS["cu-default-size"] = {
    **PRESETS["mini-n25"],
    "seeds": [0, 1, 2],
    "models": ["painn-128"],
    "methods": ["E", "E+PIWSL k=½", "Δ E", "E+F"],
}
# Cu learning curve N = 25 … 400 (a pool of 1,016 structures, so other splits and test set than
# mini's): do energy-only training and PITC/PISC close on force training as energies grow? With the
# direct-force head and SchNet: energies only, ± PITC/PISC k = ½, and with forces; MACE as the
# peer. At N ≤ 50 our early stopping skips the first 6 epochs (SMALL_VALID; 8 of the 42 runs there
# changed under the rule)
PRESETS["cu-curve"] = {
    **PRESETS["mini"],
    "sizes": [25, 50, 100, 200, 400],
    "ignore_first": 0.1,
    "models": ["painn", "painn-direct", "schnet", "mace"],
    "methods": ["E", "E+PIWSL k=½", "E+F", "E+F+PIWSL k=½", "Δ E"],
    "model_methods": {
        "painn-direct": ["E", "E+PIWSL k=½", "E+F", "E+F+PIWSL k=½"],
        "schnet": ["E", "E+PIWSL k=½", "E+F"],
    },
}
# the Cu curve's N = 25, 50 and 100 trained for up to 200 epochs instead of 60 (same pool and splits):
# is the direct-force head's lead with PITC/PISC over the conservative model (N = 100), or MACE's lead
# over all of ours with energies only (N = 25, where our runs saw 180 optimiser steps), an artefact
# of the 60-epoch budget?
PRESETS["cu-curve-200ep"] = {
    **PRESETS["cu-curve"],
    "sizes": [25, 50, 100],
    "pool_sizes": PRESETS["cu-curve"]["sizes"],
    "epochs": 200,
    "models": ["painn", "painn-direct", "mace"],
    "methods": ["E", "E+PIWSL k=½", "E+F", "Δ E"],
}
# ethanol learning curve N = 25 … 1000, PaiNN 32×3, as the molecule preset otherwise (a pool of 1,760
# structures, so other splits and test set than mini-mol's): where the cheap method carries the
# forces, does energy-only training with or without PITC/PISC reach force training as energies grow?
# With the direct-force head and SchNet: energies only, ± PITC/PISC k = ½, and with forces; MACE as
# the peer. At N ≤ 50 our early stopping skips the first 20 epochs (SMALL_VALID): with 5 or 10
# validation energies it had kept an epoch ≤ 9 in 21 of 132 such water runs; 15 of 45 ethanol runs
# changed under the rule
PRESETS["ethanol-curve"] = {
    **PRESETS["ethanol-default-size"],
    "methods": [*PRESETS["ethanol-default-size"]["methods"], "E+F+PIWSL k=½"],
    "ignore_first": 0.1,
    "sizes": [25, 50, 100, 200, 400, 1000],
    "models": PRESETS["cu-curve"]["models"],
    "model_methods": PRESETS["cu-curve"]["model_methods"],
}
# water learning curve N = 25 … 1000 on a pool of 1,760 new MP2/cc-pVTZ-labelled geometries made as the
# shipped set was (all three temperatures, shuffled), with MACE: the molecule where the cheap method is
# weakest (GFN2-xTB 217 meV/Å on the shipped test set) and PITC/PISC gained most at N = 25; the
# direct-force head and SchNet with energies only, ± PITC/PISC k = ½, and with forces; the direct head
# also Δ + PITC/PISC (the PITC/PISC-trained head's energy beat the conservative model's on water).
# Early stopping at N ≤ 50 as in ethanol-curve (its "ignore_first")
PRESETS["water-curve"] = {
    **PRESETS["ethanol-curve"],
    "systems": ["water"],
    "water_pool": "md",
    "model_methods": {
        **PRESETS["ethanol-curve"]["model_methods"],
        "painn-direct": [*PRESETS["ethanol-curve"]["model_methods"]["painn-direct"], "Δ E+PIWSL k=½"],
    },
}
#: Our models: PaiNN 32×3 (small enough to train to early stopping on 2 CPU cores) and the defaults.
MODELS = {
    "painn": {"name": "painn", "n_features": 32, "n_interactions": 3},
    "painn-direct": {"name": "painn", "n_features": 32, "n_interactions": 3, "forces": "direct"},
    "schnet": {"name": "schnet", "n_features": 64, "n_interactions": 3},  # SchNet's default size
    "painn-128": {"name": "painn", "n_features": 128, "n_interactions": 3},  # PaiNN's default size
    "painn-128-direct": {"name": "painn", "n_features": 128, "n_interactions": 3, "forces": "direct"},
}
#: The peer: MACE (mace-torch's own trainer, `python -m mace.cli.run_train`) at a size comparable
#: to our PaiNN-32 (32 scalar channels, 2 interactions, L_max 3 edge features, correlation 3).
MACE_ARGS = {
    "model": "MACE",
    "hidden_irreps": "32x0e",
    "num_interactions": "2",
    "max_ell": "3",
    "correlation": "3",
    "MLP_irreps": "16x0e",
    "num_radial_basis": "8",
    "E0s": "average",
    "loss": "weighted",
    "energy_weight": "1.0",
    "batch_size": "8",
    "valid_batch_size": "16",
    "lr": "0.01",
    "ema_decay": "0.99",
    "default_dtype": "float64",
    "device": "cpu",
    "eval_interval": "1",
    "valid_fraction": "0.2",
}
#: Our trainer's version in run keys and folders: rows of an older trainer stay in the runs file for
#: the record but are neither reused nor tabulated ("ema-warmup": EMA decay warm-up, 2026-11-30).
TRAINER = "ema-warmup"
DEFAULT_LR = 2e-3  # our models' learning rate; a preset may set its own ("lr")
LR = DEFAULT_LR
#: Set by main, per system: its training pool's id (efficiency_data.train_pool_id) and its test
#: set's fingerprint (efficiency_data.test_fingerprint, computed once, not per row).
POOL_ID: dict[str, str] = {}
TEST_ID: dict[str, str] = {}
#: (system, train pool, test set) of a rebuilt pool accepted as the same data as a table's recorded
#: pool -> that recorded (train pool, test set); its rows keep their own ids and count under these.
SAME_AS: dict[tuple[str, str, str], tuple[str, str]] = {}
#: A rebuilt pool is the same data when recorded runs retrained on it give their test energy and force
#: MAE again to this relative tolerance (seeds alone move them by percents; a 1e-13 Å difference in an
#: MD start stays below 1e-10 Å over a pool's runs here, and a retrained run agreed to 6e-7).
SAME_DATA_RTOL = 1e-3
N_SAME_DATA_RUNS = 2  # recorded runs retrained for that check: the cheapest of distinct methods
BASELINES: dict[str, str] = {}  # per system: the zero-force and cheap-method errors on its test set
PEER_METHODS = ("E", "E+F")  # MACE has no PITC/PISC, Δ or fine-tuning column here
PIWSL_GRID = [(0.02, 0.1), (0.05, 0.1), (0.05, 1.0)]  # (ε Å, w_PITC); w_PISC = w_PITC / 100
#: How an energy-only PIWSL run of a direct-force head picks from PIWSL_GRID: validation energy cannot
#: see the head, so the score adds the head's label-free disagreement with its own energies on the
#: validation structures (evaluate.taylor_consistency at ε 0.05 Å, k = ½; both eV/atom). Rows record it.
DIRECT_SELECTION = "energy+consistency"
#: Rows of direct-force heads also record the test force errors of −∇E of their energy (meV/Å).
GRAD_KEYS = {"test_grad_forces_mae_meV_A": "mae", "test_grad_forces_rmse_meV_A": "rmse"}
GRAD_NVT = "grad_nvt_stable_ps"  # a direct-force head's energy gradient in NVT, energy-only rows
#: A preset's "ignore_first" (a fraction of the epoch cap): runs of ours whose validation set holds at
#: most SMALL_VALID structures (N ≤ 50) skip that many first epochs in early stopping and in the choice
#: of the kept model (optim.ignore_first_epochs), because a few validation energies can favour an
#: early, barely trained epoch. MACE's trainer has no such setting; its rows are unchanged.
SMALL_VALID = 10
IGNORE_FIRST = 0.0  # set by main from the preset


def ignored_epochs(model: str, n: int, epochs: int) -> int:
    """How many first epochs a run on N structures skips in early stopping and model choice."""
    small = len(split_indices(n, 0.2, 0)[1]) <= SMALL_VALID
    return int(IGNORE_FIRST * epochs) if small and model != "mace" else 0


def is_direct(model: str) -> bool:
    """Whether one of our models (by MODELS key) predicts forces with a direct head; MACE: no."""
    return MODELS.get(model, {}).get("forces") == "direct"


def selection(model: str, method: str, tune: bool) -> str | None:
    """The rule that picks a run's (ε, w): None for untuned runs and conservative models (validation
    energy alone), DIRECT_SELECTION for energy-only PIWSL runs of direct-force heads."""
    energy_only_piwsl = "PIWSL" in method and "E+F" not in method
    return DIRECT_SELECTION if tune and is_direct(model) and energy_only_piwsl else None


def loss_for(method: str, eps: float = 0.05, w: float = 1.0) -> dict:
    loss = {"energy": 1.0, "forces": 10.0 if "E+F" in method else 0.0}
    if "PIWSL" in method:
        loss.update(pitc=w, pisc=w / 100, epsilon=eps, k=0.5 if "k=½" in method else 0.0)
    return loss


def run_dir(system, model, method, n, seed, epochs, eps=0.05, w=1.0) -> Path:
    """Working folder of one training run of ours (its checkpoints, model.pt and valid.json)."""
    tag = f"{system}-{model}-{method}-{n}-{seed}-{eps}-{w}-{epochs}ep-lr{LR}-{TRAINER}-pool{POOL_ID[system]}"
    skip = ignored_epochs(model, n, epochs)
    return WORK / (tag + (f"-skip{skip}" if skip else "")).replace(" ", "_").replace("½", "half")


def fit(system, method, model, n, seed, epochs, eps=0.05, w=1.0, init_from=None, train_set=None):
    """Train one model (or continue its killed run); returns (model, seconds, validation metrics)."""
    structures = train_set if train_set is not None else edata.train_pool(system, n, seed)
    if method.startswith("Δ"):
        structures = edata.delta_labels(system, structures)
    mcfg = dict(MODELS[model])
    tag = run_dir(system, model, method, n, seed, epochs, eps, w).name
    cfg = {
        "model": {**mcfg, "cutoff": edata.CUTOFF[system]},
        "data": {"train": structures, "valid": 0.2},
        "loss": loss_for(method, eps, w),
        "optim": {
            "lr": LR,
            "batch_size": 8,
            "max_epochs": epochs,
            "patience": max(10, epochs // 5),
            "lr_patience": max(4, epochs // 15),
            "ema": 0.99,
            "ignore_first_epochs": ignored_epochs(model, n, epochs),
        },
        "seed": seed,
        "output": str(WORK / tag),
        "init_from": init_from,
    }
    if init_from:
        cfg["model"] = {"name": mcfg["name"]}
    out = WORK / tag
    if not (out / "valid.json").exists():  # else finished earlier (a pretrained model, a resumed benchmark)
        try:  # a killed run continues where it stopped
            res = train(cfg, resume=(out / "checkpoints" / "last.pt").is_file())
        except ConfigError as err:  # its config or data changed since: start afresh
            print(f"{tag}: {err}; training again from scratch", flush=True)
            shutil.rmtree(out)
            res = train(cfg)
        (out / "valid.json").write_text(json.dumps(res.valid_metrics))
    with (out / "metrics.csv").open() as fh:  # training time: its epochs', also across interruptions
        secs = sum(float(r["time_s"]) for r in csv.DictReader(fh))
    return load_model(out / "model.pt"), secs, json.loads((out / "valid.json").read_text())


def fit_mace(system, method, n, seed, epochs):
    """Train MACE with its own CLI on the same N structures (energy-only: the forces are removed from
    the file it reads); returns (ASE calculator, seconds, training-file energy MAE eV/atom)."""
    from mace.calculators import MACECalculator

    tag = f"{system}-mace-{method}-{n}-{seed}-{epochs}ep-pool{POOL_ID[system]}"
    out = WORK / tag
    model_file = out / "mace.model"
    structures = [a.copy() for a in edata.train_pool(system, n, seed)]
    if method == "E":
        for a in structures:
            del a.arrays["REF_forces"]
    t0, secs = time.perf_counter(), 0.0
    if not model_file.exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        write(out / "train.xyz", structures, format="extxyz")
        args = {
            **MACE_ARGS,
            "name": "mace",
            "seed": str(seed),
            "train_file": str(out / "train.xyz"),
            "r_max": str(edata.CUTOFF[system]),
            "energy_key": "REF_energy",
            "forces_key": "REF_forces",
            "forces_weight": "10.0" if method == "E+F" else "0.0",
            "max_num_epochs": str(epochs),
            "patience": str(max(10, epochs // 5)),
            "scheduler_patience": str(max(4, epochs // 15)),
            "work_dir": str(out),
            "model_dir": str(out),
        }
        cmd = [sys.executable, "-m", "mace.cli.run_train", "--ema"] + [f"--{k}={v}" for k, v in args.items()]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not model_file.exists():
            raise RuntimeError(f"MACE training failed ({tag}):\n{proc.stderr[-3000:]}")
        secs = time.perf_counter() - t0
    calc = MACECalculator(model_paths=str(model_file), device="cpu", default_dtype="float64")
    # MACE's validation split is its own (valid_fraction 0.2 of the file); score the whole file's
    # energies as the energy-only user would see them — for the record only, nothing is tuned on it
    return calc, secs, calculator_errors(calc, structures)["energy_per_atom_mae"]


def nvt_stable_ps(system: str, calc, nvt: dict, seed: int) -> float:
    """Langevin NVT from the first test structure until the workflow's bond criterion (0.5 Å) breaks;
    returns the stable time in ps (the full duration when it never breaks)."""
    from pimlip_ase.workflow.stability_md import nvt_stability

    return nvt_stability(edata.test_set(system)[0], calc, seed=seed, progress=False, **nvt).stable_time_ps


def run_one(system, method, model, n, seed, epochs, tune, nvt=None, known=None) -> dict:
    """Train (and for energy-only PIWSL tune) one column; its row of test errors and, with ``nvt``
    settings and an energy-only method, the NVT stable time (for direct-force heads also that of their
    energy's gradient). NVT stable times already in ``known`` (an earlier row of this run) are kept."""
    from pimlip_ase.calculator import PIMLIPCalculator
    from pimlip_ase.workflow.delta import delta_calculator

    energy_only = "E+F" not in method
    known = known or {}
    if model == "mace":
        calc, secs, val = fit_mace(system, method, n, seed, epochs)
        test = edata.test_set(system)
        metrics = calculator_errors(calc, test)
        row = _row(system, method, model, n, seed, epochs, None, None, secs, metrics, val, test)
        if nvt and energy_only:
            kept = known.get("nvt_stable_ps")
            row["nvt_stable_ps"] = nvt_stable_ps(system, calc, nvt, seed) if kept is None else kept
        return row
    init_from = None
    if method.startswith("finetune"):
        pre = "pretrain E+F"  # its own folder: an "E+F" run at N = N_PRETRAIN trains on reference labels
        fit(system, pre, model, edata.N_PRETRAIN, seed, epochs, train_set=edata.cheap_pool(system, seed))
        init_from = str(run_dir(system, model, pre, edata.N_PRETRAIN, seed, epochs) / "model.pt")
    grid = PIWSL_GRID if ("PIWSL" in method and tune and energy_only) else [(0.05, 1.0)]
    rule = selection(model, method, tune)
    if rule:  # the structures training held out for validation (its split, by seed)
        train_set = edata.train_pool(system, n, seed)
        valid_set = [train_set[i] for i in split_indices(n, 0.2, seed)[1]]
    best = None
    for eps, w in grid:  # energy-only: choose by validation energy (and for direct heads consistency)
        m, secs, val = fit(system, method, model, n, seed, epochs, eps, w, init_from)
        score = val["energy_per_atom_mae"]
        if rule:
            val = val | {"consistency": taylor_consistency(m, build_graphs(valid_set, m.cutoff))}
            score += val["consistency"]
        if best is None or score < best[0]:
            best = (score, m, secs, val, eps, w)
    _, m, secs, val, eps, w = best
    test = edata.test_set(system)
    if method.startswith("Δ"):  # error of cheap + Δ_model against REF = error of Δ_model against REF − cheap
        test = edata.delta_labels(system, test)
    graphs = build_graphs(test, m.cutoff)
    metrics = error_metrics(m, graphs)
    row = _row(
        system, method, model, n, seed, epochs, eps, w, secs, metrics, val["energy_per_atom_mae"], test
    )
    if rule:
        row |= {"select": rule, "valid_consistency_meV_atom": 1e3 * val["consistency"]}
    if not m.conservative:  # the head vs its own energy's gradient, on the same test set
        with m.forces_from_energy():
            grad = error_metrics(m, graphs)
        row |= {k: 1e3 * grad[f"forces_{s}"] for k, s in GRAD_KEYS.items()}
    if nvt and energy_only:

        def stable_ps() -> float:  # through the calculator a user of this row's method would run
            delta = method.startswith("Δ")
            calc = delta_calculator(edata.cheap_calc(system), m) if delta else PIMLIPCalculator(m)
            return nvt_stable_ps(system, calc, nvt, seed)

        row["nvt_stable_ps"] = known["nvt_stable_ps"] if "nvt_stable_ps" in known else stable_ps()
        if not m.conservative:
            with m.forces_from_energy():
                row[GRAD_NVT] = known[GRAD_NVT] if GRAD_NVT in known else stable_ps()
    return row


def _row(system, method, model, n, seed, epochs, eps, w, secs, metrics, valid_e, test) -> dict:
    """One line of the runs file: the run's key, its settings and its errors (meV) on the test set
    ``test`` (for Δ rows relabelled with REF − CHEAP; recorded: its size and the fingerprint of the
    system's reference-labelled test set)."""
    return {
        "system": system,
        "trainer": TRAINER,
        "method": method,
        "model": model,
        "n": n,
        "seed": seed,
        "epochs": epochs,
        "eps": eps,
        "w": w,
        "train_s": secs,
        "test_energy_mae_meV_atom": 1e3 * metrics["energy_per_atom_mae"],
        "test_forces_mae_meV_A": 1e3 * metrics["forces_mae"],
        "test_forces_rmse_meV_A": 1e3 * metrics["forces_rmse"],
        "valid_energy_mae_meV_atom": 1e3 * valid_e,
        "train_pool": POOL_ID[system],
        "n_test": len(test),
        "test_set": TEST_ID[system],
    }


def table_pair(r: dict) -> tuple[str | None, str | None]:
    """The (training pool, test set) a row (or {system, train_pool, test_set}) counts under: its own,
    or for a rebuilt pool accepted as the same data (:func:`accept_rebuilt`) the recorded pair."""
    pair = (r.get("train_pool"), r.get("test_set"))
    return SAME_AS.get((r["system"], *pair), pair)


def current_pair(system: str) -> tuple[str | None, str | None]:
    """The (training pool, test set) this process's runs of ``system`` count under."""
    return table_pair({"system": system, "train_pool": POOL_ID[system], "test_set": TEST_ID[system]})


def run_key(r: dict) -> tuple:
    """What identifies a run of one trainer version: system, training pool (as the table counts it),
    method, model, N, seed, epochs, lr, how its (ε, w) were chosen and how many first epochs its early
    stopping skipped."""
    return (
        r["system"],
        table_pair(r)[0],
        r["method"],
        r["model"],
        r["n"],
        r["seed"],
        r.get("epochs"),
        r.get("lr", DEFAULT_LR),
        r.get("select"),
        r.get("ignore_first_epochs", 0),
    )


def recorded_pools() -> dict[str, dict[str, dict]]:
    """Per preset and system, the training-pool id, test-set fingerprint and baselines its table was
    made from (``POOLS_FILE``; empty before the first table)."""
    path = RESULTS / POOLS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def record_ids(preset: str, systems: list[str]) -> None:
    """Note (atomically) which pool and test set the preset's table now shows, with the versions
    that built them: a pool rebuilt with other library versions or on another CPU differs in its last
    bits, so it has another id (and counts as the same data only once :func:`accept_rebuilt` says so)."""
    data = recorded_pools()
    kept = {  # an entry that still holds keeps the versions that first built its pool, and its rebuilds
        s: v
        for s, v in data.get(preset, {}).items()
        if s in POOL_ID and (v.get("train_pool"), v.get("test_set")) == current_pair(s)
    }
    data[preset] = {
        s: kept.get(s)
        or {
            "train_pool": POOL_ID[s],
            "test_set": TEST_ID[s],
            "baselines": BASELINES[s],
            "built_with": _versions(),
        }
        for s in systems
    }
    _write_pools(data)


def _versions() -> dict[str, str]:
    import ase
    import numpy

    return {"ase": ase.__version__, "numpy": numpy.__version__, "torch": torch.__version__}


def _write_pools(data: dict) -> None:
    tmp = RESULTS / (POOLS_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    tmp.replace(RESULTS / POOLS_FILE)


def set_ids(preset: str, systems: list[str], table_only: bool, new_pool: bool) -> list[str]:
    """Fill POOL_ID, TEST_ID, BASELINES and SAME_AS. ``--table-only`` takes the recorded ids (no pool
    is built). Returns the systems whose built pools differ from the recorded ones and are not yet
    accepted as the same data (none with ``--new-pool``, whose runs start a new table): check those
    with :func:`accept_rebuilt` before training, so that a run never replaces a table with fewer rows."""
    recorded = recorded_pools().get(preset, {})
    for s, was in recorded.items():
        for alias in was.get("same_data", []):
            SAME_AS[(s, alias["train_pool"], alias["test_set"])] = (was["train_pool"], was["test_set"])
    if table_only and all(s in recorded for s in systems):
        POOL_ID.update({s: recorded[s]["train_pool"] for s in systems})
        TEST_ID.update({s: recorded[s]["test_set"] for s in systems})
        BASELINES.update({s: recorded[s]["baselines"] for s in systems})
        return []
    TEST_ID.update({s: edata.test_fingerprint(s) for s in systems})
    POOL_ID.update({s: edata.train_pool_id(s) for s in systems})
    BASELINES.update({s: edata.baselines(s) for s in systems})
    if new_pool:
        for s in systems:  # this run's rows make a new table: they count under their own ids
            SAME_AS.pop((s, POOL_ID[s], TEST_ID[s]), None)
        return []
    return [
        s
        for s in systems
        if s in recorded and current_pair(s) != (recorded[s]["train_pool"], recorded[s]["test_set"])
    ]


def accept_rebuilt(preset: str, system: str, p: dict, tune: bool) -> None:
    """Retrain the cheapest recorded runs of the preset's table (ours, without PITC/PISC, one per
    method, N_SAME_DATA_RUNS of them) on this machine's rebuilt pool. If every test energy and force
    MAE comes back within SAME_DATA_RTOL, record the rebuilt pool as the same data (with the
    comparison) in POOLS_FILE, so its runs join the table; otherwise stop, naming the differences."""
    was = recorded_pools()[preset][system]
    table_rows = [
        r
        for r in load_runs()
        if r["system"] == system
        and (r.get("train_pool"), r.get("test_set")) == (was["train_pool"], was["test_set"])
        and in_table(r, p)
        and r["model"] != "mace"
        and "PIWSL" not in r["method"]
        and not r["method"].startswith("finetune")
    ]
    picked: dict[str, dict] = {}
    for r in sorted(table_rows, key=lambda r: r["train_s"]):
        picked.setdefault(r["method"], r)
    picked_rows = list(picked.values())[:N_SAME_DATA_RUNS]
    moved = (
        f"{system}: train pool {was['train_pool']} → {POOL_ID[system]}, "
        f"test set {was['test_set']} → {TEST_ID[system]}"
    )
    checks = []
    for r in picked_rows:
        print(f"{moved}: retraining recorded run {r['model']} {r['method']} N={r['n']} seed {r['seed']}")
        again = run_one(system, r["method"], r["model"], r["n"], r["seed"], r["epochs"], tune)
        keys = ("test_energy_mae_meV_atom", "test_forces_mae_meV_A")
        diff = max(abs(again[k] - r[k]) / abs(r[k]) for k in keys)
        checks.append(
            {"run": f"{r['model']} {r['method']} N={r['n']} seed {r['seed']}", "max_rel_diff": diff}
            | {f"recorded_{k}": r[k] for k in keys}
            | {f"rebuilt_{k}": again[k] for k in keys}
        )
    if not checks or any(c["max_rel_diff"] > SAME_DATA_RTOL for c in checks):
        found = "; ".join(f"{c['run']}: relative difference {c['max_rel_diff']:.1e}" for c in checks)
        raise SystemExit(
            f"preset {preset!r}: this machine builds other data than its table was made from ({moved}; "
            f"recorded in {RESULTS / POOLS_FILE}), and "
            + (
                f"retrained recorded runs differ by more than {SAME_DATA_RTOL:g}: {found}"
                if checks
                else "the table has no recorded run of ours to retrain"
            )
            + ". Tabulate the recorded rows with --table-only, or pass --new-pool to start a new table."
        )
    data = recorded_pools()
    entry = {"train_pool": POOL_ID[system], "test_set": TEST_ID[system], "built_with": _versions()}
    data[preset][system].setdefault("same_data", []).append(entry | {"reproduced": checks})
    _write_pools(data)
    SAME_AS[(system, POOL_ID[system], TEST_ID[system])] = (was["train_pool"], was["test_set"])
    print(f"{moved}: the same data (retrained runs within {SAME_DATA_RTOL:g}); its runs join the table")


def in_table(r: dict, p: dict) -> bool:
    """Whether a row of the right pool was trained as preset ``p`` trains (trainer, N, epochs, lr,
    first epochs skipped)."""
    return (
        r.get("trainer") == TRAINER
        and r["n"] in p["sizes"]
        and r.get("epochs") == p["epochs"]
        and r.get("lr", DEFAULT_LR) == LR
        and r.get("ignore_first_epochs", 0) == ignored_epochs(r["model"], r["n"], p["epochs"])
    )


def load_runs() -> list[dict]:
    """The finished runs; a run recorded twice (e.g. again with an NVT column) counts once, the last."""
    if not RUNS.exists():
        return []
    rows = [json.loads(line) for line in RUNS.read_text().splitlines() if line.strip()]
    return list({(r.get("trainer"), *run_key(r)): r for r in rows}.values())


def column(r: dict) -> str:
    """A row's method as tables and plots name it: with its selection rule where it has one."""
    return f"{r['method']}, chosen by {r['select']}" if r.get("select") else r["method"]


def table(runs: list[dict], preset: str, threads: int) -> str:
    nvt = PRESETS[preset].get("nvt")
    seeds = sorted({r["seed"] for r in runs})
    used = {m: MODELS[m] for m in sorted({r["model"] for r in runs}) if m in MODELS}
    skipped = max(ignored_epochs("painn", n, PRESETS[preset]["epochs"]) for n in PRESETS[preset]["sizes"])
    lines = [
        "# Data efficiency: test errors vs training-set size",
        "",
        f"Preset `{preset}` ({PRESETS[preset]['epochs']} epochs at most; seeds {seeds}, "
        "the 'seeds' column counts those of each row); "
        f"machine {platform.machine()}, torch {torch.__version__}, {threads} threads, CPU. Models: {used}. "
        f"Ours (trainer `{TRAINER}`): AdamW lr {PRESETS[preset].get('lr', DEFAULT_LR)}, batch 8, EMA 0.99 "
        "(warm-up min(0.99, (1+t)/(10+t)) at update t), ReduceLROnPlateau, early stopping on validation loss "
        "(20 % of N held out for validation"
        + (
            f"; with ≤ {SMALL_VALID} validation structures the first {skipped} epochs are neither kept "
            "nor counted by it"
            if skipped
            else ""
        )
        + "). MACE (`mace` rows, mace-torch's own trainer, energy-only and "
        f"energy+force): {MACE_ARGS}. Every column has the same epoch cap and early-stopping patience. "
        + (
            f"Energy-only PIWSL runs pick (ε, w_PITC) from {PIWSL_GRID} by validation energy only "
            "(w_PISC = w_PITC/100); rows 'chosen by energy+consistency' (direct-force heads) by validation "
            "energy MAE + the head's disagreement with its own energies on the validation structures "
            "(RMS Taylor residual at ε 0.05 Å, k = ½, eV/atom; no labels needed). "
            if PRESETS[preset].get("tune", True)
            else "PIWSL runs use ε = 0.05 Å, w_PITC = 1, w_PISC = 0.01 (no tuning in this preset). "
        )
        + "Δ E: energy-only training of the difference to the cheap method; finetune E: pretrain on "
        f"{edata.N_PRETRAIN} cheap-method energies+forces, then fine-tune on the N reference energies. "
        "Test sets: "
        f"{edata.describe()}. Mean ± std over seeds. '−∇E F': for direct-force heads, the force errors of "
        "the gradient of the same model's energy (its head unused)."
        + (
            f" NVT: Langevin {nvt['duration_ps']} ps at {nvt['temperature_K']:.0f} K, "
            f"{nvt['timestep_fs']} fs steps, from the first test structure, until a bond deviates by "
            "> 0.5 Å"
            + (f" (averaged over {nvt['bond_average_fs']:.0f} fs)" if nvt.get("bond_average_fs") else "")
            + " (energy-only models; '−∇E NVT': a direct-force head's energy gradient, head unused)."
            if nvt
            else ""
        ),
        "",
        "| system | model | method | N | seeds | E MAE meV/atom | F MAE meV/Å | F RMSE meV/Å "
        "| −∇E F MAE meV/Å | (ε Å, w_PITC) chosen |"
        + (" NVT stable ps | −∇E NVT stable ps |" if nvt else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if nvt else ""),
    ]
    keys = sorted({(r["system"], r["model"], column(r), r["n"]) for r in runs})
    for system, model, method, n in keys:
        rs = [r for r in runs if (r["system"], r["model"], column(r), r["n"]) == (system, model, method, n)]

        def ms(key, rs=rs, digits=1):
            vals = [r[key] for r in rs if key in r]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            return f"{statistics.mean(vals):.{digits}f} ± {sd:.{digits}f}"

        grad = ms("test_grad_forces_mae_meV_A") if any("test_grad_forces_mae_meV_A" in r for r in rs) else ""
        chosen = " / ".join(sorted({f"({r['eps']}, {r['w']})" for r in rs})) if "PIWSL" in method else ""
        stable = "".join(
            f" {ms(key, digits=2)} |" if any(key in r for r in rs) else " |"
            for key in ("nvt_stable_ps", GRAD_NVT)
        )
        lines.append(
            f"| {system} | {model} | {method} | {n} | {len(rs)} | {ms('test_energy_mae_meV_atom')} | "
            f"{ms('test_forces_mae_meV_A')} | {ms('test_forces_rmse_meV_A')} | {grad} | {chosen} |"
            + (stable if nvt else "")
        )
    for system in sorted({r["system"] for r in runs}):
        lines.append(f"\nReference points for `{system}`: {BASELINES[system]}")
        rebuilt = [
            r for r in runs if r["system"] == system and table_pair(r) != (r["train_pool"], r["test_set"])
        ]
        for pool, test in sorted({(r["train_pool"], r["test_set"]) for r in rebuilt}):
            count = sum((r["train_pool"], r["test_set"]) == (pool, test) for r in rebuilt)
            lines.append(
                f"\n{count} `{system}` rows were trained and scored on a rebuild of this pool (train pool "
                f"{pool}, test set {test}): the same data, as recorded runs retrained on it gave their "
                f"test errors again within {SAME_DATA_RTOL:g} ({POOLS_FILE})."
            )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = sorted({r["system"] for r in runs})
    fig, axes = plt.subplots(1, len(systems), figsize=(6 * len(systems), 4.2), squeeze=False)
    for ax, system in zip(axes[0], systems, strict=True):
        columns = sorted({(r["model"], column(r)) for r in runs if r["system"] == system})
        for k, (model, method) in enumerate(columns):
            rs = [r for r in runs if (r["system"], r["model"], column(r)) == (system, model, method)]
            ns = sorted({r["n"] for r in rs})
            ys = [statistics.mean(r["test_forces_mae_meV_A"] for r in rs if r["n"] == n) for n in ns]
            style = "o-" if "PIWSL" in method else "s--"
            ax.loglog(ns, ys, style, color=plt.cm.tab20(k % 20), label=f"{model}: {method}", ms=4)
        sizes = sorted({r["n"] for r in runs if r["system"] == system})
        ax.set_xticks(sizes, [str(n) for n in sizes])  # the sizes run, in place of 3×10¹, 4×10¹, …
        ax.set_xticks([], minor=True)
        ax.set_title(system)
        ax.set_xlabel("training structures N")
        ax.set_ylabel("test force MAE (meV/Å)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    global RESULTS, RUNS, WORK, LR, IGNORE_FIRST
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=list(PRESETS), default="mini-mol")
    parser.add_argument("--seeds", type=int, nargs="+", help="replace the preset's seeds")
    parser.add_argument("--sizes", type=int, nargs="+", help="train only these of its sizes N (same pool)")
    parser.add_argument("--models", nargs="+", choices=[*MODELS, "mace"], help="replace the preset's models")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="replace the preset's methods")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads; also MP2 labelling processes (water)"
    )
    parser.add_argument("--no-tune", action="store_true", help="skip the (ε, w) grid for energy-only PIWSL")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help=f"tabulate the finished runs, train nothing (on the pools recorded in {POOLS_FILE})",
    )
    parser.add_argument(
        "--new-pool",
        action="store_true",
        help="train even where the pools built here differ from the recorded ones (starts a new table)",
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="folder for the tables (default: %(default)s)"
    )
    args = parser.parse_args()
    RESULTS, RUNS, WORK = args.results, args.results / "data_efficiency_runs.jsonl", args.results / "work"
    edata.WORK = WORK
    torch.set_num_threads(args.threads)
    if set(args.sizes or []) - set(PRESETS[args.preset]["sizes"]):
        parser.error(f"--sizes: preset {args.preset!r} has sizes {PRESETS[args.preset]['sizes']}")
    p = PRESETS[args.preset] | {
        name: value
        for name, value in (("seeds", args.seeds), ("models", args.models), ("methods", args.methods))
        if value
    }
    WORK.mkdir(parents=True, exist_ok=True)
    edata.N_TEST, edata.TEST_SIZE = p["n_test"], p.get("test_size", edata.TEST_SIZE)
    edata.WATER_POOL, edata.WORKERS = p.get("water_pool", "shipped"), args.threads
    largest = max(p.get("pool_sizes", p["sizes"]))
    edata.N_PRETRAIN = min(edata.N_PRETRAIN, 2 * largest)
    edata.POOL = edata.N_TEST + edata.N_PRETRAIN + int(1.25 * largest) + 10
    LR, IGNORE_FIRST = p.get("lr", DEFAULT_LR), p.get("ignore_first", 0.0)
    needs_nvt = p.get("nvt") is not None
    tune = p.get("tune", True) and not args.no_tune
    systems = []
    for system in p["systems"]:
        if edata.available(system):
            systems.append(system)
        else:
            print(f"skipping {system}: {edata.available.reason}")
    for system in set_ids(args.preset, systems, args.table_only, args.new_pool):
        accept_rebuilt(args.preset, system, p, tune)
    earlier = {run_key(r): r for r in load_runs() if r.get("trainer") == TRAINER}
    # a run scored on another test set, without the preset's NVT column or (direct-force heads) without
    # the errors of −∇E or its NVT time, is evaluated again (its trained model is reused; NVT stable
    # times, from the test set's unchanged first structure, are kept)
    done = {
        k
        for k, r in earlier.items()
        if r["system"] in systems
        and table_pair(r)[1] == current_pair(r["system"])[1]
        and (not needs_nvt or "E+F" in r["method"] or "nvt_stable_ps" in r)
        and (not is_direct(r["model"]) or GRAD_KEYS.keys() <= r.keys())
        and (not needs_nvt or not is_direct(r["model"]) or "E+F" in r["method"] or GRAD_NVT in r)
    }
    for system in [] if args.table_only else systems:
        for n in [n for n in p["sizes"] if not args.sizes or n in args.sizes]:
            if n > edata.n_available(system):
                print(f"skipping {system} N = {n}: its pool holds {edata.n_available(system)} structures")
                continue
            for seed in p["seeds"]:
                for model in p["models"]:
                    own = p.get("model_methods", {}).get(model, p["methods"])
                    methods = PEER_METHODS if model == "mace" else own
                    for method in [m for m in p["methods"] if m in methods]:
                        fields = {"system": system, "method": method, "model": model, "n": n}
                        fields |= {"train_pool": POOL_ID[system], "test_set": TEST_ID[system]}
                        fields["select"] = selection(model, method, tune)
                        fields["ignore_first_epochs"] = ignored_epochs(model, n, p["epochs"])
                        key = run_key(fields | {"seed": seed, "epochs": p["epochs"], "lr": LR})
                        if key in done:
                            continue
                        prev = earlier.get(key, {})
                        row = run_one(system, method, model, n, seed, p["epochs"], tune, p.get("nvt"), prev)
                        row["lr"] = LR
                        if fields["ignore_first_epochs"]:
                            row["ignore_first_epochs"] = fields["ignore_first_epochs"]
                        if prev and row["train_s"] == 0.0:  # reused model: keep its training time
                            row["train_s"] = prev["train_s"]
                        with RUNS.open("a") as fh:
                            fh.write(json.dumps(row) + "\n")
                        print(json.dumps(row), flush=True)
    runs = [
        r
        for r in load_runs()
        if r["system"] in systems and table_pair(r) == current_pair(r["system"]) and in_table(r, p)
    ]
    md = table(runs, args.preset, args.threads)
    (RESULTS / f"data_efficiency_{args.preset}.md").write_text(md)
    record_ids(args.preset, systems)
    if runs:
        plot(runs, RESULTS / f"data_efficiency_{args.preset}.png")
    print(md)


if __name__ == "__main__":
    main()
