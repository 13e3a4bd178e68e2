"""Names of the labels and results, in one place.

Labels live on ``ase.Atoms`` under the same keys MACE uses, so extxyz files move between the two:
``atoms.info[ENERGY]`` (eV), ``atoms.arrays[FORCES]`` (eV/Å, shape (N, 3)) and ``atoms.info[STRESS]``
(eV/Å³, Voigt (6,) or full (3, 3)). A missing key means "unknown", never zero.
"""

ENERGY = "REF_energy"
FORCES = "REF_forces"
STRESS = "REF_stress"

#: Properties the calculator serves, in ASE's names.
CALC_PROPERTIES = ("energy", "free_energy", "forces", "stress", "energies")
