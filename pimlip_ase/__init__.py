"""pimlip_ase: machine-learned interatomic potentials with physics-informed weak supervision."""

from .calculator import PIMLIPCalculator
from .modelfile import load_model, save_model
from .models import build_model
from .training import train

__version__ = "0.1.0"
__all__ = ["PIMLIPCalculator", "build_model", "load_model", "save_model", "train"]
