"""Structures shared by the benchmark scripts."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import bulk

_CC, _CO, _CH, _OH = 1.53, 1.43, 1.09, 0.96
_ANGLE = np.deg2rad(111.0)


def hexanol() -> Atoms:
    """1-hexanol, C6H13OH (21 atoms): an all-trans zig-zag chain with tetrahedral hydrogens.

    An idealised geometry (no optimisation): it is used for timing, where only atom and pair counts
    matter, and it has no atoms closer than 0.9 Å.
    """
    heavy = ["C"] * 6 + ["O"]
    bonds = [_CC] * 5 + [_CO]
    half = 0.5 * (np.pi - _ANGLE)
    backbone = [np.zeros(3)]
    for k, b in enumerate(bonds):
        sign = 1 if k % 2 == 0 else -1
        backbone.append(backbone[-1] + b * np.array([np.cos(half), sign * np.sin(half), 0.0]))
    backbone = np.array(backbone)
    symbols, positions = list(heavy), list(backbone)
    for k, centre in enumerate(backbone[:-1]):  # carbons: CH3 at the end, CH2 elsewhere
        # the terminal carbon continues the zig-zag with a virtual neighbour, where its third H sits
        prev = backbone[k - 1] if k > 0 else centre - (backbone[2] - backbone[1])
        nxt = backbone[k + 1]
        u = (centre - prev) / np.linalg.norm(centre - prev) + (centre - nxt) / np.linalg.norm(centre - nxt)
        u /= np.linalg.norm(u)
        z = np.array([0.0, 0.0, 1.0])
        hs = [u * np.cos(0.955) + z * np.sin(0.955), u * np.cos(0.955) - z * np.sin(0.955)]
        if k == 0:
            hs.append(prev - centre)
        for h in hs:
            symbols.append("H")
            positions.append(centre + _CH * h / np.linalg.norm(h))
    symbols.append("H")  # the hydroxyl H continues the zig-zag
    positions.append(backbone[-1] + _OH * np.array([np.cos(half), np.sin(half), 0.0]))
    return Atoms(symbols, positions=positions)


def cu_fcc(repeat: tuple[int, int, int], rattle: float = 0.02, seed: int = 0) -> Atoms:
    """Conventional fcc Cu (a = 3.61 Å) repeated, slightly rattled."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * repeat
    atoms.rattle(rattle, seed=seed)
    return atoms


#: The sizes of calculator_speed.py: name -> builder.
SPEED_SYSTEMS = {
    "hexanol (21)": hexanol,
    "Cu fcc 108": lambda: cu_fcc((3, 3, 3)),
    "Cu fcc 1000": lambda: cu_fcc((5, 5, 10)),
    "Cu fcc 10000": lambda: cu_fcc((10, 10, 25)),
}
