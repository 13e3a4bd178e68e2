"""The run report: ``RUN/report/report.md`` and PNG plots, built only from the files a recipe run
leaves in ``RUN`` (so it can be rebuilt at any time with :func:`write_report`).

Read: ``summary.json``, ``recipe.yaml``, ``active/iterations.csv`` (and ``random/iterations.csv``),
the final committee's ``metrics.csv`` files and ``test_predictions.npz``, ``checks/checks.json`` and
``checks/checks.npz``. Plots are drawn with matplotlib's object API on the Agg canvas; no global
backend is changed. Units in the plots: meV/atom, meV/Å, THz, K, ps.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

__all__ = ["plot_md", "plot_phonons", "write_report"]

_DPI = 110


def _read_csv(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open() as fh:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _num(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _plain_log(ax) -> None:
    """Log-scale y ticks written as plain numbers (0.5, 20, 300) instead of powers of ten."""
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "25" else ""))


def _save(fig: Figure, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    return path.name


def _final_committee(run: Path) -> Path | None:
    iters = sorted((run / "active" / "committee").glob("iter_*"))
    return iters[-1] if iters else None


# --------------------------------------------------------------------------- plots


def _plot_learning_curves(committee: Path, out: Path) -> str | None:
    members = sorted(committee.glob("member_*/metrics.csv"))
    if not members:
        return None
    fig = Figure(figsize=(10, 3.8))
    ax_loss, ax_err = fig.subplots(1, 2)
    for m, path in enumerate(members):
        rows = _read_csv(path)
        epoch = [r["epoch"] for r in rows]
        colour = f"C{m}"
        ax_loss.semilogy(epoch, [r["train_loss"] for r in rows], color=colour, label=f"member {m} train")
        ax_loss.semilogy(
            epoch, [r["val_loss"] for r in rows], color=colour, ls="--", label=f"member {m} valid"
        )
        ax_err.plot(
            epoch, [1e3 * r["val_energy_per_atom_mae"] for r in rows], color=colour, label=f"member {m} E"
        )
        if any(math.isfinite(r.get("val_forces_mae", math.nan)) for r in rows):
            ax_err.plot(
                epoch, [1e3 * r["val_forces_mae"] for r in rows], color=colour, ls=":", label=f"member {m} F"
            )
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"final committee ({committee.name}): losses")
    ax_err.set(
        xlabel="epoch",
        ylabel="validation MAE",
        yscale="log",
        title="validation MAE: E (meV/atom, solid), F (meV/Å, dotted)",
    )
    _plain_log(ax_err)
    ax_loss.legend(fontsize=7, ncol=2)
    ax_err.legend(fontsize=7, ncol=2)
    return _save(fig, out / "learning_curves.png")


def _plot_parity(pred: dict[str, np.ndarray], out: Path) -> str:
    has_f = pred["forces_ref"].size > 0
    fig = Figure(figsize=(10 if has_f else 5, 4.2))
    axes = fig.subplots(1, 2 if has_f else 1, squeeze=False)[0]
    panels = [("energy_ref", "energy_pred", "energy per atom", "eV/atom", 1.0, "meV/atom")]
    if has_f:
        panels.append(("forces_ref", "forces_pred", "force components", "eV/Å", 1.0, "meV/Å"))
    for ax, (ref_key, pred_key, title, unit, _, err_unit) in zip(axes, panels, strict=True):
        ref, got = pred[ref_key], pred[pred_key]
        mae = 1e3 * float(np.mean(np.abs(got - ref)))
        ax.scatter(ref, got, s=6, alpha=0.5)
        lo, hi = float(min(ref.min(), got.min())), float(max(ref.max(), got.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set(
            xlabel=f"reference ({unit})",
            ylabel=f"committee mean ({unit})",
            title=f"{title}: MAE {mae:.2f} {err_unit} (n = {ref.size})",
        )
    return _save(fig, out / "parity.png")


def _plot_iterations(rows: list[dict[str, float]], out: Path, force_threshold: float | None) -> str | None:
    if not rows:
        return None
    fig = Figure(figsize=(10, 3.8))
    ax_err, ax_dis = fig.subplots(1, 2)
    labels = [r["n_train_labels"] for r in rows]
    if any(math.isfinite(r["test_forces_mae"]) for r in rows):
        ax_err.plot(labels, [1e3 * r["test_forces_mae"] for r in rows], "o-", label="test force MAE (meV/Å)")
    ax_err.plot(
        labels, [1e3 * r["test_energy_per_atom_mae"] for r in rows], "s-", label="test energy MAE (meV/atom)"
    )
    ax_err.plot(
        labels,
        [1e3 * r["valid_energy_per_atom_mae"] for r in rows],
        "s:",
        label="valid energy MAE (meV/atom)",
    )
    ax_err.set(xlabel="training labels", ylabel="error", yscale="log", title="committee error per iteration")
    _plain_log(ax_err)
    ax_err.legend(fontsize=8)
    it = [r["iteration"] for r in rows if math.isfinite(r["force_std_mean"])]
    if it:
        ax_dis.plot(
            it,
            [1e3 * r["force_std_mean"] for r in rows if math.isfinite(r["force_std_mean"])],
            "o-",
            label="mean over candidates",
        )
        ax_dis.plot(
            it,
            [1e3 * r["force_std_max"] for r in rows if math.isfinite(r["force_std_max"])],
            "^--",
            label="max over candidates",
        )
        if force_threshold:
            ax_dis.axhline(1e3 * force_threshold, color="k", lw=0.8, ls=":", label="selection threshold")
        ax_dis.set(yscale="log")
        _plain_log(ax_dis)
        ax_dis.legend(fontsize=8)
    ax_dis.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_dis.set(
        xlabel="iteration",
        ylabel="max atomic force std (meV/Å)",
        title="committee disagreement on candidates",
    )
    return _save(fig, out / "active_learning.png")


def _plot_al_vs_random(al: list[dict[str, float]], rnd: list[dict[str, float]], out: Path) -> str:
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    key = (
        "test_forces_mae"
        if any(math.isfinite(r["test_forces_mae"]) for r in al)
        else "test_energy_per_atom_mae"
    )
    unit = "meV/Å" if key == "test_forces_mae" else "meV/atom"
    for rows, name, style in ((al, "active learning", "o-"), (rnd, "random selection", "s--")):
        ax.plot([r["n_train_labels"] for r in rows], [1e3 * r[key] for r in rows], style, label=name)
    ax.set(
        xlabel="training labels",
        ylabel=f"held-out {key.split('_')[1]} MAE ({unit})",
        title="active learning vs random selection",
    )
    ax.legend()
    return _save(fig, out / "al_vs_random.png")


def plot_md(arr: dict[str, np.ndarray], out: Path, name: str = "md.png") -> str | None:
    """NVT/NVE traces from :func:`.checks.check_nvt` / :func:`.checks.check_nve` arrays to ``out/name``."""
    panels = [k for k in ("nvt_time", "nve_time") if k in arr and arr[k].size]
    if not panels:
        return None
    fig = Figure(figsize=(10, 3.6 * len(panels)))
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for row, key in zip(axes, panels, strict=True):
        kind = key.split("_")[0]
        t, n = arr[key], float(arr[f"{kind}_n_atoms"])
        e = arr[f"{kind}_etot"] if kind == "nve" else arr[f"{kind}_epot"]
        row[0].plot(t, 1e3 * (e - e[0]) / n, lw=0.8)
        row[0].set(
            xlabel="time (ps)",
            ylabel="E(t) − E(0) (meV/atom)",
            title="NVE total energy" if kind == "nve" else "NVT potential energy",
        )
        row[1].plot(t, arr[f"{kind}_temperature"], lw=0.8, color="C1", label="instantaneous")
        row[1].axhline(float(arr[f"{kind}_target_K"]), color="k", lw=0.8, ls=":", label="thermostat/start")
        row[1].set(xlabel="time (ps)", ylabel="T (K)", title=f"{kind.upper()} temperature ({n:.0f} atoms)")
        row[1].legend(fontsize=7, loc="lower right")
        if kind == "nvt" and "nvt_forces_std" in arr:
            twin = row[1].twinx()
            twin.plot(t, 1e3 * arr["nvt_forces_std"], lw=0.6, color="C2")
            twin.set_ylabel("committee max force std (meV/Å)", color="C2")
    return _save(fig, out / name)


def plot_phonons(arr: dict[str, np.ndarray], out: Path, name: str = "phonons.png") -> str | None:
    """Bands (and DOS) from :func:`.checks.check_phonons` arrays, model dashed over reference, to
    ``out/name``; returns the file name (None without phonon data)."""
    if "phonon_bands" not in arr:
        return None
    fig = Figure(figsize=(9, 4.5))
    ax, ax_dos = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]}, sharey=True)
    x = arr["phonon_distances"]
    for label, key, style in (
        ("reference", "phonon_reference_bands", "k-"),
        ("model", "phonon_bands", "C3--"),
    ):
        if key not in arr:
            continue
        for s, (a, b) in enumerate(arr["phonon_segments"]):
            ax.plot(x[a:b], arr[key][a:b], style, lw=1.0, label=label if s == 0 else None)
    handles, names = ax.get_legend_handles_labels()
    uniq = dict(zip(names, handles, strict=True))
    ax.legend(uniq.values(), uniq.keys())
    for tx in arr["phonon_tick_x"]:
        ax.axvline(tx, color="0.7", lw=0.5)
    ax.set_xticks(arr["phonon_tick_x"], [t.replace("G", "Γ") for t in arr["phonon_tick_labels"]])
    ax.set(xlim=(x[0], x[-1]), ylabel="frequency (THz)", title="phonon bands: model vs reference")
    ax.axhline(0.0, color="0.5", lw=0.5)
    ax_dos.plot(arr["phonon_dos"], arr["phonon_dos_f"], "C3--", label="model")
    if "phonon_reference_dos" in arr:
        ax_dos.plot(arr["phonon_reference_dos"], arr["phonon_dos_f"], "k-", label="reference")
    ax_dos.set(xlabel="DOS (states/THz)", title="DOS")
    return _save(fig, out / name)


def _plot_vibrations(arr: dict[str, np.ndarray], out: Path) -> str | None:
    if "vibration_frequencies" not in arr:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    model = np.sort(arr["vibration_frequencies"])
    if "vibration_reference_frequencies" in arr:
        ref = np.sort(arr["vibration_reference_frequencies"])
        ax.plot(ref, model, "o")
        ax.plot([ref.min(), ref.max()], [ref.min(), ref.max()], "k--", lw=0.8)
        ax.set(xlabel="reference frequency (THz)", ylabel="model frequency (THz)")
    else:
        ax.plot(model, "o")
        ax.set(xlabel="mode", ylabel="model frequency (THz)")
    ax.set(title="harmonic frequencies at each method's minimum")
    return _save(fig, out / "vibrations.png")


# --------------------------------------------------------------------------- markdown


def _fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value * scale:.{digits}f}"
    return str(value)


def _iteration_table(rows: list[dict[str, float]]) -> list[str]:
    lines = [
        "| iteration | training labels | test F MAE (meV/Å) | test E MAE (meV/atom) | valid E MAE (meV/atom) "
        "| candidates | rejected | eligible | selected | mean force std (meV/Å) | train (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [
            _fmt(r["iteration"], digits=0),
            _fmt(r["n_train_labels"], digits=0),
            _fmt(r["test_forces_mae"], 1e3, 1),
            _fmt(r["test_energy_per_atom_mae"], 1e3),
            _fmt(r["valid_energy_per_atom_mae"], 1e3),
            _fmt(r["n_candidates"], digits=0),
            _fmt(r["n_rejected"], digits=0),
            _fmt(r["n_eligible"], digits=0),
            _fmt(r["n_selected"], digits=0),
            _fmt(r["force_std_mean"], 1e3, 1),
            _fmt(r["train_s"], digits=0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _header(
    run: Path, summary: dict[str, Any], recipe: dict[str, Any], rows: list[dict[str, float]]
) -> list[str]:
    ref = recipe.get("reference", {})
    train_on = ref.get("train_on", ["energy", "forces", "stress"])
    final = rows[-1] if rows else {}
    committee = _final_committee(run)
    lines = [f"# Run report: {summary.get('name', run.name)}", ""]
    if recipe.get("description"):
        lines += [str(recipe["description"]).strip(), ""]
    lines += [
        f"**Verdict: {summary.get('verdict', '?')}**",
        "",
        f"- Reference method: `{ref.get('method', '?')}`; models trained on **{', '.join(train_on)}**"
        + (
            " (energies only: forces come from the learned energy, regularised by PITC/PISC when the "
            "training config weights them)"
            if train_on == ["energy"]
            else ""
        ),
        f"- Labels spent: **{_fmt(final.get('n_train_labels'), digits=0)} training structures** "
        f"(+ {_fmt(final.get('n_test'), digits=0)} held-out test structures, labelled once, "
        "never trained on)",
        f"- Active learning: {len(rows)} committee trainings; stopped because: "
        f"{summary.get('stop_reason', '?')}",
        f"- Final committee: `{committee.relative_to(run) if committee else '?'}`; "
        f"test force MAE {_fmt(final.get('test_forces_mae'), 1e3, 1)} meV/Å, "
        f"energy MAE {_fmt(final.get('test_energy_per_atom_mae'), 1e3)} meV/atom",
    ]
    timings = summary.get("timings", {})
    if timings:
        lines.append(
            "- Wall time: " + ", ".join(f"{k[:-2].replace('_', ' ')} {v:.0f} s" for k, v in timings.items())
        )
    return lines + [""]


def _checks_section(checks: dict[str, Any]) -> list[str]:
    if not checks.get("checks"):
        return ["## Checks", "", "No checks were configured.", ""]
    lines = ["## Checks on the final potential", "", "| check | result | details |", "|---|---|---|"]
    for c in checks["checks"]:
        result = {True: "pass", False: "**FAIL**", None: "–"}[c["passed"]]
        lines.append(f"| {c['name']} | {result} | {c['summary']} |")
    return lines + [""]


_CAPTIONS = {
    "active_learning": "Left: committee errors vs training labels. Right: committee disagreement on each "
    "iteration's candidates (the loop labels those above the threshold).",
    "al_vs_random": "Held-out error vs labels: active learning vs random selection from the same kind of "
    "candidates, with the same number of labels per iteration.",
    "parity": "Final committee mean vs reference on the held-out test set.",
    "learning_curves": "Training of the final committee (from each member's metrics.csv).",
    "phonons": "Phonon bands and DOS of the final potential (dashed) and the reference (solid), same cell.",
    "vibrations": "Harmonic frequencies of the final potential vs the reference.",
    "md": "MD checks with the final committee: energies, temperature and committee disagreement.",
}
_FILES = [
    "## Files",
    "",
    "- `active/store.db`: every structure, its origin and labels (`ase db active/store.db`)",
    "- `active/iterations.csv`: the numbers above; `active/committee/iter_*/member_*/`: training runs",
    "- `checks/checks.json`, `checks/checks.npz`: check results and traces",
    "- `recipe.yaml`: the recipe as run",
    "",
]


def _load(run: Path) -> dict[str, Any]:
    """Everything the report reads from a run folder (empty where a file is missing)."""

    def read(path: Path, parse) -> Any:
        return parse(path) if path.is_file() else {}

    return {
        "summary": read(run / "summary.json", lambda p: json.loads(p.read_text())),
        "recipe": read(run / "recipe.yaml", lambda p: yaml.safe_load(p.read_text())),
        "rows": _read_csv(run / "active" / "iterations.csv"),
        "random": _read_csv(run / "random" / "iterations.csv"),
        "checks": read(run / "checks" / "checks.json", lambda p: json.loads(p.read_text())),
        "arrays": read(run / "checks" / "checks.npz", lambda p: dict(np.load(p))),
        "committee": _final_committee(run),
    }


def _al_section(rows: list[dict[str, float]], rnd: list[dict[str, float]]) -> list[str]:
    lines = [
        "## Active learning",
        "",
        "Each iteration trains the committee on every label so far, scores it on the held-out test set, "
        "then generates candidates (including MD driven by the committee) and labels those where the "
        "members disagree most, spread out by farthest-point sampling.",
        "",
    ]
    lines += _iteration_table(rows) + [""]
    if rnd:
        lines += [
            "Active learning vs random selection at the same label budget (same initial and test sets):",
            "",
            "| training labels | AL test F MAE (meV/Å) | random test F MAE (meV/Å) |",
            "|---:|---:|---:|",
        ]
        for a, b in zip(rows, rnd, strict=False):
            lines.append(
                f"| {_fmt(a['n_train_labels'], digits=0)} | {_fmt(a['test_forces_mae'], 1e3, 1)} | "
                f"{_fmt(b['test_forces_mae'], 1e3, 1)} |"
            )
        lines.append("")
    return lines


def _figures(data: dict[str, Any], out: Path) -> list[tuple[str, str | None]]:
    """Draw every plot the data allows; (name, file name or None)."""
    threshold = (data["recipe"].get("active_learning") or {}).get("force_threshold", 0.05)
    figures = [("active_learning", _plot_iterations(data["rows"], out, threshold))]
    if data["random"]:
        figures.append(("al_vs_random", _plot_al_vs_random(data["rows"], data["random"], out)))
    committee = data["committee"]
    if committee is not None and (committee / "test_predictions.npz").is_file():
        figures.append(("parity", _plot_parity(dict(np.load(committee / "test_predictions.npz")), out)))
    if committee is not None:
        figures.append(("learning_curves", _plot_learning_curves(committee, out)))
    arrays = data["arrays"]
    return figures + [
        ("phonons", plot_phonons(arrays, out)),
        ("vibrations", _plot_vibrations(arrays, out)),
        ("md", plot_md(arrays, out)),
    ]


def write_report(run: str | Path) -> Path:
    """Write ``RUN/report/report.md`` and its PNG plots; returns the path of report.md."""
    run = Path(run)
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # plots of an earlier build that may no longer apply
        old.unlink()
    data = _load(run)
    lines = _header(run, data["summary"], data["recipe"], data["rows"]) + _checks_section(data["checks"])
    lines += _al_section(data["rows"], data["random"]) + ["## Figures", ""]
    for name, png in _figures(data, out):
        if png:
            lines += [f"### {name.replace('_', ' ')}", "", _CAPTIONS[name], "", f"![{name}]({png})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines + _FILES))
    return path
