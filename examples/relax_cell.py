"""Relax positions and cell with ASE's FrechetCellFilter: the stress comes from the potential.

    python examples/relax_cell.py runs/cu_emt/model.pt
"""

import sys

from ase.build import bulk
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS

from pimlip_ase import PIMLIPCalculator

model = sys.argv[1] if len(sys.argv) > 1 else "runs/cu_emt/model.pt"
for name, calc in (("pimlip", PIMLIPCalculator(model)), ("EMT", EMT())):
    atoms = bulk("Cu", "fcc", a=3.56, cubic=True)  # start compressed (within the training strains)
    atoms.calc = calc
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-4)
    print(f"{name:6s} lattice constant {atoms.cell.cellpar()[0]:.4f} Å, "
          f"E = {atoms.get_potential_energy() / len(atoms):.4f} eV/atom")
