"""Train a small PaiNN potential for fcc Cu on EMT energies, forces and stress (about a minute).

    python examples/train_cu_emt.py            # writes runs/cu_emt/model.pt
"""

from pimlip_ase import train
from pimlip_ase.demo import cu_structures

structures = cu_structures(80, seed=0)  # rattled, strained 32-atom cells labelled by ASE's EMT
result = train({
    "model": {"name": "painn", "cutoff": 4.5, "n_features": 32, "n_interactions": 2},
    "data": {"train": structures, "valid": 0.1},
    "loss": {"energy": 1.0, "forces": 10.0, "stress": 100.0},
    "optim": {"lr": 5e-3, "batch_size": 8, "max_epochs": 40, "patience": 10},
    "output": "runs/cu_emt",
})
print("model:", result.model_path, "valid force MAE (eV/Å):", result.valid_metrics["forces_mae"])
