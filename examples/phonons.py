"""Phonons with phonopy through the calculator, compared with EMT on the same mesh.

    python examples/phonons.py runs/cu_emt/model.pt
"""

import sys

from ase.build import bulk
from ase.calculators.emt import EMT

from pimlip_ase import PIMLIPCalculator
from pimlip_ase.workflow.stability import phonons

model = sys.argv[1] if len(sys.argv) > 1 else "runs/cu_emt/model.pt"
result = phonons(bulk("Cu", "fcc", a=3.61), PIMLIPCalculator(model), supercell_matrix=[3, 3, 3],
                 mesh=(12, 12, 12), reference_calc=EMT())
print(f"imaginary modes: {result.has_imaginary} (lowest {result.min_frequency_THz:.3f} THz)")
print(f"acoustic sum rule at Γ satisfied: {result.asr_satisfied}")
print(f"frequency MAE vs EMT on the mesh: {result.mae_THz:.3f} THz")
