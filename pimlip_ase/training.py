"""Training: config dataclasses, the loop, checkpoints and resume.

``train(config)`` reads a YAML file or dict (see ``TrainConfig``), fits E0 and the output scale on the
training energies, then runs AdamW with an exponential moving average (EMA) of the weights (decay
min(ema, (1 + t)/(10 + t)) at update t, so that a small data set's few steps are not swamped by the
initial weights), ReduceLROnPlateau on the validation loss, gradient clipping and early stopping.
Validation uses the EMA weights and only the supervised terms (PIWSL terms are regularisers). After
every epoch ``checkpoints/last.pt`` is written atomically (and ``best.pt`` when validation improved);
``resume=True`` continues from ``last.pt`` with the RNG state restored, so a killed run ends where an
uninterrupted one would. Outputs: ``model.pt``, ``metrics.csv``, ``train.log``, ``checkpoints/``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ase
import torch
import yaml
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from .allocator import keep_large_blocks_in_heap
from .data import (
    Graph,
    LabelKeys,
    build_graphs,
    dataset_fingerprint,
    fit_reference_energies,
    fit_scale_shift,
    iterate_batches,
    read_structures,
    require_labels,
    species_of,
    split_indices,
)
from .errors import ConfigError, ResumeDataError, UnknownElementError
from .evaluate import error_metrics
from .losses import LossConfig, LossFunction
from .modelfile import atomic_torch_save, load_model, save_model, to_plain
from .models import PotentialModel, build_model

log = logging.getLogger("pimlip_ase.training")

DataSource = str | Path | Sequence[ase.Atoms]


@dataclasses.dataclass
class ModelConfig:
    """Architecture ``name`` and its hyperparameters (``extra`` is passed on to the constructor)."""

    name: str = "painn"
    cutoff: float = 5.0
    dtype: str = "float64"
    forces: str = "autograd"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DataConfig:
    """train/test: extxyz or ase.db paths (or lists of Atoms from Python); valid: path or fraction."""

    train: Any = None
    valid: Any = 0.1
    test: Any = None
    energy_key: str = LabelKeys.energy
    forces_key: str = LabelKeys.forces
    stress_key: str = LabelKeys.stress
    energy_unit: str = "eV"

    @property
    def label_keys(self) -> LabelKeys:
        return LabelKeys(self.energy_key, self.forces_key, self.stress_key, self.energy_unit)


@dataclasses.dataclass
class OptimConfig:
    """Optimiser, schedule and early stopping.

    ignore_first_epochs: early stopping and the choice of the best (kept) model skip these first
    epochs; with a validation set of a few structures an early epoch can fit them best by chance and
    then be kept although it is barely trained. The LR schedule still sees every epoch.
    """

    lr: float = 1e-3
    batch_size: int = 8
    max_epochs: int = 300
    patience: int = 30
    ema: float = 0.99
    weight_decay: float = 0.0
    clip_grad: float = 10.0
    lr_factor: float = 0.5
    lr_patience: int = 10
    min_lr: float = 1e-6
    ignore_first_epochs: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.ignore_first_epochs < self.max_epochs:
            raise ConfigError(
                f"optim.ignore_first_epochs must be in [0, max_epochs = {self.max_epochs}), "
                f"got {self.ignore_first_epochs}"
            )


@dataclasses.dataclass
class TrainConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    seed: int = 0
    output: str = "runs/pimlip"
    init_from: str | None = None
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"].update(d["model"].pop("extra"))
        for key in ("train", "valid", "test"):  # in-memory data cannot be written to YAML
            if not isinstance(d["data"][key], (str, int, float, type(None))):
                d["data"][key] = f"<{len(d['data'][key])}{_IN_MEMORY}"
        return to_plain(d)


#: How ``TrainConfig.to_dict`` names data given in memory (after its count); resume compares such
#: data by fingerprint, not by this name.
_IN_MEMORY = " structures in memory>"
_SECTIONS = {"model": ModelConfig, "data": DataConfig, "loss": LossConfig, "optim": OptimConfig}


def _section(name: str, cls: type, values: dict[str, Any] | None) -> Any:
    values = dict(values or {})
    if not isinstance(values, dict):
        raise ConfigError(f"config section {name!r} must be a mapping, got {type(values).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    if cls is ModelConfig:  # unknown model keys are hyperparameters, checked when the model is built
        extra = {k: values.pop(k) for k in list(values) if k not in fields}
        values["extra"] = {**values.get("extra", {}), **extra}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in config section {name!r}; valid keys: {sorted(fields)}"
        )
    try:
        return cls(**values)
    except TypeError as err:
        raise ConfigError(f"config section {name!r}: {err}") from None


def load_config(config: str | Path | dict[str, Any] | TrainConfig) -> TrainConfig:
    """A validated TrainConfig from a YAML path, a dict or a TrainConfig (unknown keys raise)."""
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ConfigError("a training config must be a mapping of sections (model, data, loss, optim, ...)")
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(config) - top)
    if unknown:
        raise ConfigError(f"unknown top-level config key(s) {unknown}; valid keys: {sorted(top)}")
    kwargs = {k: (_section(k, _SECTIONS[k], v) if k in _SECTIONS else v) for k, v in config.items()}
    cfg = TrainConfig(**kwargs)
    if cfg.data.train is None:
        raise ConfigError("data.train is required: an extxyz/ase.db path or a list of ase.Atoms")
    return cfg


@dataclasses.dataclass
class TrainResult:
    model_path: Path
    model: PotentialModel
    best_epoch: int
    valid_metrics: dict[str, float]
    test_metrics: dict[str, float] | None
    output: Path


def _load_splits(cfg: TrainConfig) -> tuple[list[ase.Atoms], list[ase.Atoms], list[ase.Atoms]]:
    structures = read_structures(cfg.data.train)
    if not structures:
        raise ConfigError("data.train holds no structures")
    if isinstance(cfg.data.valid, (int, float)) and not isinstance(cfg.data.valid, bool):
        tr, va = split_indices(len(structures), float(cfg.data.valid), cfg.seed)
        train, valid = [structures[i] for i in tr], [structures[i] for i in va]
    else:
        train, valid = structures, read_structures(cfg.data.valid)
    test = read_structures(cfg.data.test) if cfg.data.test is not None else []
    return train, valid, test


def _make_model(cfg: TrainConfig, train_atoms: list[ase.Atoms], train_graphs: list[Graph]) -> PotentialModel:
    """Build (or load ``init_from``) and fit E0 / scale / shift to the training labels."""
    if cfg.init_from:
        model = load_model(cfg.init_from, device=cfg.device).train()
        missing = sorted(set(species_of(train_atoms)) - set(model.species))
        if missing:
            raise UnknownElementError(
                f"training data has element(s) {missing} that init_from model "
                f"{cfg.init_from!r} lacks (its species: {model.species})"
            )
        refit_reference_energies(model, train_graphs)
        return model
    model = build_model(
        cfg.model.name,
        species=species_of(train_atoms),
        cutoff=cfg.model.cutoff,
        forces=cfg.model.forces,
        dtype=cfg.model.dtype,
        **cfg.model.extra,
    )
    e0 = fit_reference_energies(train_graphs, model.species)
    shift, scale = fit_scale_shift(train_graphs, model.species, e0)
    model.set_reference(e0, scale, shift)
    return model.to(cfg.device)


def refit_reference_energies(model: PotentialModel, graphs: Sequence[Graph]) -> None:
    """Shift E0 so the model best fits new energy labels (e.g. another level of theory).

    E0 ← E0 + argmin ‖C·ΔE0 − (E_ref − E_model)‖² with C the element counts; the network is untouched.
    """
    residual_graphs = []
    for g in graphs:
        pred = model(g, forces=False)["energy"].detach().to(g.energy.dtype)
        residual_graphs.append(dataclasses.replace(g, energy=g.energy - pred))
    delta = fit_reference_energies(residual_graphs, model.species)
    model.set_reference(model.e0.detach().cpu().numpy() + delta, float(model.scale), float(model.shift))


def _validation_loss(metrics: dict[str, float], loss: LossConfig) -> float:
    energy_mse = metrics["mse_energy_per_atom"] if loss.energy_norm == "per_atom" else metrics["mse_energy"]
    total = 0.0
    for weight, value in (
        (loss.energy, energy_mse),
        (loss.forces, metrics["mse_forces"]),
        (loss.stress, metrics["mse_stress"]),
    ):
        if weight > 0 and not math.isnan(value):
            total += weight * value
    return total


_LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def _checkpoint_state(model, ema, opt, sched, gen, state, cfg, data: dict[str, str]) -> dict[str, Any]:
    return {
        "data": data,
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generator": gen.get_state(),
        "state": dict(state),
        "config": cfg.to_dict(),
    }


def _resumable_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config as resume compares it: without the output folder, and with data given in memory
    named only as such (its structures and labels are compared by fingerprint)."""
    data = {
        k: "<in memory>" if isinstance(v, str) and v.endswith(_IN_MEMORY) else v
        for k, v in config["data"].items()
    }
    optim = dataclasses.asdict(OptimConfig()) | config["optim"]  # keys added since: their defaults
    return {k: v for k, v in config.items() if k != "output"} | {"data": data, "optim": optim}


def _restore(path: Path, model, ema, opt, sched, gen, state, cfg: TrainConfig, data: dict[str, str]) -> None:
    """Load ``last.pt``; refuse when the config or the training/validation data (structures and
    labels, also when given in memory) differ from the checkpoint's."""
    if not path.is_file():
        raise ConfigError(f"cannot resume: no checkpoint at {str(path)!r}")
    ck = torch.load(path, map_location=cfg.device, weights_only=True)
    saved, now = _resumable_config(ck["config"]), _resumable_config(cfg.to_dict())
    if saved != now:
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ConfigError(f"cannot resume {str(path)!r}: the config changed in section(s) {changed}")
    changed = sorted(k for k, v in ck.get("data", data).items() if data.get(k) != v)  # older: unchecked
    if changed:
        raise ResumeDataError(
            f"cannot resume {str(path)!r}: the {' and '.join(changed)} data differ from the checkpoint's "
            "(other structures or labels)"
        )
    model.load_state_dict(ck["model"])
    ema.load_state_dict(ck["ema"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    gen.set_state(ck["generator"])
    state.update(ck["state"])


class _MetricsCSV:
    """Append-only metrics.csv, one row per epoch; on resume rows after the checkpoint are dropped."""

    def __init__(self, path: Path, columns: list[str], keep_until_epoch: int) -> None:
        self.path, self.columns = path, columns
        rows = []
        if keep_until_epoch > 0 and path.is_file():
            with path.open() as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= keep_until_epoch]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        path.write_text(buf.getvalue())

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, self.columns, extrasaction="ignore").writerow(row)


def ema_update(decay: float):
    """EMA step for ``AveragedModel``: W_ema ← d W_ema + (1 − d) W with d = min(decay, (1+t)/(10+t))
    at the t-th update. Without the warm-up a fixed 0.99 keeps ~30 % of the random initial weights
    after 120 steps — all a 25-structure set gets in 40 epochs — and early stopping then keeps them."""
    if not 0.0 <= decay <= 1.0:
        raise ConfigError(f"optim.ema must be in [0, 1], got {decay}")

    @torch.no_grad()
    def update(ema_params: list[torch.Tensor], params: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        t = float(n_averaged)
        torch._foreach_lerp_(ema_params, params, 1.0 - min(decay, (1.0 + t) / (10.0 + t)))

    return update


def _train_epoch(model, ema, opt, loss_fn, graphs, cfg: TrainConfig, gen) -> dict[str, float]:
    model.train()
    sums: dict[str, float] = {}
    n_total = 0
    for batch in iterate_batches(graphs, cfg.optim.batch_size, shuffle=True, generator=gen):
        batch = batch.to(cfg.device)
        loss, terms = loss_fn(model, batch, gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {float(loss)} ({terms}); lower optim.lr or check the labels' units"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        opt.step()
        ema.update_parameters(model)
        n = batch.n_structures
        n_total += n
        for name, value in {"loss": float(loss.detach()), **terms}.items():
            sums[name] = sums.get(name, 0.0) + value * n
    return {f"train_{k}": v / n_total for k, v in sums.items()}


def train(config: str | Path | dict[str, Any] | TrainConfig, resume: bool = False) -> TrainResult:
    """Train a model from a config (YAML path, dict or TrainConfig); see the module docstring."""
    cfg = load_config(config)
    keep_large_blocks_in_heap()
    out = Path(cfg.output)
    ckdir = out / "checkpoints"
    if not resume and (ckdir / "last.pt").exists():
        raise ConfigError(
            f"{str(out)!r} already holds a training run; pass resume=True (--resume) to "
            "continue it, or choose another output folder"
        )
    ckdir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return _run(cfg, out, ckdir, resume)
    finally:
        log.removeHandler(handler)
        handler.close()


def _run(cfg: TrainConfig, out: Path, ckdir: Path, resume: bool) -> TrainResult:
    torch.manual_seed(cfg.seed)
    train_atoms, valid_atoms, test_atoms = _load_splits(cfg)
    keys = cfg.data.label_keys
    cutoff = load_model(cfg.init_from).cutoff if cfg.init_from else cfg.model.cutoff
    train_g = build_graphs(train_atoms, cutoff, keys)
    valid_g = build_graphs(valid_atoms, cutoff, keys) if valid_atoms else train_g
    require_labels(train_g, cfg.loss.energy > 0, cfg.loss.forces > 0, cfg.loss.stress > 0, keys)
    model = _make_model(cfg, train_atoms, train_g)
    log.info(
        "run %s: %d train / %d valid / %d test structures, model %s (%d parameters)",
        out,
        len(train_atoms),
        len(valid_atoms),
        len(test_atoms),
        model.architecture,
        sum(p.numel() for p in model.parameters()),
    )
    if cfg.loss.piwsl and not any(bool(g.forces_mask.any()) for g in train_g):
        log.warning(
            "PITC/PISC on energy-only data: validation energies cannot detect a degradation of "
            "the forces; check forces on a labelled set before trusting them"
        )

    ema = AveragedModel(model, multi_avg_fn=ema_update(cfg.optim.ema), use_buffers=False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=cfg.optim.lr_factor, patience=cfg.optim.lr_patience, min_lr=cfg.optim.min_lr
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    state = {"epoch": 0, "best_val": math.inf, "best_epoch": 0, "bad_epochs": 0}
    data = {"train": dataset_fingerprint(train_atoms, keys), "valid": dataset_fingerprint(valid_atoms, keys)}
    if resume:
        _restore(ckdir / "last.pt", model, ema, opt, sched, gen, state, cfg, data)
        log.info("resumed from epoch %d", state["epoch"])
    loss_fn = LossFunction(cfg.loss)
    terms = ["energy"] + [t for t in ("forces", "stress", "pitc", "pisc") if getattr(cfg.loss, t) > 0]
    columns = (
        ["epoch", "lr", "time_s", "train_loss"]
        + [f"train_{t}" for t in terms]
        + [
            "val_loss",
            "val_energy_per_atom_mae",
            "val_energy_per_atom_rmse",
            "val_forces_mae",
            "val_forces_rmse",
            "val_stress_mae",
        ]
    )
    metrics_csv = _MetricsCSV(out / "metrics.csv", columns, state["epoch"])

    bar = tqdm(
        range(state["epoch"] + 1, cfg.optim.max_epochs + 1),
        desc="epochs",
        disable=None,
        initial=state["epoch"],
        total=cfg.optim.max_epochs,
    )
    for epoch in bar:
        if state["bad_epochs"] >= cfg.optim.patience:
            break
        t0 = time.perf_counter()
        row = _train_epoch(model, ema, opt, loss_fn, train_g, cfg, gen)
        val = error_metrics(ema.module, valid_g, cfg.optim.batch_size)
        val_loss = _validation_loss(val, cfg.loss)
        sched.step(val_loss)
        if epoch > cfg.optim.ignore_first_epochs:  # earlier ones: never kept, no patience spent
            if val_loss < state["best_val"]:
                state.update(best_val=val_loss, best_epoch=epoch, bad_epochs=0)
                atomic_torch_save({"epoch": epoch, "model": ema.module.state_dict()}, ckdir / "best.pt")
            else:
                state["bad_epochs"] += 1
        state["epoch"] = epoch
        row.update(
            epoch=epoch,
            lr=opt.param_groups[0]["lr"],
            time_s=round(time.perf_counter() - t0, 3),
            val_loss=val_loss,
            **{f"val_{k}": v for k, v in val.items()},
        )
        metrics_csv.append(row)
        atomic_torch_save(_checkpoint_state(model, ema, opt, sched, gen, state, cfg, data), ckdir / "last.pt")
        log.info(
            "epoch %d %s",
            epoch,
            " ".join(f"{k}={v:.6g}" for k, v in row.items() if isinstance(v, float) and k != "lr"),
        )
        bar.set_postfix(val_loss=f"{val_loss:.3g}", best=state["best_epoch"])
    bar.close()
    return _finish(cfg, out, ckdir, ema.module, state, valid_g, test_atoms, train_atoms)


def _finish(cfg, out, ckdir, model, state, valid_g, test_atoms, train_atoms) -> TrainResult:
    best = torch.load(ckdir / "best.pt", map_location=cfg.device, weights_only=True)
    model.load_state_dict(best["model"])
    model.eval()
    valid_metrics = error_metrics(model, valid_g, cfg.optim.batch_size)
    test_metrics = None
    if test_atoms:
        test_metrics = error_metrics(
            model, build_graphs(test_atoms, model.cutoff, cfg.data.label_keys), cfg.optim.batch_size
        )
    provenance = {
        "config": cfg.to_dict(),
        "dataset_hash": dataset_fingerprint(train_atoms),
        "n_train": len(train_atoms),
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "valid_metrics": valid_metrics,
        "test_metrics": test_metrics,
    }
    path = save_model(model, out / "model.pt", provenance)
    log.info("best epoch %d; model written to %s", state["best_epoch"], path)
    return TrainResult(path, model, state["best_epoch"], valid_metrics, test_metrics, out)
