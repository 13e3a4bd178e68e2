"""The ``pimlip`` command: a thin layer over the library. ``pimlip COMMAND --help`` for each."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from .errors import PimlipError


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    result = train(args.config, resume=args.resume)
    print(f"model written to {result.model_path} (best epoch {result.best_epoch})")
    for name, metrics in (("valid", result.valid_metrics), ("test", result.test_metrics)):
        if metrics:
            print(_format_metrics(f"{name} errors", metrics))
    return 0


def _format_metrics(title: str, m: dict[str, float]) -> str:
    rows = [
        ("energy per structure", "meV", m["energy_mae"], m["energy_rmse"], 1e3),
        ("energy per atom", "meV/atom", m["energy_per_atom_mae"], m["energy_per_atom_rmse"], 1e3),
        ("forces", "meV/Å", m["forces_mae"], m["forces_rmse"], 1e3),
        ("stress", "meV/Å³", m["stress_mae"], m["stress_rmse"], 1e3),
    ]
    lines = [title, f"  {'quantity':<22}{'unit':<10}{'MAE':>12}{'RMSE':>12}"]
    for name, unit, mae, rmse, factor in rows:
        if mae == mae:  # skip NaN (no labels)
            lines.append(f"  {name:<22}{unit:<10}{mae * factor:>12.3f}{rmse * factor:>12.3f}")
    return "\n".join(lines)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .data import LabelKeys, build_graphs, read_structures
    from .evaluate import error_metrics, taylor_consistency
    from .modelfile import load_model

    model = load_model(args.model, device=args.device)
    keys = LabelKeys(args.energy_key, args.forces_key, args.stress_key, args.energy_unit)
    structures = read_structures(args.data)
    graphs = build_graphs(structures, model.cutoff, keys)
    metrics = error_metrics(model, graphs, args.batch_size)
    metrics = {k: v for k, v in metrics.items() if not k.startswith("mse_")}
    if not model.conservative:  # a direct force head: how far its forces are from −∇E (needs no labels)
        metrics["taylor_residual_rms"] = taylor_consistency(model, graphs, batch_size=args.batch_size)
        if metrics["forces_mae"] == metrics["forces_mae"]:  # and, with force labels, how good −∇E is
            with model.forces_from_energy():
                gradient = error_metrics(model, graphs, args.batch_size)
            metrics |= {f"forces_from_energy_{s}": gradient[f"forces_{s}"] for s in ("mae", "rmse")}
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(args.model),
                    "data": str(args.data),
                    "n_structures": len(structures),
                    "units": "eV, eV/atom, eV/Å, eV/Å³",
                    **metrics,
                },
                indent=2,
            )
        )
    else:
        print(_format_metrics(f"{args.model} on {args.data} ({len(structures)} structures)", metrics))
        if "taylor_residual_rms" in metrics:
            print(
                "  direct forces vs the model's own energies: RMS Taylor residual "
                f"{1e3 * metrics['taylor_residual_rms']:.3f} meV/atom (ε 0.05 Å, k = ½; ~0 for −∇E)"
            )
        if "forces_from_energy_mae" in metrics:
            print(
                "  forces as −∇E of the model's energy instead of its head: MAE "
                f"{1e3 * metrics['forces_from_energy_mae']:.3f}, RMSE "
                f"{1e3 * metrics['forces_from_energy_rmse']:.3f} meV/Å"
            )
    return 0


def _console_log() -> None:
    """Workflow progress (iterations, steps) to stderr; training details stay in each run's train.log."""
    logger = logging.getLogger("pimlip_ase.workflow")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    _console_log()
    run_demo(args.output, quick=args.quick)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .workflow.recipe import load_recipe, run_recipe

    _console_log()
    result = run_recipe(load_recipe(args.recipe), args.output, resume=args.resume)
    print("\n".join(result.summary_lines()))
    return 0 if result.verdict in ("PASS", "NO CHECKS") else 1


def _structure(text: str):
    """A structure from a file name or an inline recipe spec such as '{bulk: Cu, cubic: true}'."""
    from .workflow.recipe import build_structure

    return build_structure(yaml.safe_load(text) if text.lstrip().startswith("{") else text)


def _committee(args: argparse.Namespace):
    from .calculator import PIMLIPCalculator

    return PIMLIPCalculator(args.model if len(args.model) > 1 else args.model[0], device=args.device)


def _cmd_md(args: argparse.Namespace) -> int:
    from .workflow.checks import NVECheck, NVTCheck, check_nve, check_nvt
    from .workflow.report import plot_md

    common = {
        "temperature_K": args.temperature,
        "duration_ps": args.duration,
        "timestep_fs": args.timestep,
        "seed": args.seed,
    }
    if args.ensemble == "nvt":
        cfg = NVTCheck(
            **common,
            friction=args.friction,
            max_bond_deviation=args.max_bond_deviation,
            bond_average_fs=args.bond_average_fs,
        )
        outcome, arrays = check_nvt(cfg, _structure(args.structure), _committee(args))
    else:
        outcome, arrays = check_nve(
            NVECheck(**common, max_drift_meV_atom_ps=args.max_drift),
            _structure(args.structure),
            _committee(args),
        )
    return _finish(args.ensemble.upper(), outcome, arrays, plot_md, args.plot)


def _cmd_phonons(args: argparse.Namespace) -> int:
    from .workflow.checks import PhononCheck, check_phonons
    from .workflow.reference import reference_calculator
    from .workflow.report import plot_phonons

    cfg = PhononCheck(
        supercell=args.supercell,
        mesh=args.mesh,
        reference=args.reference is not None,
        max_mae_THz=args.max_mae,
    )
    ref = reference_calculator(args.reference) if args.reference else None
    outcome, arrays = check_phonons(cfg, _structure(args.structure), _committee(args), ref)
    return _finish("phonons", outcome, arrays, plot_phonons, args.plot)


def _finish(what: str, outcome, arrays: dict, plotter, plot: str | None) -> int:
    """Print a check's verdict, write its plot when asked; exit code 0 on pass, 1 on fail."""
    print(f"{what} {'pass' if outcome.passed else 'FAIL'}: {outcome.summary}")
    if plot:
        plotter(arrays, Path(plot).parent, Path(plot).name)
        print(f"plot written to {plot}")
    return 0 if outcome.passed else 1


def _cmd_label(args: argparse.Namespace) -> int:
    from .workflow.label import make_labeller
    from .workflow.store import Store, label_pending

    store = Store(args.db)
    if args.retry_failed:
        print(f"{store.retry_failed()} failed structures set back to pending")
    counts = label_pending(store, make_labeller(args.method), workers=args.workers)
    print(f"{args.db}: {counts['done']} labelled, {counts['pending']} pending, {counts['failed']} failed")
    for row, error in store.failures().items():
        print(f"  row {row}: {error.splitlines()[-1] if error else ''}")
    return 0 if not counts["failed"] else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from .workflow.report import write_report

    print(f"report written to {write_report(args.run)}")
    return 0


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, nargs="+", help="model file(s); several make a committee")
    p.add_argument(
        "--structure",
        required=True,
        help="structure file (ASE-readable) or an inline spec like '{bulk: Cu, cubic: true}'",
    )
    p.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pimlip", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", required=True, help="training config (YAML)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last.pt")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="energy/force/stress errors of a model on labelled data")
    p.add_argument("--model", required=True, help="model file (.pt)")
    p.add_argument("--data", required=True, help="labelled structures (extxyz or ase.db)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--energy-key", default="REF_energy")
    p.add_argument("--forces-key", default="REF_forces")
    p.add_argument("--stress-key", default="REF_stress")
    p.add_argument("--energy-unit", default="eV", help="unit of the energy labels (eV, kcal/mol, ...)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("run", help="run a recipe: active learning, checks and report")
    p.add_argument("recipe", help="recipe YAML (see workflows/)")
    p.add_argument("--output", default=None, help="run folder (default: the recipe's output)")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its store")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("md", help="MD stability check (NVT bond criterion or NVE drift) with a model")
    _add_model_options(p)
    p.add_argument("--ensemble", choices=("nvt", "nve"), default="nvt")
    p.add_argument("--temperature", type=float, default=300.0, help="K")
    p.add_argument("--timestep", type=float, default=1.0, help="fs")
    p.add_argument("--duration", type=float, default=1.0, help="ps")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (nvt)")
    p.add_argument("--max-bond-deviation", type=float, default=0.5, help="Å (nvt)")
    p.add_argument(
        "--bond-average-fs",
        type=float,
        default=0.0,
        help="fs (nvt): apply the bond criterion to positions averaged over this window (crystals)",
    )
    p.add_argument("--max-drift", type=float, default=1.0, help="meV/atom/ps (nve)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, help="write the energy/temperature traces to this PNG")
    p.set_defaults(func=_cmd_md)

    p = sub.add_parser("phonons", help="phonon bands, imaginary-mode check and MAE against a reference")
    _add_model_options(p)
    p.add_argument("--supercell", type=int, nargs=3, default=[3, 3, 3], help="of the primitive cell")
    p.add_argument("--mesh", type=int, nargs=3, default=[10, 10, 10])
    p.add_argument("--reference", default=None, help="reference method for the MAE (emt, xtb, ...)")
    p.add_argument("--max-mae", type=float, default=0.3, help="THz")
    p.add_argument("--plot", default=None, help="write the band structure to this PNG")
    p.set_defaults(func=_cmd_phonons)

    p = sub.add_parser("label", help="label the pending structures of a store (ase.db)")
    p.add_argument("--db", required=True, help="the store (ase.db file)")
    p.add_argument("--method", required=True, help="emt, xtb, gfn1-xtb or pyscf:<method>/<basis>")
    p.add_argument("--workers", type=int, default=1, help="labelling processes")
    p.add_argument("--retry-failed", action="store_true", help="label failed structures again")
    p.set_defaults(func=_cmd_label)

    p = sub.add_parser("report", help="rebuild report.md and its plots for a run folder")
    p.add_argument("run", help="run folder written by `pimlip run`")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="the Cu/EMT recipe on a small budget, then energy-only PIWSL vs plain")
    p.add_argument("--output", default="demo_output", help="folder for runs and models")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests)")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PimlipError as err:
        print(f"pimlip {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
