"""Time per MD step through the ASE calculator: pimlip_ase's default PaiNN vs MACE "small".

One step = energy + forces (+ stress for periodic cells) after a small displacement of every atom,
warm (after two untimed steps), median of repeats. Also times the bare model call on a prebuilt graph,
so the calculator's own overhead (neighbour list, conversions) is reported in %. Untrained weights:
speed does not depend on their values.

Writes benchmarks/results/calculator_speed.md and .png.
    python benchmarks/calculator_speed.py            # all sizes (10,000 atoms takes minutes)
    python benchmarks/calculator_speed.py --quick    # 21 and 108 atoms only
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from systems import SPEED_SYSTEMS  # noqa: E402

RESULTS = Path(__file__).parent / "results"
PARTIAL = RESULTS / "work" / "calculator_speed_partial.json"
MACE_SETTINGS = dict(
    hidden_irreps="128x0e",
    r_max=5.0,
    num_bessel=8,
    num_polynomial_cutoff=5,
    max_ell=3,
    num_interactions=2,
    correlation=3,
    MLP_irreps="16x0e",
)


def _move(atoms, rng) -> None:
    atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)


def _step(atoms) -> float:
    """Seconds for energy + forces (+ stress for periodic cells) through ``atoms.calc``."""
    t0 = time.perf_counter()
    atoms.get_forces()
    if atoms.pbc.all():
        atoms.get_stress()
    return time.perf_counter() - t0


def time_steps(atoms, calc, repeats: int, warmup: int = 2, seed: int = 0) -> float:
    """Median seconds per energy+forces(+stress) evaluation after a 0.001 Å random move."""
    rng = np.random.default_rng(seed)
    atoms.calc = calc
    times = []
    for i in range(repeats + warmup):
        _move(atoms, rng)
        dt = _step(atoms)
        if i >= warmup:
            times.append(dt)
    return statistics.median(times)


def ours(atoms, dtype: torch.dtype, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Our calculator and, interleaved with it step by step (so that drifts of the machine hit
    both alike), the bare model call on the graph the calculator built for the same positions."""
    from pimlip_ase import PIMLIPCalculator, build_model

    species = sorted(set(atoms.get_chemical_symbols()))
    torch.manual_seed(0)
    model = build_model("painn", species=species, cutoff=5.0, dtype=dtype)  # the default size
    calc = PIMLIPCalculator(model)
    atoms.calc = calc
    periodic = bool(atoms.pbc.all())
    rng = np.random.default_rng(0)
    step, bare = [], []
    for i in range(repeats + warmup):
        _move(atoms, rng)
        dt_step = _step(atoms)
        graph = calc._graph(atoms)
        t0 = time.perf_counter()
        model(graph, forces=True, stress=periodic)
        dt_bare = time.perf_counter() - t0
        if i >= warmup:
            step.append(dt_step)
            bare.append(dt_bare)
    step_s, bare_s = statistics.median(step), statistics.median(bare)
    return {"step_s": step_s, "bare_s": bare_s, "overhead_pct": 100.0 * (step_s - bare_s) / bare_s}


def mace(atoms, dtype: torch.dtype, repeats: int, warmup: int = 2) -> dict[str, float]:
    """MACE "small" built from scratch (no download), through mace's own ASE calculator."""
    import tempfile

    from e3nn import o3
    from mace import modules
    from mace.calculators import MACECalculator

    zs = sorted(set(atoms.numbers.tolist()))
    torch.set_default_dtype(dtype)  # MACE builds its modules in the global default dtype
    torch.manual_seed(0)
    s = MACE_SETTINGS
    model = modules.ScaleShiftMACE(
        r_max=s["r_max"],
        num_bessel=s["num_bessel"],
        num_polynomial_cutoff=s["num_polynomial_cutoff"],
        max_ell=s["max_ell"],
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=s["num_interactions"],
        num_elements=len(zs),
        hidden_irreps=o3.Irreps(s["hidden_irreps"]),
        MLP_irreps=o3.Irreps(s["MLP_irreps"]),
        atomic_energies=np.zeros(len(zs)),
        avg_num_neighbors=30.0,
        atomic_numbers=zs,
        correlation=s["correlation"],
        gate=torch.nn.functional.silu,
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mace.model"
        torch.save(model, path)
        calc = MACECalculator(
            model_paths=str(path),
            device="cpu",
            default_dtype="float64" if dtype == torch.float64 else "float32",
        )
        return {"step_s": time_steps(atoms, calc, repeats, warmup)}


def measure(which: str, names: list[str], repeats: int) -> dict:
    """Timings per "system|dtype"; each is saved to PARTIAL as soon as it is measured, and a rerun
    after a crash (the 10,000-atom cells are the ones that can run out of memory) skips them."""
    fn = ours if which == "ours" else mace
    saved = json.loads(PARTIAL.read_text()) if PARTIAL.exists() else {}
    out = saved.setdefault(which, {})
    for name in names:
        big = "10000" in name  # seconds per step: fewer repeats, one warm-up; float64 needs > 24 GB
        for dtype in (torch.float32,) if big else (torch.float32, torch.float64):
            key = f"{name}|{str(dtype)[6:]}"
            if key not in out:
                reps, warmup = (max(2, repeats // 8), 1) if big else (repeats, 2)
                out[key] = fn(SPEED_SYSTEMS[name](), dtype, reps, warmup)
                PARTIAL.parent.mkdir(parents=True, exist_ok=True)
                PARTIAL.write_text(json.dumps(saved))
            print(f"  {which:5s} {name:14s} {str(dtype)[6:]}: {out[key]}", flush=True)
    return out


def mace_results(args, names) -> dict | None:
    try:
        import mace  # noqa: F401

        return measure("mace", names, args.repeats)
    except ImportError:
        pass
    if not args.mace_python:
        print("  MACE not importable here and no --mace-python given: MACE column left empty")
        return None
    cmd = [
        args.mace_python,
        __file__,
        "--only-mace",
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        "--results",
        str(args.results),
    ] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr)
        return None
    print(proc.stdout.split("JSON:")[0], end="")
    return json.loads(proc.stdout.split("JSON:")[1])


def write_table(results: dict, mace_res: dict | None, names: list[str], threads: int) -> str:
    lines = [
        "# Calculator speed: time per MD step (energy + forces + stress through ASE)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"`torch.set_num_threads({threads})`, CPU. Median of repeats, warm. Ours: PaiNN default size "
        "(128 features, 3 interactions, 20 radial functions, cutoff 5 Å; ~0.58 M parameters). "
        f"MACE: ScaleShiftMACE {MACE_SETTINGS} through `MACECalculator`.",
        "",
        "| system | dtype | ours ms/step | ours µs/atom/step | calculator overhead % | MACE ms/step "
        "| MACE/ours |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        n_atoms = len(SPEED_SYSTEMS[name]())
        for dt in ("float32", "float64"):
            r = results.get(f"{name}|{dt}")
            if r is None:
                lines.append(f"| {name} | {dt} | not run: needs more than this machine's 24 GB | | | | |")
                continue
            m = (mace_res or {}).get(f"{name}|{dt}")
            mace_ms = f"{m['step_s'] * 1e3:.1f}" if m else "n/a"
            ratio = f"{m['step_s'] / r['step_s']:.2f}" if m else "n/a"
            lines.append(
                f"| {name} | {dt} | {r['step_s'] * 1e3:.1f} | {r['step_s'] / n_atoms * 1e6:.1f} | "
                f"{r['overhead_pct']:.1f} | {mace_ms} | {ratio} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict, mace_res: dict | None, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [len(SPEED_SYSTEMS[name]()) for name in names]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for dt, style in (("float32", "--"), ("float64", "-")):
        for res, mark, label in ((results, "o", "ours"), (mace_res or {}, "s", "MACE small")):
            pts = [
                (k, res[f"{name}|{dt}"]["step_s"] * 1e3)
                for k, name in zip(n, names, strict=True)
                if f"{name}|{dt}" in res
            ]
            if pts:
                ax.loglog(*zip(*pts, strict=True), mark + style, label=f"{label} {dt}")
    ax.set_xlabel("atoms")
    ax.set_ylabel("ms per MD step")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    global RESULTS, PARTIAL
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="21 and 108 atoms only")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mace-python", help="python of a venv with mace-torch, if not this one")
    parser.add_argument("--only-mace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="folder for the tables (default: %(default)s)"
    )
    args = parser.parse_args()
    RESULTS, PARTIAL = args.results, args.results / "work" / "calculator_speed_partial.json"
    torch.set_num_threads(args.threads)
    names = list(SPEED_SYSTEMS)[:2] if args.quick else list(SPEED_SYSTEMS)
    if args.only_mace:
        print("JSON:" + json.dumps(measure("mace", names, args.repeats)))
        return
    results = measure("ours", names, args.repeats)
    mace_res = mace_results(args, names)
    table = write_table(results, mace_res, names, args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "calculator_speed.md").write_text(table)
    PARTIAL.unlink(missing_ok=True)  # complete: the next run measures afresh
    plot(results, mace_res, names, RESULTS / "calculator_speed.png")
    print(table)


if __name__ == "__main__":
    main()
