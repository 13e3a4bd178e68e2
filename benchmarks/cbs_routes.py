"""Three routes from energy-only CCSD(T)/CBS data to forces, each with and without PITC/PISC.

Data: the shipped water sets (``pimlip_ase/datasets``): the same GFN2-xTB MD geometries labelled at
CCSD(T)/CBS (energies only), MP2/cc-pVTZ (energies + forces, the "MP2 twin") and GFN2-xTB (the cheap
method). Split by trajectory: the ``md_seed == 0`` trajectories are the training pool (a fixed
validation set of ``n_valid`` plus the first ``N`` of the rest for training), the ``md_seed == 1``
trajectories are the test set, so no test geometry is a time neighbour of a training one.

Routes, each trained on reference *energies only* (CBS, or MP2 to score forces honestly):

* ``energy-only``: PaiNN on the reference energies;
* ``xTB pretrain → fine-tune``: PaiNN pretrained on xTB energies + forces of the whole pool, then
  fine-tuned on the reference energies (``init_from``; per-element E0 refitted);
* ``Δ on xTB``: PaiNN trained on E_ref − E_xTB, served as ``SumCalculator([TBLite, model])``
  (:func:`pimlip_ase.workflow.delta.delta_calculator`).

"+ PIWSL" adds PITC + PISC; (w_PITC, k) is chosen from a small grid by *validation energy only*
(w_PISC = w_PITC / 10, ε = 0.05 Å); every grid point is listed too. References: the ceiling (same N
structures trained on MP2 energies *and* forces), xTB alone, and the xTB-pretrained model before
fine-tuning. Every model is evaluated through the ASE calculator a user would run.

Finished training runs are reused (``model.pt`` in the work folder), so a killed benchmark resumes.

    OMP_NUM_THREADS=1 nice -n 15 python benchmarks/cbs_routes.py            # the table (about 1 h)
    python benchmarks/cbs_routes.py --quick                                  # smoke test, ~1 min
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from pimlip_ase import PIMLIPCalculator, load_model, train
from pimlip_ase.datasets import load_dataset
from pimlip_ase.evaluate import calculator_errors
from pimlip_ase.keys import ENERGY, FORCES
from pimlip_ase.workflow.delta import delta_calculator, subtract_labels

HERE = Path(__file__).parent
ROUTES = ("energy-only", "xTB pretrain → fine-tune", "Δ on xTB")
#: Reference rows and their line style (colour + dash) in the plot.
REFERENCE_STYLES = {
    "ceiling: MP2 energies + forces": "k--",
    "xTB alone (+ mean offset)": "r:",
    "xTB-pretrained, not fine-tuned": "g-.",
}
TARGETS = ("cbs", "mp2")


@dataclasses.dataclass
class Settings:
    """Everything that defines the benchmark; printed into the results."""

    sizes: tuple[int, ...] = (25, 100)
    seeds: tuple[int, ...] = (0, 1)
    n_valid: int = 25
    n_test: int | None = None  # None: every test-trajectory frame
    model: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {
            "name": "painn",
            "cutoff": 4.0,
            "n_features": 32,
            "n_interactions": 2,
            "dtype": "float64",
        }
    )
    optim: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {
            "lr": 3e-3,
            "batch_size": 4,
            "max_epochs": 300,
            "patience": 30,
            "ema": 0.99,
            "lr_patience": 10,
        }
    )
    finetune_lr: float = 1e-3
    forces_weight: float = 10.0  # ceiling and pretraining: loss = E/atom² + 10 · F²
    piwsl_grid: tuple[tuple[float, float], ...] = ((1.0, 0.0), (1.0, 0.5))
    epsilon: float = 0.05


QUICK = Settings(
    sizes=(10,),
    seeds=(0,),
    n_valid=5,
    n_test=12,
    model={"name": "painn", "cutoff": 4.0, "n_features": 8, "n_interactions": 1},
    optim={"lr": 3e-3, "batch_size": 8, "max_epochs": 3, "patience": 3},
    piwsl_grid=((1.0, 0.5),),
)


# --------------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class Split:
    """Aligned structure lists per level ("cbs", "mp2", "xtb"): validation, pool and test."""

    valid: dict[str, list[Atoms]]
    pool: dict[str, list[Atoms]]
    test: dict[str, list[Atoms]]

    def train(self, level: str, n: int) -> list[Atoms]:
        """The first ``n`` pool structures at ``level`` (nested: N = 25 is part of N = 100)."""
        return self.pool[level][:n]


def load_split(settings: Settings) -> Split:
    """Trajectory split of the shipped water sets: the md_seed 0 frames shuffled with a fixed seed
    (the first ``n_valid`` validate, the rest is the training pool); test = the md_seed 1 frames
    (or ``n_test`` of them drawn at random)."""
    sets = {level: load_dataset(f"water_{level}") for level in ("cbs", "mp2", "xtb")}
    frames = [a.info["frame"] for a in sets["cbs"]]
    assert all([a.info["frame"] for a in s] == frames for s in sets.values())
    seeds = np.array([a.info["md_seed"] for a in sets["cbs"]])
    rng = np.random.default_rng(0)
    pool_idx = rng.permutation(np.flatnonzero(seeds == 0))
    test_idx = np.flatnonzero(seeds == 1)
    if settings.n_test is not None:
        test_idx = rng.choice(test_idx, settings.n_test, replace=False)
    part = {
        name: {lv: [sets[lv][i] for i in idx] for lv in sets}
        for name, idx in (
            ("valid", pool_idx[: settings.n_valid]),
            ("pool", pool_idx[settings.n_valid :]),
            ("test", test_idx),
        )
    }
    return Split(**part)


def energy_only(structures: Sequence[Atoms]) -> list[Atoms]:
    """Copies without force labels: what an energy-only user has."""
    out = []
    for atoms in structures:
        copy = atoms.copy()
        copy.arrays.pop(FORCES, None)
        out.append(copy)
    return out


# ----------------------------------------------------------------------------------------- training


class Runner:
    """Trains (or reuses) models under ``workdir``; returns (model path, validation energy MAE eV)."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir

    def fit(
        self,
        tag: str,
        train_set: list[Atoms],
        valid_set: list[Atoms],
        loss: dict[str, float],
        seed: int,
        init_from: Path | None = None,
    ) -> tuple[Path, float, float]:
        """Model path, validation energy MAE (eV/molecule) and training seconds of run ``tag``."""
        out = self.workdir / tag
        optim = dict(self.settings.optim)
        if init_from is not None:
            optim["lr"] = self.settings.finetune_lr
        if not (out / "model.pt").exists():
            train(
                {
                    "model": self.settings.model,
                    "data": {"train": train_set, "valid": valid_set},
                    "loss": loss,
                    "optim": optim,
                    "seed": seed,
                    "output": str(out),
                    "init_from": str(init_from) if init_from else None,
                },
                resume=(out / "checkpoints" / "last.pt").exists(),
            )
        valid_mae = load_model(out / "model.pt").provenance["valid_metrics"]["energy_mae"]
        with (out / "metrics.csv").open() as fh:
            seconds = sum(float(row["time_s"]) for row in csv.DictReader(fh))
        return out / "model.pt", float(valid_mae), seconds

    def piwsl_loss(self, w: float, k: float) -> dict[str, float]:
        return {"energy": 1.0, "pitc": w, "pisc": w / 10, "k": k, "epsilon": self.settings.epsilon}


# --------------------------------------------------------------------------------------- evaluation


def xtb_calculator() -> BaseCalculator:
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def model_calculator(route: str, model: Path) -> BaseCalculator:
    """The calculator a user would run for a route's model."""
    return delta_calculator(xtb_calculator(), model) if route == "Δ on xTB" else PIMLIPCalculator(model)


# ------------------------------------------------------------------------------------------ the grid


def route_runs(
    runner: Runner, split: Split, target: str, route: str, n: int, seed: int, pretrained: Path
) -> list[dict[str, Any]]:
    """Plain and every PIWSL grid point for one (target, route, N, seed); rows with test metrics."""
    train_set = energy_only(split.train(target, n))
    valid_set = energy_only(split.valid[target])
    if route == "Δ on xTB":
        train_set = subtract_labels(train_set, split.train("xtb", n), "gfn2-xtb")
        valid_set = subtract_labels(valid_set, split.valid["xtb"], "gfn2-xtb")
    init_from = pretrained if route == "xTB pretrain → fine-tune" else None
    settings = [("off", {"energy": 1.0})] + [
        (f"w={w:g}, k={k:g}", runner.piwsl_loss(w, k)) for w, k in runner.settings.piwsl_grid
    ]
    rows = []
    for label, loss in settings:
        tag = f"N{n}/seed{seed}/{target}-{route.split()[0]}-{label.replace(', ', '_')}"
        path, valid_mae, seconds = runner.fit(tag, train_set, valid_set, loss, seed, init_from)
        metrics = calculator_errors(model_calculator(route, path), split.test[target])
        rows.append(
            {
                "target": target,
                "route": route,
                "n": n,
                "seed": seed,
                "piwsl": label,
                "valid_energy_mae": valid_mae,
                "train_s": seconds,
                **metrics,
            }
        )
    return rows


def references(runner: Runner, split: Split, n: int, seed: int, pretrained: Path) -> list[dict[str, Any]]:
    """Ceiling (MP2 energies + forces), xTB alone (mean offset from the training set), pretrained."""
    forces_loss = {"energy": 1.0, "forces": runner.settings.forces_weight}
    path, valid_mae, seconds = runner.fit(
        f"N{n}/seed{seed}/mp2-ceiling", split.train("mp2", n), split.valid["mp2"], forces_loss, seed
    )
    rows = [
        {
            "target": "mp2",
            "route": "ceiling: MP2 energies + forces",
            "n": n,
            "seed": seed,
            "piwsl": "off",
            "valid_energy_mae": valid_mae,
            "train_s": seconds,
            **calculator_errors(PIMLIPCalculator(path), split.test["mp2"]),
        }
    ]
    for target in TARGETS:
        offset = float(
            np.mean(
                [
                    r.info[ENERGY] - c.info[ENERGY]
                    for r, c in zip(split.train(target, n), split.train("xtb", n), strict=True)
                ]
            )
        )
        rows.append(
            {
                "target": target,
                "route": "xTB alone (+ mean offset)",
                "n": n,
                "seed": seed,
                "piwsl": "off",
                **calculator_errors(xtb_calculator(), split.test[target], offset),
            }
        )
    forces = calculator_errors(PIMLIPCalculator(pretrained), split.test["mp2"])["forces_mae"]
    rows.append(
        {
            "target": "mp2",
            "route": "xTB-pretrained, not fine-tuned",
            "n": n,
            "seed": seed,
            "piwsl": "off",
            "forces_mae": forces,
        }
    )
    return rows


def run_all(settings: Settings, workdir: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every training run and evaluation; rows of results (errors in eV, eV/Å)."""
    split = load_split(settings)
    runner = Runner(settings, workdir)
    rows: list[dict[str, Any]] = []
    for seed in settings.seeds:
        pretrained, _, _ = runner.fit(
            f"pretrain-xtb/seed{seed}",
            split.pool["xtb"],
            split.valid["xtb"],
            {"energy": 1.0, "forces": settings.forces_weight},
            seed,
        )
        for n in settings.sizes:
            rows += references(runner, split, n, seed, pretrained)
            for target in TARGETS:
                for route in ROUTES:
                    new = route_runs(runner, split, target, route, n, seed, pretrained)
                    rows += new
                    for r in new:
                        log(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()}))
    return rows


# ------------------------------------------------------------------------------------------- report


def choose(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (target, route, N, seed): the plain row and the PIWSL row with the lowest validation energy."""
    out = []
    keys = {(r["target"], r["route"], r["n"], r["seed"]) for r in rows}
    for key in sorted(keys):
        group = [r for r in rows if (r["target"], r["route"], r["n"], r["seed"]) == key]
        out += [r for r in group if r["piwsl"] == "off"]
        piwsl = [r for r in group if r["piwsl"] != "off"]
        if piwsl:
            out.append({**min(piwsl, key=lambda r: r["valid_energy_mae"]), "chosen": True})
    return out


def _stat(rows: list[dict[str, Any]], key: str, scale: float = 1e3) -> str:
    values = [scale * r[key] for r in rows if key in r]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _route_order(route: str) -> tuple[int, str]:
    return (ROUTES.index(route) if route in ROUTES else len(ROUTES), route)


def main_table(rows: list[dict[str, Any]], n: int) -> list[str]:
    """Markdown lines: one line per (route, PIWSL on/off) at training size ``n``."""
    chosen = [r for r in choose(rows) if r["n"] == n]
    lines = [
        f"### N = {n} reference energies",
        "",
        "| route | PIWSL | CBS test E MAE (meV) | MP2 test E MAE (meV) | MP2 test F MAE (meV/Å) "
        "| PIWSL setting chosen (CBS; MP2) |",
        "|---|---|---|---|---|---|",
    ]
    for route in sorted({r["route"] for r in chosen}, key=_route_order):
        for on in (False, True):
            sel = [r for r in chosen if r["route"] == route and (r["piwsl"] != "off") == on]
            if not sel:
                continue
            cbs = [r for r in sel if r["target"] == "cbs"]
            mp2 = [r for r in sel if r["target"] == "mp2"]
            picks = (
                "; ".join(
                    ",".join(sorted({r["piwsl"] for r in group}, key=str)) or "—" for group in (cbs, mp2)
                )
                if on
                else ""
            )
            lines.append(
                f"| {route} | {'on' if on else 'off'} | {_stat(cbs, 'energy_mae')} | "
                f"{_stat(mp2, 'energy_mae')} | {_stat(mp2, 'forces_mae')} | {picks} |"
            )
    return lines


def grid_table(rows: list[dict[str, Any]]) -> list[str]:
    """Every energy-only run: validation energy (the selection criterion) next to the test errors."""
    lines = [
        "| N | target | route | PIWSL | valid E MAE (meV) | test E MAE (meV) | test F MAE (meV/Å) "
        "| train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["n"], r["target"], r["route"], r["piwsl"]) for r in rows if r["route"] in ROUTES},
        key=lambda k: (k[0], k[1], _route_order(k[2]), k[3] != "off", k[3]),
    )
    for key in keys:
        sel = [r for r in rows if (r["n"], r["target"], r["route"], r["piwsl"]) == key]
        values = [
            _stat(sel, "valid_energy_mae"),
            _stat(sel, "energy_mae"),
            _stat(sel, "forces_mae"),
            _stat(sel, "train_s", 1.0),
        ]
        lines.append(f"| {' | '.join(map(str, key))} | {' | '.join(values)} |")
    return lines


def machine() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return (
        f"{cpu} ({os.cpu_count()} logical CPUs, shared), torch {torch.__version__} "
        f"({torch.get_num_threads()} thread), Python {platform.python_version()}, {platform.system()}"
    )


def report(rows: list[dict[str, Any]], settings: Settings, command: str, wall_s: float) -> str:
    """The markdown report: settings, main table per N, then every grid point."""
    lines = [
        "# Energy-only CCSD(T)/CBS data → forces: three routes, with and without PITC/PISC",
        "",
        f"Command: `{command}` ({wall_s / 60:.0f} min wall for this invocation; {len(rows)} rows, "
        f"{sum(r.get('train_s', 0.0) for r in rows) / 60:.0f} min of training in all, finished runs "
        f"are reused). Machine: {machine()}.",
        "",
        "Data: shipped water sets (GFN2-xTB MD at 600/1000/1500 K); training pool and validation from "
        "the md_seed 0 trajectories, test = the md_seed 1 trajectories "
        f"(training seeds {', '.join(map(str, settings.seeds))} — initialisation and batch order; the "
        "split is fixed — mean ± std over seeds). Energies per molecule (3 atoms). The validation "
        "frames come from the training trajectories, as a user's would, so validation errors are "
        "optimistic next to test errors.",
        "",
        f"Settings: model {settings.model}; optim {settings.optim} "
        f"(fine-tuning lr {settings.finetune_lr}); "
        f"validation set {settings.n_valid} energies (energy-only: energies only); pretraining on xTB "
        f"energies + forces of the whole pool (force weight {settings.forces_weight}); PIWSL grid "
        f"(w_PITC, k) ∈ {list(settings.piwsl_grid)}, w_PISC = w_PITC/10, ε = {settings.epsilon} Å, "
        "the grid point with the lowest validation energy MAE is reported.",
        "",
    ]
    for n in sorted({r["n"] for r in rows}):
        lines += main_table(rows, n) + [""]
    lines += ["### Every energy-only run (selection by validation energy only)", ""] + grid_table(rows)
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Bar charts per N: CBS test energy MAE and MP2 test force MAE by route, PIWSL off/on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = choose(rows)
    sizes = sorted({r["n"] for r in rows})
    fig, axes = plt.subplots(len(sizes), 2, figsize=(11, 3.6 * len(sizes)), squeeze=False)
    for ax_row, n in zip(axes, sizes, strict=True):
        for ax, (target, key, unit) in zip(
            ax_row, (("cbs", "energy_mae", "meV"), ("mp2", "forces_mae", "meV/Å")), strict=True
        ):
            x = np.arange(len(ROUTES))
            for shift, on in ((-0.2, False), (0.2, True)):
                vals = [
                    1e3
                    * np.array(
                        [
                            r[key]
                            for r in chosen
                            if r["n"] == n
                            and r["target"] == target
                            and r["route"] == route
                            and (r["piwsl"] != "off") == on
                        ]
                    )
                    for route in ROUTES
                ]
                spread = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals]
                ax.bar(
                    x + shift,
                    [v.mean() for v in vals],
                    0.4,
                    yerr=spread,
                    capsize=3,
                    label="PIWSL on" if on else "PIWSL off",
                )
            for route, style in REFERENCE_STYLES.items():
                ref = [
                    r[key]
                    for r in rows
                    if r["n"] == n and r["target"] == target and r["route"] == route and key in r
                ]
                if ref:
                    ax.axhline(1e3 * statistics.mean(ref), ls=style[1:], color=style[0], label=route)
            ax.set_xticks(x, ROUTES, fontsize=8)
            ax.set_ylabel(f"{target.upper()} test {key.split('_')[0]} MAE ({unit})")
            ax.set_yscale("log")
            ax.set_title(f"N = {n}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke test (results under --results)")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="folder for cbs_routes.md/.png/.json (default benchmarks/results; "
        "runs/cbs_routes_quick with --quick)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="training runs (default runs/cbs_routes[_quick])"
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="override the numbers of training energies")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the seeds")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else Settings()
    if args.sizes:
        settings = dataclasses.replace(settings, sizes=tuple(args.sizes))
    if args.seeds:
        settings = dataclasses.replace(settings, seeds=tuple(args.seeds))
    suffix = "_quick" if args.quick else ""
    results = args.results or (Path(f"runs/cbs_routes{suffix}") if args.quick else HERE / "results")
    workdir = args.workdir or Path(f"runs/cbs_routes{suffix}")
    results.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    start = time.perf_counter()
    rows = run_all(settings, workdir, lambda line: print(line, flush=True))
    command = "python benchmarks/cbs_routes.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(rows, settings, command.strip(), time.perf_counter() - start)
    (results / "cbs_routes.md").write_text(text)
    (results / "cbs_routes.json").write_text(
        json.dumps({"settings": dataclasses.asdict(settings), "rows": rows}, indent=1)
    )
    plot(rows, results / "cbs_routes.png")
    print(text)
    return text


if __name__ == "__main__":
    main()
