"""Inverse curvature-vector products ``(C + lambda I)^-1 V`` for many right-hand sides at once.

Every solver takes ``V [m, p]`` and returns ``[m, p]``; :func:`make_solver` picks one from its config.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from ..config import AutoConfig, CGConfig, EKFACConfig, ExactConfig, LissaConfig, SolverConfig
from ..data import Examples
from ..grads import Objective
from .cg import CGSolver
from .exact import ExactSolver
from .kfac import KroneckerFactors, fit_factors, preconditioner
from .lissa import LissaSolver, estimate_scale, lissa_repetition
from .stats import SolveStats


class InverseHVP(Protocol):
    stats: SolveStats

    def solve(self, vectors: Tensor) -> Tensor:
        """``[m, p] -> [m, p]``: ``(C + lambda I)^-1`` applied to each row."""
        ...


class EKFACSolver:
    """``s_test = P v``: the damped inverse of the Kronecker-factored curvature alone."""

    def __init__(self, factors: KroneckerFactors, config: EKFACConfig):
        self.factors, self.config, self.stats = factors, config, SolveStats()

    def solve(self, vectors: Tensor) -> Tensor:
        return self.factors.inverse(vectors, self.config.damping)


def make_solver(
    objective: Objective, train: Examples, config: SolverConfig, *, seed: int = 0, chunk_size: int = 256,
    factors: KroneckerFactors | None = None, scale: float | None = None,
) -> InverseHVP:
    """The solver ``config`` describes, bound to a model replica and its training set. A config that needs
    Kronecker factors and gets none fits them here, in this process."""
    if isinstance(config, AutoConfig):
        config, _ = config.choose(len(train), objective.num_params)
    if isinstance(config, ExactConfig):
        return ExactSolver(objective, train, config, chunk_size=chunk_size)
    kind = config.preconditioner
    if kind is not None and factors is None:
        factors = fit_factors(objective, train, kind, chunk_size)
    precondition = preconditioner(factors, config)
    if isinstance(config, EKFACConfig):
        return EKFACSolver(factors, config)
    if isinstance(config, CGConfig):
        return CGSolver(objective, train, config, chunk_size=chunk_size, precondition=precondition)
    if isinstance(config, LissaConfig):
        return LissaSolver(objective, train, config, seed=seed, scale=scale, precondition=precondition)
    raise TypeError(f"not a solver config: {config!r}")


__all__ = [
    "CGSolver",
    "EKFACSolver",
    "ExactSolver",
    "InverseHVP",
    "KroneckerFactors",
    "LissaSolver",
    "SolveStats",
    "estimate_scale",
    "fit_factors",
    "lissa_repetition",
    "make_solver",
]
