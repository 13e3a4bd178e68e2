"""Cost of one training step: plain energy (+forces) vs PITC+PISC at k = 0 and k = ½, same batch.

Each configuration runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own;
the time is the median over steps after two warm-up steps (forward, loss, backward, optimiser step).
Writes benchmarks/results/training_cost.md and .png.
    python benchmarks/training_cost.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from systems import cu_fcc, hexanol  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CONFIGS = {
    "energy only": {"energy": 1.0},
    "energy+forces": {"energy": 1.0, "forces": 10.0},
    "energy + PITC+PISC, k=0": {"energy": 1.0, "pitc": 1.0, "pisc": 0.01, "k": 0.0},
    "energy + PITC+PISC, k=½": {"energy": 1.0, "pitc": 1.0, "pisc": 0.01, "k": 0.5},
    "energy + PITC only, k=½": {"energy": 1.0, "pitc": 1.0, "k": 0.5},
    "energy+forces + PITC+PISC, k=0": {"energy": 1.0, "forces": 10.0, "pitc": 1.0, "pisc": 0.01, "k": 0.0},
    "energy+forces + PITC+PISC, k=½": {"energy": 1.0, "forces": 10.0, "pitc": 1.0, "pisc": 0.01, "k": 0.5},
    "energy + PITC+PISC, k=0, δ·F by autograd": {
        "energy": 1.0,
        "pitc": 1.0,
        "pisc": 0.01,
        "k": 0.0,
        "derivatives": "autograd",
    },
}
#: Rows run with glibc's own allocator settings (PIMLIP_SYSTEM_MALLOC=1), as before allocator.py.
SYSTEM_MALLOC = {"energy+forces, system malloc": "energy+forces"}
SYSTEMS = {
    "Cu fcc 32 (EMT-like cell)": lambda seed: cu_fcc((2, 2, 2), 0.1, seed),
    "hexanol (21)": lambda seed: hexanol(),
}
MODELS = {
    "PaiNN default": {"name": "painn"},
    "PaiNN direct forces": {"name": "painn", "forces": "direct"},
    "SchNet default": {"name": "schnet"},
}


def one(system: str, model: str, config: str, steps: int, batch_size: int) -> dict[str, float]:
    """Run in a subprocess: time `steps` optimiser steps; report ms/step and peak RSS (MB)."""
    from pimlip_ase import build_model
    from pimlip_ase.allocator import keep_large_blocks_in_heap
    from pimlip_ase.data import build_graphs, collate
    from pimlip_ase.losses import LossConfig, LossFunction

    keep_large_blocks_in_heap()  # as train() does; PIMLIP_SYSTEM_MALLOC=1 in the environment opts out

    structures = [SYSTEMS[system](seed) for seed in range(batch_size)]
    for a in structures:
        a.rattle(0.05, seed=len(a))
        a.info["REF_energy"] = 0.0
        a.arrays["REF_forces"] = a.positions * 0.0
    hp = dict(MODELS[model])
    name = hp.pop("name")
    torch.manual_seed(0)
    m = build_model(name, species=sorted(set(structures[0].get_chemical_symbols())), cutoff=5.0, **hp)
    batch = collate(build_graphs(structures, m.cutoff))
    loss_fn = LossFunction(LossConfig(**CONFIGS[SYSTEM_MALLOC.get(config, config)]))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss, _ = loss_fn(m, batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms": 1e3 * statistics.median(times), "peak_mb": peak / 1024, "delta_mb": (peak - rss0) / 1024}


def main() -> None:
    global RESULTS
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one system, one model, 3 steps")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="folder for the tables (default: %(default)s)"
    )
    args = parser.parse_args()
    RESULTS = args.results
    torch.set_num_threads(args.threads)
    if args.one:
        print("JSON:" + json.dumps(one(*args.one, args.steps, args.batch_size)))
        return
    systems = list(SYSTEMS)[:1] if args.quick else list(SYSTEMS)
    models = list(MODELS)[:1] if args.quick else list(MODELS)
    steps = 3 if args.quick else args.steps
    rows = []
    for system in systems:
        for model in models:
            base = None
            for config in [*CONFIGS, *SYSTEM_MALLOC]:
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    system,
                    model,
                    config,
                    "--steps",
                    str(steps),
                    "--batch-size",
                    str(args.batch_size),
                    "--threads",
                    str(args.threads),
                ]
                env = {**os.environ, "PIMLIP_SYSTEM_MALLOC": "1" if config in SYSTEM_MALLOC else "0"}
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
                r = json.loads(out.split("JSON:")[1])
                if config == "energy+forces":
                    base = r
                rows.append((system, model, config, r))
                print(
                    f"{system} | {model} | {config}: {r['ms']:.1f} ms, peak {r['peak_mb']:.0f} MB", flush=True
                )
            for row in rows:
                if row[0] == system and row[1] == model:
                    row[3]["ratio"] = row[3]["ms"] / base["ms"]
    lines = [
        "# Training cost per step: plain vs PIWSL",
        "",
        f"Machine: {platform.machine()}, torch {torch.__version__}, {args.threads} threads, CPU; batch of "
        f"{args.batch_size} structures; median of {steps} steps after 2 warm-up steps; every configuration "
        "in its own process (peak RSS = the whole process, data and model included). Ratio is to the "
        "energy+forces step of the same model and system. Default model sizes, cutoff 5 Å, float64. "
        "PIWSL work terms δ·F by finite differences of energies (`derivatives='auto'`) unless a row says "
        "autograd (direct-force heads always use their own forces). glibc keeps large buffers in the heap "
        "(`pimlip_ase.allocator`, as `train()` does) except in the 'system malloc' rows.",
        "",
        "| system | model | loss | ms/step | × energy+forces | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for system, model, config, r in rows:
        lines.append(
            f"| {system} | {model} | {config} | {r['ms']:.1f} | {r['ratio']:.2f} | {r['peak_mb']:.0f} |"
        )
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "training_cost.md").write_text(table)
    _plot(rows, RESULTS / "training_cost.png")
    print(table)


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{s.split(' (')[0]} / {m}" for s, m, c, _ in rows if c == "energy only"]
    configs = [*CONFIGS, *SYSTEM_MALLOC]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(configs)
    for k, config in enumerate(configs):
        vals = [r["ratio"] for _, _, c, r in rows if c == config]
        ax.bar([i + k * width for i in range(len(vals))], vals, width, label=config)
    ax.axhline(2.0, color="k", ls="--", lw=1, label="target: PIWSL ≤ 2×")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=15, fontsize=8)
    ax.set_ylabel("time per step / energy+forces step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
