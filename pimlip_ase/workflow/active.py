"""Active learning: a committee of independently seeded models chooses which structures to label.

Iteration k (every step can be killed and resumed from the store, ``OUTPUT/store.db``):

1. *seed* (k = 0): the ``initial`` and ``test`` generators run on the start structures; their
   structures are added as pending rows (``role`` "train" / "test") and labelled. Test rows are a
   held-out set: never trained on, not counted in the label budget.
2. *train*: member m trains with seed ``training.seed + m`` (its own initialisation, validation
   split and batch order) on every labelled training row, keeping only the labels in ``train_on``
   (``["energy"]`` for energy-only data, where PITC/PISC in the training config take over). From
   k = 1 a member starts from its own previous model when ``warm_start``.
3. *evaluate*: the committee mean (``PIMLIPCalculator`` over the members) on the test rows.
4. *stop* when the label budget is spent or ``max_iterations`` selections were made.
5. *candidates*: the ``candidates`` generators — rattles, strains, and MD driven by the committee
   (``type: md``) — add ``candidate`` rows of iteration k + 1 (not labelled).
6. *select*: each candidate gets the committee disagreement (:mod:`.selection`). Rejected as
   unphysical (never labelled): atoms closer than ``min_distance_factor`` × their covalent radii
   sum, a bond of the start structure stretched or shrunk by more than ``max_bond_deviation`` Å
   (the NVT stability criterion), a force spread above ``force_upper``, or a predicted energy more
   than ``energy_window`` eV/atom above the lowest labelled one of the same formula. Eligible: a
   force spread above ``force_threshold`` (eV/Å) or an energy spread above ``energy_threshold``
   (eV/atom). The ``pool_factor`` × ``per_iteration`` most disputed eligible candidates form a pool
   from which farthest-point sampling on a radial fingerprint picks ``per_iteration``. The loop
   stops here when none is eligible, or when for ``patience`` iterations neither the error (test force MAE,
   else test or validation energy MAE) nor the mean candidate force spread improved by a fraction
   ``min_improvement`` on its best value. ``selection: random`` instead draws the same number
   uniformly among the candidates that are not rejected (the baseline).
7. *label* the chosen rows, k ← k + 1.

Per-iteration numbers go to the store's metadata and to ``OUTPUT/iterations.csv``; the committee of
iteration k lives in ``OUTPUT/committee/iter_KKK/member_M/`` (training runs, ``model.pt``).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ase
import numpy as np

from ..calculator import PIMLIPCalculator
from ..errors import ConfigError, ResumeDataError
from ..keys import ENERGY, FORCES, STRESS
from ..modelfile import load_model, to_plain
from ..training import train
from . import generate
from .candidates import check_generator, mix_seed, run_generators
from .checks import committee_predictions, parity_metrics
from .label import Labeller, LabelResult
from .reference import ReferenceCalculator
from .selection import (
    above_energy_window,
    committee_disagreement,
    radial_fingerprint,
    select_by_disagreement,
    too_close,
)
from .stability_md import max_bond_deviation
from .store import CANDIDATE, Store, label_pending, process_pool

log = logging.getLogger("pimlip_ase.workflow.active")

LABELS = ("energy", "forces", "stress")
SELECTIONS = ("disagreement", "random")
CSV_COLUMNS = [
    "iteration", "n_train_labels", "n_failed", "n_test", "test_energy_per_atom_mae", "test_forces_mae",
    "test_forces_rmse", "valid_energy_per_atom_mae", "valid_forces_mae", "error", "n_candidates",
    "n_rejected", "n_eligible", "n_selected", "force_std_mean", "force_std_max", "energy_std_mean",
    "train_s", "candidates_s", "select_s", "label_s",
]  # fmt: skip


@dataclasses.dataclass
class ActiveConfig:
    """Settings of the loop (see the module docstring); thresholds in eV/Å and eV/atom."""

    committee: int = 3
    initial: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    test: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    candidates: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    per_iteration: int = 10
    label_budget: int = 100
    max_iterations: int = 10
    force_threshold: float = 0.05
    energy_threshold: float = 0.002
    force_upper: float | None = None
    min_distance_factor: float = 0.5
    energy_window: float | None = None
    max_bond_deviation: float | None = None
    pool_factor: float = 3.0
    patience: int = 2
    min_improvement: float = 0.05
    selection: str = "disagreement"
    compare_random: bool = False
    warm_start: bool = True
    warm_start_epochs: int | None = None
    fingerprint: dict[str, float] = dataclasses.field(default_factory=lambda: {"r_max": 5.0, "n_bins": 32})
    seed: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        if self.committee < 2:
            raise ConfigError(
                f"active_learning.committee must be ≥ 2 (a disagreement needs two), got {self.committee}"
            )
        if self.selection not in SELECTIONS:
            raise ConfigError(f"active_learning.selection={self.selection!r}; use one of {SELECTIONS}")
        if not self.initial:
            raise ConfigError("active_learning.initial needs at least one generator (the first training set)")
        for name in ("initial", "test", "candidates"):
            setattr(
                self,
                name,
                [
                    check_generator(s, f"active_learning.{name}[{i}]")
                    for i, s in enumerate(getattr(self, name))
                ],
            )
        if min(self.per_iteration, self.label_budget, self.workers, self.patience) < 1:
            raise ConfigError("per_iteration, label_budget, workers and patience must be ≥ 1")
        if self.force_threshold <= 0 or self.energy_threshold <= 0:
            raise ConfigError("force_threshold and energy_threshold must be > 0")
        bad = set(self.fingerprint) - {"r_max", "n_bins", "width"}
        if bad:
            raise ConfigError(
                f"unknown fingerprint key(s) {sorted(bad)}; valid: ['n_bins', 'r_max', 'width']"
            )


@dataclasses.dataclass
class ActiveResult:
    """committee: the final members' model files; records: one dict per iteration (CSV_COLUMNS)."""

    committee: list[Path]
    records: list[dict[str, Any]]
    stop_reason: str
    store_path: Path
    output: Path


def _train_member(config: dict[str, Any], threads: int | None) -> str:
    """Train one member, or resume it from its last checkpoint, or reuse its finished model file. A
    checkpoint of other training data (labels retried since the run was killed) is started afresh."""
    out = Path(config["output"])
    if (out / "model.pt").is_file():
        return str(out / "model.pt")
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        return str(train(config, resume=(out / "checkpoints" / "last.pt").is_file()).model_path)
    except ResumeDataError as err:
        log.warning("%s; training this member again from scratch", err)
        shutil.rmtree(out / "checkpoints")
        return str(train(config).model_path)


def training_view(structures: Sequence[ase.Atoms], train_on: Sequence[str]) -> list[ase.Atoms]:
    """Copies that keep only the labels in ``train_on`` (the others stay in the store)."""
    out = []
    for atoms in structures:
        a = atoms.copy()
        if "forces" not in train_on:
            a.arrays.pop(FORCES, None)
        if "stress" not in train_on:
            a.info.pop(STRESS, None)
        out.append(a)
    return out


def _finite(*values: float) -> float:
    return next((v for v in values if v is not None and math.isfinite(v)), math.nan)


class ActiveLearning:
    """One active-learning run in ``output`` (see the module docstring).

    Args:
        config: the loop settings.
        training: a training config without ``data.train``/``output`` (set per member here).
        labeller: the reference method (picklable; see :func:`.label.make_labeller`).
        structures: the start structures the generators work on.
        train_on: labels the models train on, a subset of ("energy", "forces", "stress").
        label_workers: labelling processes (0: label in this process, good for EMT-cheap methods).
        schedule: labels per iteration to use instead of ``per_iteration`` (random baseline runs).
        seed_from: a store whose iteration-0 rows (initial and test, labelled) are copied instead of
            generating and labelling new ones, so a baseline starts from the same data.
    """

    def __init__(
        self,
        config: ActiveConfig,
        training: dict[str, Any],
        labeller: Labeller,
        structures: Sequence[ase.Atoms],
        output: str | Path,
        train_on: Sequence[str] = LABELS,
        label_workers: int = 1,
        schedule: Sequence[int] | None = None,
        seed_from: Store | None = None,
    ) -> None:
        unknown = sorted(set(train_on) - set(LABELS))
        if unknown or "energy" not in train_on:
            raise ConfigError(f"train_on must include 'energy' and name only {LABELS}; got {list(train_on)}")
        self.cfg, self.training, self.labeller = config, training, labeller
        self.structures = [generate.as_atoms(s) for s in structures]
        self.out, self.train_on, self.label_workers = Path(output), list(train_on), label_workers
        self.schedule = None if schedule is None else [int(n) for n in schedule]
        self.seed_from = seed_from
        self.store: Store | None = None
        self.species = sorted({s for a in self.structures for s in a.get_chemical_symbols()})

    # ------------------------------------------------------------------ state

    def _identity(self) -> dict[str, Any]:
        settings = dataclasses.asdict(self.cfg)
        for key in ("compare_random", "workers"):  # how the run is organised, not what it computes
            settings.pop(key)
        return {
            "config": settings,
            "training": to_plain(self.training),
            "method": self.labeller.method,
            "train_on": self.train_on,
            "schedule": self.schedule,
            "structures": [a.get_chemical_formula() for a in self.structures],
        }

    def _meta(self) -> dict[str, Any]:
        return self.store.metadata.get("active", {})

    def _save(self, **changes: Any) -> None:
        meta = {**self._meta(), **changes}
        self.store.metadata = {**self.store.metadata, "active": meta}
        _write_csv(self.out / "iterations.csv", meta.get("records", []))

    def _set_step(self, iteration: int, step: str) -> None:
        self._save(state={"iteration": iteration, "step": step})
        log.info("iteration %d: %s", iteration, step)

    def _open(self, resume: bool) -> dict[str, Any]:
        path = self.out / "store.db"
        if self.seed_from is not None and not path.exists():
            _copy_seed(self.seed_from, path)
        self.store = Store(path)
        meta, ident = self._meta(), to_plain(self._identity())
        if meta and not resume:
            raise ConfigError(
                f"{str(self.out)!r} already holds an active-learning run; resume it "
                "(--resume) or choose another output folder"
            )
        if meta and meta.get("identity") != ident:
            changed = sorted(k for k in ident if meta.get("identity", {}).get(k) != ident[k])
            raise ConfigError(f"cannot resume {str(self.out)!r}: the recipe changed in {changed}")
        if not meta:
            self._save(identity=ident, records=[], state={"iteration": 0, "step": "seed"}, stopped=None)
        return self._meta()

    # ------------------------------------------------------------------ the loop

    def run(self, resume: bool = False) -> ActiveResult:
        """Run (or, with ``resume``, continue) the loop until a stop criterion; see the module docstring.

        The log goes to ``OUTPUT/active.log`` (and to the ``pimlip_ase.workflow.active`` logger).
        """
        self.out.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.out / "active.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            return self._loop(resume)
        finally:
            log.removeHandler(handler)
            handler.close()

    def _loop(self, resume: bool) -> ActiveResult:
        meta = self._open(resume)
        k = int(meta["state"]["iteration"])
        if meta.get("stopped"):
            return self._result(k)
        if meta["state"]["step"] == "seed":
            self._seed_sets()
        self._label()
        while True:
            self._train_and_evaluate(k)
            reason = self._budget_stop(k)
            if reason is None:
                self._candidates(k)
                chosen = self._select(k)
                reason = self._converged(k)
            if reason is not None:
                if self._meta()["records"][k].get("n_selected"):  # chosen, but the loop stops: none labelled
                    self._update_record(k, n_selected=0)
                self._save(stopped=reason, state={"iteration": k, "step": "stopped"})
                log.info("stopped after iteration %d: %s", k, reason)
                return self._result(k)
            self.store.promote(chosen)
            self._set_step(k, "label")
            t0 = time.perf_counter()
            self._label()
            self._update_record(k, label_s=round(time.perf_counter() - t0, 2))
            k += 1

    def _result(self, k: int) -> ActiveResult:
        meta = self._meta()
        paths = [self.out / p for p in meta["records"][k]["committee"]]
        return ActiveResult(paths, meta["records"], meta["stopped"], self.store.path, self.out)

    def _seed_sets(self) -> None:
        self._set_step(0, "seed")
        ref = {"reference": ReferenceCalculator(self.labeller), "committee": None}
        initial = run_generators(self.cfg.initial, self.structures, ref, mix_seed(self.cfg.seed, 0, 0))
        test = run_generators(self.cfg.test, self.structures, ref, mix_seed(self.cfg.seed, 0, 1))
        if len(initial) > self.cfg.label_budget:
            raise ConfigError(
                f"the initial set has {len(initial)} structures, more than label_budget "
                f"{self.cfg.label_budget}; enlarge the budget or shrink the initial generators"
            )
        for role, structures in (("train", initial), ("test", test)):
            if not self.store.count(iteration=0, role=role):  # each set is added in one transaction
                self.store.add(structures, iteration=0, tags={"role": role})

    def _label(self) -> None:
        if not self.store.count(status="pending"):
            return
        if self.label_workers == 0:
            with ThreadPoolExecutor(1) as pool:
                label_pending(self.store, self.labeller, executor=pool, progress=True)
        else:
            label_pending(self.store, self.labeller, workers=self.label_workers, progress=True)

    def _member_configs(self, k: int) -> list[dict[str, Any]]:
        labelled = [a for a in self.store.labelled_atoms(role="train") if a.info["iteration"] <= k]
        atoms = training_view(labelled, self.train_on)
        configs = []
        for m in range(self.cfg.committee):
            cfg = copy.deepcopy(self.training)
            cfg.setdefault("data", {})["train"] = atoms
            cfg["output"] = str(self.out / "committee" / f"iter_{k:03d}" / f"member_{m}")
            cfg["seed"] = int(cfg.get("seed", 0)) + m
            if self.cfg.warm_start and k > 0:
                cfg["init_from"] = str(
                    self.out / "committee" / f"iter_{k - 1:03d}" / f"member_{m}" / "model.pt"
                )
                if self.cfg.warm_start_epochs:
                    cfg.setdefault("optim", {})["max_epochs"] = self.cfg.warm_start_epochs
            configs.append(cfg)
        return configs

    def _train(self, k: int) -> list[Path]:
        self._set_step(k, "train")
        configs = self._member_configs(k)
        if self.cfg.workers == 1:
            return [Path(_train_member(c, None)) for c in configs]
        with process_pool(self.cfg.workers) as pool:
            return [Path(p) for p in pool.map(_train_member, configs, [1] * len(configs))]

    def _train_and_evaluate(self, k: int) -> None:
        t0 = time.perf_counter()
        paths = self._train(k)
        train_s = round(time.perf_counter() - t0, 2)
        self._set_step(k, "evaluate")
        valid = [load_model(p).provenance.get("valid_metrics") or {} for p in paths]
        test_atoms = self.store.labelled_atoms(role="test")
        test = {}
        if test_atoms:
            pred = committee_predictions(paths, test_atoms)
            np.savez(paths[0].parent.parent / "test_predictions.npz", **pred)
            test = parity_metrics(pred)
        valid_e = float(np.mean([v.get("energy_per_atom_mae", math.nan) for v in valid]))
        valid_f = float(np.mean([v.get("forces_mae", math.nan) for v in valid]))
        n_train = self.store.count(f"iteration<={k}", role="train", status="done")
        record = {
            "iteration": k,
            "n_train_labels": n_train,
            "n_failed": self.store.count(f"iteration<={k}", role="train", status="failed"),
            "n_test": len(test_atoms),
            "test_energy_per_atom_mae": test.get("energy_per_atom_mae", math.nan),
            "test_forces_mae": test.get("forces_mae", math.nan),
            "test_forces_rmse": test.get("forces_rmse", math.nan),
            "valid_energy_per_atom_mae": valid_e,
            "valid_forces_mae": valid_f,
            "error": _finite(test.get("forces_mae"), test.get("energy_per_atom_mae"), valid_e),
            "train_s": train_s,
            "committee": [str(p.relative_to(self.out)) for p in paths],
        }
        self._update_record(k, **record)
        log.info(
            "iteration %d: %d training labels, test force MAE %.4f eV/Å, test energy MAE %.2f meV/atom",
            k,
            n_train,
            record["test_forces_mae"],
            1e3 * record["test_energy_per_atom_mae"],
        )

    def _update_record(self, k: int, **values: Any) -> None:
        records = list(self._meta().get("records", []))
        while len(records) <= k:
            records.append({})
        records[k] = {**records[k], **to_plain(values)}
        self._save(records=records)

    def _spent(self, k: int) -> int:
        """Training labels asked for up to iteration k (done, failed or still pending)."""
        return sum(
            self.store.count(f"iteration<={k}", role="train", status=s) for s in ("pending", "done", "failed")
        )

    def _n_next(self, k: int) -> int:
        if self.schedule is not None:
            return self.schedule[k] if k < len(self.schedule) else 0
        return min(self.cfg.per_iteration, self.cfg.label_budget - self._spent(k))

    def _budget_stop(self, k: int) -> str | None:
        if self._spent(k) >= self.cfg.label_budget:
            return f"label budget of {self.cfg.label_budget} spent"
        if self.schedule is not None and k >= len(self.schedule):
            return "label schedule done"
        if k >= self.cfg.max_iterations:
            return f"max_iterations ({self.cfg.max_iterations}) reached"
        return None

    def _committee_calc(self, k: int) -> PIMLIPCalculator:
        return PIMLIPCalculator([self.out / p for p in self._meta()["records"][k]["committee"]])

    def _candidates(self, k: int) -> None:
        if self.store.count(iteration=k + 1):
            return  # added in one transaction before a restart
        self._set_step(k, "candidates")
        t0 = time.perf_counter()
        calcs = {"committee": self._committee_calc(k), "reference": ReferenceCalculator(self.labeller)}
        new = run_generators(self.cfg.candidates, self.structures, calcs, mix_seed(self.cfg.seed, k + 1))
        if not new:
            raise ConfigError("active_learning.candidates produced no structure; add a generator")
        self.store.add(new, status=CANDIDATE, iteration=k + 1, tags={"role": "train"})
        self._update_record(k, candidates_s=round(time.perf_counter() - t0, 2))

    def _rejected(self, k: int, atoms: list[ase.Atoms], spread) -> np.ndarray:
        """(M,) candidates taken as unphysical: atoms too close, a broken bond, force spread or
        predicted energy too high."""
        rejected = np.array([too_close(a, self.cfg.min_distance_factor) for a in atoms])
        if self.cfg.force_upper is not None:
            rejected |= spread.force_std > self.cfg.force_upper
        if self.cfg.max_bond_deviation is not None:
            starts = [self.structures[int(a.info.get("start", 0))] for a in atoms]
            rejected |= np.array(
                [
                    len(a) == len(s) and max_bond_deviation(a, s) > self.cfg.max_bond_deviation
                    for a, s in zip(atoms, starts, strict=True)
                ]
            )
        if self.cfg.energy_window is not None:
            labelled = [a for a in self.store.labelled_atoms(role="train") if a.info["iteration"] <= k]
            rejected |= above_energy_window(atoms, spread.energy, labelled, self.cfg.energy_window)
        return rejected

    def _select(self, k: int) -> list[int]:
        rows = self.store.rows(iteration=k + 1)
        if any(kvp["status"] != CANDIDATE for _, _, kvp in rows):
            return []  # selected and promoted before a restart
        self._set_step(k, "select")
        t0 = time.perf_counter()
        atoms = [a for _, a, _ in rows]
        spread = committee_disagreement(atoms, self._committee_calc(k))
        rejected, n = self._rejected(k, atoms, spread), self._n_next(k)
        if self.cfg.selection == "random":
            pool = np.flatnonzero(~rejected)
            rng = np.random.default_rng(mix_seed(self.cfg.seed, k + 1, 7))
            chosen, eligible = (
                sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist()),
                ~rejected,
            )
        else:
            fps = np.stack([radial_fingerprint(a, self.species, **self.cfg.fingerprint) for a in atoms])
            sel = select_by_disagreement(
                spread,
                fps,
                n,
                self.cfg.force_threshold,
                self.cfg.energy_threshold,
                unphysical=rejected,
                pool_factor=self.cfg.pool_factor,
            )
            chosen, eligible = sel.chosen, sel.eligible
        notes = {
            rid: {
                "force_std": float(spread.force_std[i]),
                "energy_std": float(spread.energy_std[i]),
                "rejected": bool(rejected[i]),
                "selected": i in chosen,
            }
            for i, (rid, _, _) in enumerate(rows)
        }
        self.store.annotate(notes)
        self._update_record(
            k,
            n_candidates=len(rows),
            n_rejected=int(rejected.sum()),
            n_eligible=int(eligible.sum()),
            n_selected=len(chosen),
            force_std_mean=float(spread.force_std.mean()),
            force_std_max=float(spread.force_std.max()),
            energy_std_mean=float(spread.energy_std.mean()),
            select_s=round(time.perf_counter() - t0, 2),
        )
        return [rows[i][0] for i in chosen]

    def _converged(self, k: int) -> str | None:
        records = self._meta()["records"]
        if not records[k].get("n_selected"):
            return (
                "no candidate above the disagreement thresholds"
                if self.cfg.selection == "disagreement"
                else "no candidate left to draw"
            )
        if self.cfg.selection == "random" or self.schedule is not None:
            return None
        stale, best_e, best_d = 0, math.inf, math.inf
        for r in records[: k + 1]:
            e, d = r.get("error", math.nan), r.get("force_std_mean", math.nan)
            better = (e < (1 - self.cfg.min_improvement) * best_e) or (
                d < (1 - self.cfg.min_improvement) * best_d
            )
            stale = 0 if better else stale + 1
            best_e, best_d = min(best_e, _finite(e, math.inf)), min(best_d, _finite(d, math.inf))
        if stale >= self.cfg.patience:
            return f"error and disagreement stopped improving for {stale} iterations"
        return None


def _write_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    tmp = path.with_suffix(".csv.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def _copy_seed(source: Store, path: Path) -> None:
    """Copy the labelled iteration-0 rows of ``source`` into a new store at ``path`` (atomically)."""
    tmp = path.with_suffix(".db.tmp")
    tmp.unlink(missing_ok=True)
    dest = Store(tmp)
    for role in ("train", "test"):
        for atoms in source.labelled_atoms(role=role, iteration=0):
            [row] = dest.add([atoms], iteration=0, tags={"role": role})
            record = source.record(atoms.info["db_id"])
            dest.mark_done(
                row, LabelResult(atoms.info[ENERGY], atoms.arrays.get(FORCES), atoms.info.get(STRESS), record)
            )
    del dest
    os.replace(tmp, path)
