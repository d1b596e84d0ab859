"""Inverse Hessian-vector products ``H^-1 V`` for many right-hand sides at once.

Every solver takes ``V [m, p]`` and returns ``[m, p]``; :func:`make_solver` picks one from its config.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from ..config import CGConfig, ExactConfig, LissaConfig, SolverConfig
from ..data import Examples
from ..grads import Objective
from .cg import CGSolver
from .exact import ExactSolver
from .lissa import LissaSolver, estimate_scale, lissa_repetition


class InverseHVP(Protocol):
    def solve(self, vectors: Tensor) -> Tensor:
        """``[m, p] -> [m, p]``: ``(H + lambda I)^-1`` applied to each row."""
        ...


def make_solver(
    objective: Objective, train: Examples, config: SolverConfig, *, seed: int = 0, chunk_size: int = 256
) -> InverseHVP:
    """The solver ``config`` describes, bound to a model replica and its training set."""
    if isinstance(config, ExactConfig):
        return ExactSolver(objective, train, config, chunk_size=chunk_size)
    if isinstance(config, CGConfig):
        return CGSolver(objective, train, config, chunk_size=chunk_size)
    if isinstance(config, LissaConfig):
        return LissaSolver(objective, train, config, seed=seed)
    raise TypeError(f"not a solver config: {config!r}")


__all__ = [
    "CGSolver",
    "ExactSolver",
    "InverseHVP",
    "LissaSolver",
    "estimate_scale",
    "lissa_repetition",
    "make_solver",
]
