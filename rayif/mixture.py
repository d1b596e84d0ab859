"""A synthetic 10-class Gaussian mixture in 64 dimensions: training sets of any size for the benchmarks.

Same shapes as the digits data, so the digits models (``rayif.digits.make_model``) train on it unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from .digits import DigitsSplit, digits_task
from .task import Task


def load_mixture_split(n_train: int = 100_000, n_test: int = 1000, seed: int = 0, separation: float = 0.35,
                       dtype: np.dtype = np.float64) -> DigitsSplit:
    """``n_train + n_test`` points: class means drawn once (``N(0, separation^2)`` per coordinate), unit noise."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(10, 64)) * separation
    y = rng.integers(0, 10, n_train + n_test)
    x = (means[y] + rng.normal(size=(len(y), 64))).astype(dtype)
    return DigitsSplit(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def mixture_task(n_train: int = 100_000, n_test: int = 1000, *, hidden: int = 64, weight_decay: float = 1e-2,
                 seed: int = 0, dtype: torch.dtype = torch.float64, max_iter: int = 100) -> tuple[Task, DigitsSplit]:
    """A 64-``hidden``-10 tanh MLP trained by ``max_iter`` full-batch L-BFGS steps on the mixture (close to
    its optimum: influence is measured against exact influence at the same weights either way)."""
    split = load_mixture_split(n_train, n_test, seed, dtype=np.float64 if dtype == torch.float64 else np.float32)
    return digits_task("mlp", split, weight_decay=weight_decay, hidden=hidden, seed=seed, dtype=dtype,
                       max_iter=max_iter)
