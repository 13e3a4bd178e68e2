"""Recipes: one YAML file that says what to learn, from which reference, and how to check it.

Top-level keys (unknown keys anywhere are a ``ConfigError`` that lists the valid ones)::

    name: cu_emt                       # optional; default: the file's stem
    description: ...                   # optional free text, copied to the report
    structures:                        # start structures; each one of
      - {bulk: Cu, crystal: fcc, a: 3.61, cubic: true, repeat: [2, 2, 2]}   # ase.build.bulk
      - {molecule: CH3CH2OH}                                                 # ase.build.molecule
      - {file: start.extxyz, index: 0}  # or just "start.extxyz"; relative to the recipe's folder
    reference:
      method: emt                      # make_labeller spec: emt, xtb, gfn1-xtb, pyscf:<cbs spec>
      options: {}                      # keyword arguments of the labeller (charge, frozen_core, ...)
      train_on: [energy, forces]       # labels the models see; [energy] = energy-only training
      workers: 1                       # labelling processes; 0 = in this process
    training: {model: ..., loss: ..., optim: ..., data: {valid: 0.1}, seed: 0}   # a training
                                       # config without data.train / data.test / output
    active_learning: {...}             # ActiveConfig fields (pimlip_ase.workflow.active)
    checks: {relax: {}, phonons: {...}, nvt: {...}, nve: {...}, vibrations: {...}}
    output: runs/cu_emt                # default runs/<name>

:func:`run_recipe` runs the active-learning loop (and the random baseline when
``active_learning.compare_random``), the checks on the final committee and the report, all in
``output``; with ``resume`` it continues a killed run from where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import ase
import ase.build
import ase.io
import yaml

from ..errors import ConfigError
from ..modelfile import to_plain
from ..training import load_config
from .active import LABELS, ActiveConfig, ActiveLearning, ActiveResult
from .checks import CheckOutcome, load_checks, run_checks, verdict
from .label import Labeller, make_labeller
from .store import Store

log = logging.getLogger("pimlip_ase.workflow.recipe")

RECIPE_KEYS = (
    "name",
    "description",
    "structures",
    "reference",
    "training",
    "active_learning",
    "checks",
    "output",
)
REFERENCE_KEYS = ("method", "options", "train_on", "workers")
_SET_BY_LOOP = ("output", "data.train", "data.test")
_STRUCTURE_KEYS = {
    "bulk": ("bulk", "crystal", "a", "b", "c", "alpha", "covera", "cubic", "orthorhombic", "repeat"),
    "molecule": ("molecule", "vacuum", "repeat"),
    "file": ("file", "index", "repeat"),
}


@dataclasses.dataclass
class Recipe:
    """A validated recipe (see the module docstring); ``raw`` is the mapping it was read from."""

    name: str
    description: str
    structures: list[ase.Atoms]
    method: str
    labeller: Labeller
    train_on: list[str]
    label_workers: int
    training: dict[str, Any]
    active_learning: ActiveConfig
    checks: dict[str, Any]
    output: str
    raw: dict[str, Any]


def _unknown(values: dict[str, Any], valid: tuple[str, ...] | list[str], where: str) -> None:
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(valid)}")


def build_structure(spec: Any, base_dir: str | Path = ".") -> ase.Atoms:
    """One start structure from a recipe entry: a file name, or ``{bulk: ...}``, ``{molecule: ...}``,
    ``{file: ...}`` mappings (keys in ``_STRUCTURE_KEYS``; ``repeat`` is a supercell repetition)."""
    if isinstance(spec, str):
        spec = {"file": spec}
    kinds = [k for k in _STRUCTURE_KEYS if isinstance(spec, dict) and k in spec]
    if len(kinds) != 1:
        raise ConfigError(
            f"a structure is a file name or a mapping with exactly one of {list(_STRUCTURE_KEYS)}; "
            f"got {spec!r}"
        )
    kind = kinds[0]
    _unknown(spec, _STRUCTURE_KEYS[kind], f"structure {spec!r}")
    args = {k: v for k, v in spec.items() if k not in (kind, "repeat")}
    try:
        if kind == "bulk":
            crystal = args.pop("crystal", None)
            atoms = ase.build.bulk(spec["bulk"], crystalstructure=crystal, **args)
        elif kind == "molecule":
            atoms = ase.build.molecule(spec["molecule"])
            if args.get("vacuum") is not None:
                atoms.center(vacuum=args["vacuum"])
        else:
            path = Path(base_dir) / spec["file"]
            if not path.is_file():
                raise ConfigError(f"structure file {str(path)!r} does not exist")
            atoms = ase.io.read(path, index=args.get("index", 0))
    except (KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"cannot build structure {spec!r}: {err}") from err
    if "repeat" in spec:
        atoms = atoms.repeat(spec["repeat"])
    return atoms


def _reference(section: Any) -> tuple[str, Labeller, list[str], int]:
    if not isinstance(section, dict) or "method" not in section:
        raise ConfigError("reference must be a mapping with a 'method' (e.g. emt, xtb, pyscf:mp2/cc-pvdz)")
    _unknown(section, REFERENCE_KEYS, "reference")
    train_on = list(section.get("train_on", LABELS))
    if "energy" not in train_on or set(train_on) - set(LABELS):
        raise ConfigError(
            f"reference.train_on must include 'energy' and name only {list(LABELS)}; got {train_on}"
        )
    workers = int(section.get("workers", 1))
    if workers < 0:
        raise ConfigError(f"reference.workers must be ≥ 0 (0: label in this process), got {workers}")
    try:
        labeller = make_labeller(str(section["method"]), **dict(section.get("options") or {}))
    except TypeError as err:
        raise ConfigError(f"reference.options do not fit method {section['method']!r}: {err}") from None
    return str(section["method"]), labeller, train_on, workers


def _training(section: Any, train_on: list[str]) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError(
            "training must be a mapping with the sections of a training config (model, loss, ...)"
        )
    if "output" in section or any(k in (section.get("data") or {}) for k in ("train", "test")):
        raise ConfigError(f"training.{'/'.join(_SET_BY_LOOP)} are set by the loop; remove them")
    cfg = load_config({**section, "data": {**(section.get("data") or {}), "train": "<set by the loop>"}})
    for label in ("forces", "stress"):
        if getattr(cfg.loss, label) > 0 and label not in train_on:
            raise ConfigError(
                f"training.loss.{label} > 0 but reference.train_on is {train_on}: the models "
                f"never see {label}; set the weight to 0 or add {label!r} to train_on"
            )
    return copy.deepcopy(section)


def load_recipe(source: str | Path | dict[str, Any], overrides: dict[str, Any] | None = None) -> Recipe:
    """A validated :class:`Recipe` from a YAML path or a mapping, with ``overrides`` merged in
    (nested mappings merge key by key; other values replace)."""
    base_dir, name = Path("."), "recipe"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"recipe file {str(path)!r} does not exist")
        base_dir, name = path.parent, path.stem
        source = yaml.safe_load(path.read_text()) or {}
    if not isinstance(source, dict):
        raise ConfigError(f"a recipe is a mapping with keys {list(RECIPE_KEYS)}")
    raw = _merge(copy.deepcopy(source), overrides or {})
    _unknown(raw, RECIPE_KEYS, "the recipe")
    for key in ("structures", "reference", "training", "active_learning"):
        if key not in raw:
            raise ConfigError(
                f"the recipe needs {key!r} (required: structures, reference, training, active_learning)"
            )
    specs = raw["structures"] if isinstance(raw["structures"], list) else [raw["structures"]]
    method, labeller, train_on, workers = _reference(raw["reference"])
    al = raw["active_learning"]
    if not isinstance(al, dict):
        raise ConfigError("active_learning must be a mapping")
    _unknown(al, [f.name for f in dataclasses.fields(ActiveConfig)], "active_learning")
    try:
        active = ActiveConfig(**al)
    except TypeError as err:  # e.g. a string where a number belongs
        raise ConfigError(f"active_learning: {err}") from None
    name = str(raw.get("name", name))
    return Recipe(
        name=name,
        description=str(raw.get("description", "")).strip(),
        structures=[build_structure(s, base_dir) for s in specs],
        method=method,
        labeller=labeller,
        train_on=train_on,
        label_workers=workers,
        training=_training(raw["training"], train_on),
        active_learning=active,
        checks=load_checks(raw.get("checks")),
        output=str(raw.get("output", f"runs/{name}")),
        raw=raw,
    )


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


@dataclasses.dataclass
class RecipeResult:
    """What a run produced: the loops' results, the checks, the overall verdict and the report."""

    output: Path
    active: ActiveResult
    random: ActiveResult | None
    checks: list[CheckOutcome]
    verdict: str
    report: Path
    wall_s: float

    def summary_lines(self) -> list[str]:
        """What a person wants at the end of a run: verdict, checks, labels, timings, report path."""
        final = self.active.records[-1]
        lines = [f"verdict: {self.verdict}"]
        lines += [
            f"  {c.name:<11}{'pass' if c.passed else ('FAIL' if c.passed is False else '-'):<6}{c.summary}"
            for c in self.checks
        ]
        lines.append(
            f"labels: {final['n_train_labels']} training + {final['n_test']} test structures; "
            f"active learning stopped: {self.active.stop_reason}"
        )
        lines.append(
            f"final committee: test force MAE {1e3 * final['test_forces_mae']:.1f} meV/Å, "
            f"energy MAE {1e3 * final['test_energy_per_atom_mae']:.2f} meV/atom"
        )
        if self.random is not None:
            rnd = self.random.records[-1]
            lines.append(
                f"random selection with the same {rnd['n_train_labels']} labels: test force MAE "
                f"{1e3 * rnd['test_forces_mae']:.1f} meV/Å"
            )
        lines.append(f"wall time {self.wall_s:.0f} s; report: {self.report}")
        return lines


def _schedule(result: ActiveResult) -> list[int]:
    """Labels added per iteration by an active-learning run (what a random baseline must match)."""
    spent = [r["n_train_labels"] + r["n_failed"] for r in result.records]
    return [b - a for a, b in zip(spent[:-1], spent[1:], strict=True)]


def _run_checks(recipe: Recipe, committee: list[Path], out: Path, resume: bool) -> list[CheckOutcome]:
    """The recipe's checks on the final committee, or, when resuming, the saved ones if the checks
    section is unchanged."""
    from ..calculator import PIMLIPCalculator
    from .reference import ReferenceCalculator

    path, settings = (
        out / "checks.json",
        to_plain({k: dataclasses.asdict(v) for k, v in recipe.checks.items()}),
    )
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings:
            return [CheckOutcome(**c) for c in saved["checks"]]
    log.info("checks: %s", ", ".join(recipe.checks) or "none")
    calc, ref = PIMLIPCalculator(committee), ReferenceCalculator(recipe.labeller)
    outcomes = run_checks(recipe.checks, calc, recipe.structures[0], ref, out)
    path.write_text(json.dumps({**json.loads(path.read_text()), "settings": settings}, indent=2))
    return outcomes


def run_recipe(recipe: Recipe, output: str | Path | None = None, resume: bool = False) -> RecipeResult:
    """Run a recipe end to end in ``output`` (default ``recipe.output``); see the module docstring.

    ``summary.json`` gets the verdict, the labels spent and the wall time of each stage (summed over
    the invocations of a resumed run).
    """
    from .report import write_report

    t_start = time.perf_counter()
    out = Path(output or recipe.output)
    old = (
        json.loads((out / "summary.json").read_text()) if resume and (out / "summary.json").is_file() else {}
    )
    timings = dict(old.get("timings", {}))

    def timed(stage: str, start: float) -> None:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start

    args = (recipe.training, recipe.labeller, recipe.structures)
    kw = {"train_on": recipe.train_on, "label_workers": recipe.label_workers}
    t0 = time.perf_counter()
    active = ActiveLearning(recipe.active_learning, *args, out / "active", **kw).run(resume)
    timed("active_learning_s", t0)
    (out / "recipe.yaml").write_text(yaml.safe_dump(to_plain(recipe.raw), sort_keys=False))
    random = None
    if recipe.active_learning.compare_random:
        t0 = time.perf_counter()
        cfg = dataclasses.replace(recipe.active_learning, selection="random", compare_random=False)
        random = ActiveLearning(
            cfg, *args, out / "random", schedule=_schedule(active), seed_from=Store(active.store_path), **kw
        ).run(resume=True)
        timed("random_baseline_s", t0)
    t0 = time.perf_counter()
    outcomes = _run_checks(recipe, active.committee, out / "checks", resume)
    timed("checks_s", t0)
    timed("total_s", t_start)
    summary = {
        "name": recipe.name,
        "verdict": verdict(outcomes),
        "stop_reason": active.stop_reason,
        "labels": active.records[-1]["n_train_labels"],
        "timings": timings,
    }
    (out / "summary.json").write_text(json.dumps(to_plain(summary), indent=2))
    report = write_report(out)
    return RecipeResult(
        out, active, random, outcomes, verdict(outcomes), report, time.perf_counter() - t_start
    )
