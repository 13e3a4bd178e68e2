"""The ase.db store and the resumable labelling driver (kill -9 mid-run, failures, dask)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from ase import units
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from pimlip_ase.errors import ConfigError, LabellingError
from pimlip_ase.keys import ENERGY, FORCES, STRESS
from pimlip_ase.workflow.label import STRUCTURE_ID, ASELabeller, LabelResult
from pimlip_ase.workflow.store import Store, label_pending


def _cells(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n):
        atoms = bulk("Cu", cubic=True)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        cells.append(atoms)
    return cells


def _emt_energy(atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = EMT()
    return atoms.get_potential_energy()


class FailOnTagged:
    """EMT, except structures with ``info["bad"]`` raise LabellingError like a failed SCF."""

    method = "emt"

    def label(self, atoms):
        if atoms.info.get("bad"):
            raise LabellingError(f"SCF did not converge for row {atoms.info[STRUCTURE_ID]}")
        return ASELabeller("emt").label(atoms)


def test_add_keeps_origin_and_info(tmp_path):
    store = Store(tmp_path / "s.db")
    first = molecule("H2O")
    first.info.update(generator="md", generator_params='{"T": 300}', config_type="liquid")
    first.calc = EMT()  # a generator's calculator must not leak in as a label
    second = molecule("NH3")
    ids = store.add([first, second], generator="rattle", iteration=2, parent=None)
    assert store.counts() == {"pending": 2, "done": 0, "failed": 0}
    (id1, a1), (id2, a2) = store.pending()
    assert (id1, id2) == tuple(ids) and a1.info[STRUCTURE_ID] == id1
    assert a1.info["generator"] == "md" and json.loads(a1.info["generator_params"]) == {"T": 300}
    assert a1.info["config_type"] == "liquid" and a1.info["iteration"] == 2 and a1.calc is None
    assert a2.info["generator"] == "rattle" and "parent" not in a2.info
    child = store.add(_cells(1), generator="rattle", parent=id1, iteration=3)
    assert store.pending()[-1][1].info["parent"] == id1 and child == [3]
    with pytest.raises(ConfigError, match="valid: generator, generator_params, parent, iteration"):
        store.add(_cells(1), origin="x")
    with pytest.raises(ConfigError, match="JSON"):
        store.add(_cells(1), generator_params="{T: 300")


def test_labels_round_trip_under_the_keys_module_names(tmp_path):
    store = Store(tmp_path / "s.db")
    [row] = store.add(_cells(1))
    forces, stress = np.arange(12.0).reshape(4, 3), np.arange(6.0)
    record = {"method": "pyscf-test", "wall_time_s": 1.5, "components": {"mp2/cc-pvdz": {"total": -1.0}}}
    store.mark_done(row, LabelResult(-3.25, forces, stress, record))
    [atoms] = store.labelled_atoms()
    assert atoms.info[ENERGY] == -3.25 and atoms.info["REF_method"] == "pyscf-test"
    np.testing.assert_array_equal(atoms.arrays[FORCES], forces)
    np.testing.assert_array_equal(atoms.info[STRESS], stress)
    assert store.record(row) == record
    assert store.labelled_atoms(method="emt") == []
    [energy_only] = store.add(_cells(1))
    store.mark_done(energy_only, LabelResult(-1.0, None, None, {"method": "emt"}))
    [atoms] = store.labelled_atoms(method="emt")
    assert FORCES not in atoms.arrays and STRESS not in atoms.info  # missing means unknown


def test_failures_are_recorded_and_the_run_goes_on(tmp_path):
    store = Store(tmp_path / "s.db")
    cells = _cells(6)
    cells[2].info["bad"] = True
    store.add(cells)
    with ThreadPoolExecutor(2) as pool:
        counts = label_pending(store, FailOnTagged(), executor=pool, progress=False)
    assert counts == {"pending": 0, "done": 5, "failed": 1}
    assert store.failures() == {3: "LabellingError: SCF did not converge for row 3"}
    labelled = store.labelled_atoms()
    assert [a.info[STRUCTURE_ID] for a in labelled] == [1, 2, 4, 5, 6]
    for atoms in labelled:
        assert atoms.info[ENERGY] == pytest.approx(_emt_energy(atoms), abs=1e-12)
    assert store.retry_failed() == 1 and store.counts()["pending"] == 1
    store.mark_failed(3, "7")  # text that reads as a number is still stored as text
    assert store.failures() == {3: "error: 7"}
    store.retry_failed()
    with pytest.raises(ConfigError, match="picklable"):
        label_pending(store, _Unpicklable())


class _Unpicklable:
    method = "none"

    def __init__(self):
        self.handle = lambda: None

    def label(self, atoms):
        raise AssertionError("never called")


_DRIVER = textwrap.dedent(
    """
    import sys, time
    from pimlip_ase.workflow.label import STRUCTURE_ID, ASELabeller
    from pimlip_ase.workflow.store import Store, label_pending

    class SlowEMT:
        method = "emt"

        def __init__(self, log, tag, delay):
            self.log, self.tag, self.delay = log, tag, delay

        def label(self, atoms):
            time.sleep(self.delay)
            result = ASELabeller("emt").label(atoms)
            with open(self.log, "a") as fh:
                fh.write(f"{self.tag} {atoms.info[STRUCTURE_ID]}\\n")
            return result

    if __name__ == "__main__":
        db, log, tag, delay = sys.argv[1:]
        label_pending(Store(db), SlowEMT(log, tag, float(delay)), workers=2, progress=False)
    """
)


def _run_driver(tmp_path, tag: str, delay: float) -> subprocess.Popen:
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(script), str(tmp_path / "s.db"), str(tmp_path / "log"), tag, str(delay)]
    return subprocess.Popen(args, env=env, start_new_session=True)


def test_sigkill_midway_then_restart_labels_each_structure_once(tmp_path):
    store = Store(tmp_path / "s.db")
    store.add(_cells(20))
    first = _run_driver(tmp_path, "first", delay=0.3)
    deadline = time.monotonic() + 60
    while store.counts()["done"] < 4 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    os.killpg(
        first.pid, signal.SIGKILL
    )  # the driver, its forkserver and its workers, as a batch system would
    first.wait()
    finished = {a.info[STRUCTURE_ID] for a in store.labelled_atoms()}
    assert 4 <= len(finished) < 20 and store.counts()["failed"] == 0

    second = _run_driver(tmp_path, "second", delay=0.0)
    assert second.wait(timeout=120) == 0
    assert store.counts() == {"pending": 0, "done": 20, "failed": 0}
    relabelled = [
        int(line.split()[1]) for line in (tmp_path / "log").read_text().split("\n") if "second" in line
    ]
    assert sorted(relabelled) == sorted(set(range(1, 21)) - finished)  # nothing finished was redone
    labelled = store.labelled_atoms()
    assert sorted(a.info[STRUCTURE_ID] for a in labelled) == list(range(1, 21))
    for atoms in labelled:
        assert atoms.info[ENERGY] == pytest.approx(_emt_energy(atoms), abs=1e-12)


@pytest.mark.dask
def test_dask_client_gives_identical_labels(tmp_path):
    distributed = pytest.importorskip("distributed")
    cells = _cells(5, seed=1)
    reference, through_dask = Store(tmp_path / "ref.db"), Store(tmp_path / "dask.db")
    reference.add(cells)
    through_dask.add(cells)
    with ThreadPoolExecutor(1) as pool:
        label_pending(reference, ASELabeller("emt"), executor=pool, progress=False)
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None, silence_logs=40
    )
    with cluster, distributed.Client(cluster) as client:
        assert label_pending(through_dask, ASELabeller("emt"), executor=client, progress=False)["done"] == 5
    for a, b in zip(reference.labelled_atoms(), through_dask.labelled_atoms(), strict=True):
        assert a.info[ENERGY] == b.info[ENERGY]
        np.testing.assert_array_equal(a.arrays[FORCES], b.arrays[FORCES])
        np.testing.assert_array_equal(a.info[STRESS], b.info[STRESS])


@pytest.mark.cbs
def test_pyscf_labels_and_failures_through_the_store(tmp_path):
    pytest.importorskip("pyscf")
    from pimlip_ase.workflow.label import make_labeller

    good, bad = molecule("H2O"), molecule("H2O")
    bad.info["spin"] = 1  # inconsistent with 10 electrons: this structure fails, the other is labelled
    store = Store(tmp_path / "s.db")
    store.add([good, bad], generator="test")
    with ThreadPoolExecutor(1) as pool:
        counts = label_pending(store, make_labeller("pyscf:mp2/sto-3g"), executor=pool, progress=False)
    assert counts == {"pending": 0, "done": 1, "failed": 1}
    assert "LabellingError: cannot set up H2O (row 2) in sto-3g" in store.failures()[2]
    [atoms] = store.labelled_atoms(method="mp2/sto-3g")
    components = store.record(1)["components"]
    assert set(components) == {"hf/sto-3g", "mp2/sto-3g"}
    assert atoms.info[ENERGY] == pytest.approx(components["mp2/sto-3g"]["total"] * units.Hartree, abs=1e-9)
    assert atoms.arrays[FORCES].shape == (3, 3)


def test_candidates_wait_for_promotion_and_carry_tags_and_notes(tmp_path):
    store = Store(tmp_path / "s.db")
    test_ids = store.add(_cells(2), tags={"role": "test"})
    cand = store.add(_cells(3, seed=1), status="candidate", iteration=1, tags={"role": "train"})
    assert store.counts() == {"pending": 2, "done": 0, "failed": 0} and store.count(status="candidate") == 3
    store.annotate({cand[0]: {"force_std": 0.3, "selected": True}, cand[1]: {"force_std": 0.01}})
    store.promote([cand[0]])
    with ThreadPoolExecutor(1) as pool:
        label_pending(store, ASELabeller("emt"), executor=pool, progress=False)
    assert [a.info[STRUCTURE_ID] for a in store.labelled_atoms(role="train")] == [cand[0]]
    assert [a.info[STRUCTURE_ID] for a in store.labelled_atoms(role="test")] == test_ids
    [(row, _, kvp)] = store.rows(iteration=1, force_std=0.01)
    assert row == cand[1] and kvp["status"] == "candidate" and kvp["role"] == "train"
    with pytest.raises(ConfigError, match="only candidates are promoted"):
        store.promote([cand[0]])
    with pytest.raises(ConfigError, match=r"\['status'\] are managed by the store"):
        store.add(_cells(1), tags={"status": "done"})
    with pytest.raises(ConfigError, match="'pending' or 'candidate'"):
        store.add(_cells(1), status="done")
    store.metadata = {"loop": {"iteration": 2}}
    assert Store(tmp_path / "s.db").metadata == {"loop": {"iteration": 2}}
