"""The ``pimlip`` command: a thin layer over the library. ``pimlip COMMAND --help`` for each."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

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
    from .evaluate import error_metrics
    from .modelfile import load_model

    model = load_model(args.model, device=args.device)
    keys = LabelKeys(args.energy_key, args.forces_key, args.stress_key, args.energy_unit)
    structures = read_structures(args.data)
    metrics = error_metrics(model, build_graphs(structures, model.cutoff, keys), args.batch_size)
    metrics = {k: v for k, v in metrics.items() if not k.startswith("mse_")}
    if args.json:
        print(json.dumps({"model": str(args.model), "data": str(args.data), "n_structures": len(structures),
                          "units": "eV, eV/atom, eV/Å, eV/Å³", **metrics}, indent=2))
    else:
        print(_format_metrics(f"{args.model} on {args.data} ({len(structures)} structures)", metrics))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output, quick=args.quick)
    return 0


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

    p = sub.add_parser("demo", help="energy-only Cu/EMT training with and without PIWSL, then MD")
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
