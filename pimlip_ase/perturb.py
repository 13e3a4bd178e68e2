"""Zero-mean random displacements, shared by the PIWSL losses and the structure generators.

A draw is ``δ = ε · (u − mean_atoms(u))`` per structure, with ``u`` i.i.d. per atom and Cartesian
component, either uniform on [−1, 1] or standard normal. Removing the per-structure mean means a
draw never translates a structure as a whole.
"""

from __future__ import annotations

import ase
import numpy as np
import torch

from .errors import ConfigError

DISTRIBUTIONS = ("uniform", "gaussian")


def zero_mean_displacements(
    batch: torch.Tensor,
    n_structures: int,
    epsilon: float | torch.Tensor,
    distribution: str = "uniform",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Draw displacements for a batch of structures.

    Args:
        batch: (N,) index of the structure each atom belongs to.
        n_structures: number of structures B in the batch.
        epsilon: amplitude ε in Å, a float or a (B,) tensor (one ε per structure).
        distribution: "uniform" (u ~ U(−1, 1)) or "gaussian" (u ~ N(0, 1)).
        generator: torch RNG to draw from (makes the draws reproducible).
        dtype: dtype of the result.

    Returns:
        (N, 3) displacements in Å, with zero mean over the atoms of each structure.
    """
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"unknown displacement distribution {distribution!r}; use one of {DISTRIBUTIONS}")
    n = batch.shape[0]
    device = batch.device
    if distribution == "uniform":
        u = torch.rand((n, 3), generator=generator, dtype=dtype, device="cpu").to(device) * 2.0 - 1.0
    else:
        u = torch.randn((n, 3), generator=generator, dtype=dtype, device="cpu").to(device)
    counts = torch.bincount(batch, minlength=n_structures).to(dtype).clamp(min=1).unsqueeze(-1)
    mean = torch.zeros((n_structures, 3), dtype=dtype, device=device).index_add_(0, batch, u) / counts
    eps = torch.as_tensor(epsilon, dtype=dtype, device=device)
    eps_atom = eps[batch].unsqueeze(-1) if eps.ndim == 1 else eps
    return eps_atom * (u - mean[batch])


def rattle(
    atoms: ase.Atoms,
    epsilon: float,
    distribution: str = "uniform",
    seed: int | np.random.Generator | None = None,
) -> ase.Atoms:
    """Return a copy of ``atoms`` displaced by one zero-mean draw of amplitude ``epsilon`` (Å).

    For ``distribution="gaussian"`` ``epsilon`` is the standard deviation per component (Å).
    Labels on the copy are dropped: they belonged to the undisplaced structure.
    """
    if isinstance(seed, np.random.Generator):
        seed = int(seed.integers(2**62))
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    batch = torch.zeros(len(atoms), dtype=torch.long)
    delta = zero_mean_displacements(batch, 1, epsilon, distribution, gen).numpy()
    new = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions + delta, cell=atoms.cell, pbc=atoms.pbc)
    return new
