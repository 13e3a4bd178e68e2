"""Workflow state in an ``ase.db`` SQLite file, and the resumable labelling driver.

One row per structure. Key-value pairs (queryable with ``ase db FILE status=failed``):

* ``status``: ``pending`` / ``done`` / ``failed``; ``error`` (text) on failed rows; ``candidate`` for
  a structure that waits for a selection (active learning) and is labelled only once promoted;
* origin: ``generator`` (str), ``iteration`` (int), ``parent`` (row id of the structure it came from);
* labels: ``REF_energy`` (eV), ``method`` (the labeller's method string), ``label_time`` (s).

Row data: ``generator_params`` (dict), ``info`` (the structure's other scalar ``atoms.info``),
``REF_forces`` (N, 3) eV/Å, ``REF_stress`` (6,) Voigt eV/Å³ and ``record`` (the labeller's
provenance, including CBS components in Eh). Every label is written in its own committed
transaction as soon as it arrives, so a killed run loses only the structures in flight and a rerun
of :func:`label_pending` labels only what is still pending.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import pickle
import sys
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import ase.db
import numpy as np
from ase import Atoms
from tqdm import tqdm

from pimlip_ase.errors import ConfigError, LabellingError, PimlipError
from pimlip_ase.keys import ENERGY, FORCES, STRESS
from pimlip_ase.workflow.label import STRUCTURE_ID, Labeller, LabelResult

#: Origin keys read from ``atoms.info`` (or given to :meth:`Store.add`).
ORIGIN_KEYS = ("generator", "generator_params", "parent", "iteration")
#: ``atoms.info`` key holding the reference method on structures from :meth:`Store.labelled_atoms`.
METHOD_KEY = "REF_method"
STATUSES = ("pending", "done", "failed")
#: Status of a generated structure that is not (yet) meant to be labelled; see :meth:`Store.promote`.
CANDIDATE = "candidate"
#: Key-value pairs the store manages itself; ``tags`` given to :meth:`Store.add` may not use them.
_RESERVED = {*ORIGIN_KEYS, "status", "error", "method", "label_time", ENERGY}


def _origin(atoms: Atoms, defaults: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Key-value pairs and data for the origin of one structure; atoms.info wins over defaults."""
    origin = {**defaults, **{k: atoms.info[k] for k in ORIGIN_KEYS if k in atoms.info}}
    kvp: dict[str, Any] = {}
    data: dict[str, Any] = {}
    if origin.get("generator") is not None:
        kvp["generator"] = str(origin["generator"])
    for key in ("parent", "iteration"):
        if origin.get(key) is not None:
            if not isinstance(origin[key], (int, np.integer)):
                raise ConfigError(
                    f"origin {key!r} must be an int, got {origin[key]!r} on {atoms.get_chemical_formula()}"
                )
            kvp[key] = int(origin[key])
    params = origin.get("generator_params")
    if params is not None:
        try:
            data["generator_params"] = json.loads(params) if isinstance(params, str) else dict(params)
        except (ValueError, TypeError) as err:
            raise ConfigError(
                f"generator_params of {atoms.get_chemical_formula()} must be a JSON object string: {err}"
            ) from err
    return kvp, data


class Store:
    """Structures, their origin and reference labels in an ``ase.db`` SQLite database at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = ase.db.connect(str(self.path), type="db")

    def add(
        self,
        atoms_list: Iterable[Atoms],
        status: str = "pending",
        tags: dict[str, str | int | float | bool] | None = None,
        **origin: Any,
    ) -> list[int]:
        """Add structures as ``pending`` (or ``candidate``) in one transaction; returns their row ids.

        ``origin`` (``generator``, ``generator_params``, ``parent``, ``iteration``) is the default
        for every structure; the same keys in a structure's ``atoms.info`` take precedence. Other
        scalar ``atoms.info`` entries are kept; labels and calculators on the input are not.
        ``tags`` are extra queryable key-value pairs for every row (e.g. ``{"role": "test"}``).
        """
        unknown = set(origin) - set(ORIGIN_KEYS)
        if unknown:
            raise ConfigError(f"unknown origin keys {sorted(unknown)}; valid: {', '.join(ORIGIN_KEYS)}")
        if status not in ("pending", CANDIDATE):
            raise ConfigError(f"new rows are 'pending' or {CANDIDATE!r}, not {status!r}")
        tags = dict(tags or {})
        if set(tags) & _RESERVED:
            raise ConfigError(f"tags {sorted(set(tags) & _RESERVED)} are managed by the store; rename them")
        skip = {*ORIGIN_KEYS, ENERGY, STRESS, STRUCTURE_ID, METHOD_KEY}
        ids = []
        with self._db:
            for atoms in atoms_list:
                kvp, data = _origin(atoms, origin)
                data["info"] = {
                    k: v
                    for k, v in atoms.info.items()
                    if k not in skip and isinstance(v, (str, int, float, bool))
                }
                try:
                    kvp = {**kvp, **tags, "status": status}
                    ids.append(self._db.write(atoms.copy(), key_value_pairs=kvp, data=data))
                except ValueError as err:  # ase.db refuses e.g. a generator name that reads as a number
                    raise ConfigError(f"cannot store {atoms.get_chemical_formula()}: {err}") from err
        return ids

    def _atoms(self, row: ase.db.row.AtomsRow) -> Atoms:
        atoms = row.toatoms()
        atoms.info.update(row.data.get("info", {}))
        atoms.info[STRUCTURE_ID] = row.id
        for key in ("generator", "parent", "iteration"):
            if key in row.key_value_pairs:
                atoms.info[key] = row.key_value_pairs[key]
        if "generator_params" in row.data:
            atoms.info["generator_params"] = json.dumps(row.data["generator_params"])
        return atoms

    def pending(self) -> list[tuple[int, Atoms]]:
        """(row id, structure) for every pending row, in id order."""
        return [(row.id, self._atoms(row)) for row in self._db.select(status="pending", sort="id")]

    def mark_done(self, row_id: int, result: LabelResult) -> None:
        """Write a label (one committed transaction): energy eV, forces eV/Å, stress Voigt eV/Å³."""
        data: dict[str, Any] = {"record": result.record}
        if result.forces is not None:
            data[FORCES] = np.asarray(result.forces, dtype=float)
        if result.stress is not None:
            data[STRESS] = np.asarray(result.stress, dtype=float)
        self._db.update(
            row_id,
            delete_keys=["error"],
            data=data,
            status="done",
            method=str(result.record["method"]),
            label_time=float(result.record.get("wall_time_s", 0.0)),
            **{ENERGY: float(result.energy)},
        )

    def mark_failed(self, row_id: int, error: str | BaseException) -> None:
        """Record that labelling a row failed, with the error text (one committed transaction)."""
        text = error.strip() if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if text in ("", "True", "False") or text.lstrip("+-").replace(".", "", 1).isdigit():
            text = f"error: {text}"  # ase.db refuses text that reads as a number or bool
        self._db.update(row_id, status="failed", error=text)

    def retry_failed(self) -> int:
        """Set every failed row back to pending (after fixing the cause); returns how many."""
        ids = [row.id for row in self._db.select(status="failed")]
        with self._db:
            for row_id in ids:
                self._db.update(row_id, delete_keys=["error"], status="pending")
        return len(ids)

    def failures(self) -> dict[int, str]:
        """Row id -> error text of every failed row."""
        return {row.id: row.key_value_pairs.get("error", "") for row in self._db.select(status="failed")}

    def labelled_atoms(self, method: str | None = None, **query: Any) -> list[Atoms]:
        """Labelled structures (optionally of one method, and matching the key-value ``query``) with
        ``info[REF_energy]`` (eV), ``arrays[REF_forces]`` (eV/Å) and ``info[REF_stress]`` (Voigt
        eV/Å³) where known, plus origin, ``info["REF_method"]`` and ``info["db_id"]``."""
        query = {**query, "status": "done", **({"method": method} if method is not None else {})}
        out = []
        for row in self._db.select(sort="id", **query):
            atoms = self._atoms(row)
            atoms.info[ENERGY] = row.key_value_pairs[ENERGY]
            atoms.info[METHOD_KEY] = row.key_value_pairs["method"]
            if FORCES in row.data:
                atoms.arrays[FORCES] = np.array(row.data[FORCES], dtype=float)
            if STRESS in row.data:
                atoms.info[STRESS] = np.array(row.data[STRESS], dtype=float)
            out.append(atoms)
        return out

    def record(self, row_id: int) -> dict[str, Any]:
        """The labeller's provenance record of a labelled row (empty if not labelled)."""
        return dict(self._db.get(id=row_id).data.get("record", {}))

    def counts(self) -> dict[str, int]:
        """Number of rows per status: ``{"pending": n, "done": n, "failed": n}``."""
        return {status: self._db.count(status=status) for status in STATUSES}

    def count(self, selection: str | None = None, **query: Any) -> int:
        """Number of rows matching an ase.db ``selection`` string (e.g. ``"iteration<=2"``) and the
        key-value ``query`` (e.g. ``status="done"``)."""
        return self._db.count(selection, **query)

    def rows(self, **query: Any) -> list[tuple[int, Atoms, dict[str, Any]]]:
        """(row id, structure, key-value pairs) of every row matching ``query``, in id order."""
        rows = self._db.select(sort="id", **query)
        return [(row.id, self._atoms(row), dict(row.key_value_pairs)) for row in rows]

    def annotate(self, values: dict[int, dict[str, str | int | float | bool]]) -> None:
        """Set key-value pairs on rows, ``{row id: {key: value}}``, in one transaction."""
        with self._db:
            for row_id, kvp in values.items():
                if set(kvp) & _RESERVED:
                    raise ConfigError(f"keys {sorted(set(kvp) & _RESERVED)} are managed by the store")
                self._db.update(row_id, **kvp)

    def promote(self, row_ids: Iterable[int]) -> None:
        """Turn ``candidate`` rows into ``pending`` ones (to be labelled), in one transaction."""
        with self._db:
            for row_id in row_ids:
                if self._db.get(id=row_id).get("status") != CANDIDATE:
                    raise ConfigError(f"row {row_id} is not a {CANDIDATE!r}; only candidates are promoted")
                self._db.update(row_id, status="pending")

    @property
    def metadata(self) -> dict[str, Any]:
        """Free-form JSON-able workflow state kept in the database (e.g. the active-learning loop)."""
        return self._db.metadata

    @metadata.setter
    def metadata(self, value: dict[str, Any]) -> None:
        self._db.metadata = value  # one committed SQL statement


# --------------------------------------------------------------------------------------------
# Driver


def _label_one(labeller: Labeller, atoms: Atoms) -> tuple[LabelResult | None, str | None]:
    """Worker task: the result, or the error text (exceptions themselves may not pickle)."""
    try:
        return labeller.label(atoms), None
    except PimlipError as err:
        return None, f"{type(err).__name__}: {err}"
    except Exception:
        return None, traceback.format_exc(limit=-4).strip()


def _submit_api(executor: Any):
    """(submit, as_completed) for a concurrent.futures Executor or a dask.distributed Client."""
    if type(executor).__module__.split(".")[0] == "distributed":
        from distributed import as_completed

        return (lambda fn, *args: executor.submit(fn, *args, pure=False)), as_completed
    return executor.submit, cf.as_completed


def _drain(
    store: Store, labeller: Labeller, executor: Any, todo: Sequence[tuple[int, Atoms]], bar: tqdm
) -> None:
    submit, as_completed = _submit_api(executor)
    futures = {submit(_label_one, labeller, atoms): row_id for row_id, atoms in todo}
    for future in as_completed(futures):
        row_id = futures[future]
        try:
            result, error = future.result()
        except cf.BrokenExecutor as err:
            raise LabellingError(
                f"a labelling worker died while labelling (row {row_id} among those in flight): {err}. "
                "Finished labels are saved; rerun to resume"
            ) from err
        except Exception as err:  # e.g. dask's KilledWorker: this row's task failed, not the run
            result, error = None, f"{type(err).__name__}: {err}"
        if result is None:
            store.mark_failed(row_id, error)
        else:
            store.mark_done(row_id, result)
        bar.update()


def _start_method() -> multiprocessing.context.BaseContext:
    """forkserver where available (workers fork from a server that has imported this package once,
    instead of each re-importing it), else spawn; never a bare fork of a threaded driver."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def process_pool(workers: int) -> cf.ProcessPoolExecutor:
    """A local pool of ``workers`` processes started with forkserver (or spawn); see :func:`_start_method`."""
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=_start_method())


def label_pending(
    store: Store, labeller: Labeller, executor: Any = None, workers: int = 1, progress: bool = True
) -> dict[str, int]:
    """Label every pending row of ``store`` with ``labeller``; returns :meth:`Store.counts`.

    Work goes through ``executor`` — any ``concurrent.futures.Executor`` or a
    ``dask.distributed.Client`` — or, by default, a process pool of ``workers`` processes started
    with forkserver/spawn (scripts calling this need an ``if __name__ == "__main__":`` guard).
    ``workers`` applies to the default pool only. Each label is committed as it arrives; a failure
    is recorded on its row (see :meth:`Store.failures`) and the run goes on.
    The progress bar shows only when ``progress`` and stderr is a terminal.
    """
    todo = store.pending()
    if not todo:
        return store.counts()
    try:
        pickle.dumps(labeller)
    except Exception as err:
        raise ConfigError(
            f"labeller {labeller!r} must be picklable to run in worker processes: {err}"
        ) from err
    quiet = not (progress and sys.stderr.isatty())
    with tqdm(total=len(todo), desc=f"labelling {labeller.method}", unit="structure", disable=quiet) as bar:
        if executor is not None:
            _drain(store, labeller, executor, todo, bar)
        else:
            pool = process_pool(workers)
            try:
                _drain(store, labeller, pool, todo, bar)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    return store.counts()
