"""Langevin MD with a trained potential, exactly as with any ASE calculator.

    python examples/md_nvt.py runs/cu_emt/model.pt
"""

import sys

from ase import units
from ase.build import bulk
from ase.io import Trajectory
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

from pimlip_ase import PIMLIPCalculator

atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
atoms.calc = PIMLIPCalculator(sys.argv[1] if len(sys.argv) > 1 else "runs/cu_emt/model.pt")
MaxwellBoltzmannDistribution(atoms, temperature_K=600)
dyn = Langevin(atoms, 2 * units.fs, temperature_K=600, friction=0.01 / units.fs)
dyn.attach(Trajectory("md.traj", "w", atoms).write, interval=10)
dyn.attach(lambda: print(f"{dyn.get_time() / units.fs:7.0f} fs  T = {atoms.get_temperature():6.1f} K  "
                         f"Epot = {atoms.get_potential_energy():.4f} eV"), interval=50)
dyn.run(500)  # 1 ps
