"""Neighbour lists against ASE's reference implementation, for every kind of periodicity."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from pimlip_ase.errors import InvalidStructureError
from pimlip_ase.neighbors import CachedNeighborList, neighbor_list


def _pairs(i, j, shifts):
    return sorted(zip(i.tolist(), j.tolist(), map(tuple, np.asarray(shifts).tolist()), strict=True))


def _systems():
    prim = bulk("Cu", "fcc", a=3.61)  # cell vectors 2.55 Å: many images within 5 Å
    tric = bulk("Cu", "fcc", a=3.61) * (2, 1, 1)
    tric.set_cell(tric.cell[:] @ np.array([[1, 0.3, 0], [0, 1, 0.2], [0.1, 0, 1]]), scale_atoms=True)
    tric.rattle(0.1, seed=0)
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)  # pbc = (True, True, False)
    wire = bulk("Cu", "fcc", a=3.61, cubic=True) * (1, 1, 2)
    wire.pbc = (False, False, True)
    mol = molecule("CH3CH2OH")
    return {"primitive": prim, "triclinic": tric, "slab": slab, "wire": wire, "molecule": mol}


@pytest.mark.parametrize("name", list(_systems()))
@pytest.mark.parametrize("cutoff", [2.0, 5.0, 7.5])
def test_same_pairs_as_ase(name, cutoff):
    atoms = _systems()[name]
    edges, shifts = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
    i, j, s = ase_neighbor_list("ijS", atoms, cutoff)
    assert _pairs(edges[0], edges[1], shifts) == _pairs(i, j, s)


def test_cutoff_longer_than_cell_counts_images():
    prim = bulk("Cu", "fcc", a=3.61)  # one atom: all pairs are its own images
    edges, shifts = neighbor_list(prim.positions, prim.cell[:], prim.pbc, 5.2)
    assert (edges[0] == 0).all() and (edges[1] == 0).all()
    assert len(edges[0]) == 12 + 6 + 24 + 12  # first four fcc shells (2.55, 3.61, 4.42, 5.10 Å)
    assert not (shifts == 0).all(axis=1).any()


def test_nan_positions_and_degenerate_cells_are_refused():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [np.nan, 0, 0]])
    with pytest.raises(InvalidStructureError, match=r"atoms \[1\]"):
        neighbor_list(atoms.positions, np.zeros((3, 3)), np.zeros(3, bool), 3.0)
    with pytest.raises(InvalidStructureError, match="periodic but its cell vector is zero"):
        neighbor_list(np.zeros((1, 3)), np.zeros((3, 3)), np.ones(3, bool), 3.0)


def test_cached_list_is_reused_within_the_skin_and_rebuilt_beyond():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    cache = CachedNeighborList(cutoff=4.0, skin=0.4)
    args = (atoms.numbers, atoms.cell[:], atoms.pbc)
    cache.get(atoms.positions, *args)
    moved = atoms.positions.copy()
    moved[0, 0] += 0.15
    cache.get(moved, *args)
    assert cache.n_builds == 1
    moved[0, 0] += 0.1  # 0.25 Å > skin / 2 in total
    cache.get(moved, *args)
    assert cache.n_builds == 2
    cache.get(moved, atoms.numbers, atoms.cell[:] * 1.01, atoms.pbc)
    assert cache.n_builds == 3
