"""Inverse curvature-vector products ``(C + lambda I)^-1 V`` for many right-hand sides at once.

Every solver takes ``V [m, p]`` and returns ``[m, p]``; :func:`make_solver` binds one to a replica. The runner
drives every solve (``rayif.runner``): it resolves ``AutoConfig``, fits the Kronecker factors once per job and
averages LiSSA's repetitions (:func:`mean_of_repetitions`), one unit each.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from ..config import EKFACConfig, ExactConfig, SolverConfig
from ..data import Examples
from ..grads import Objective
from .exact import ExactSolver
from .kfac import KroneckerFactors
from .lissa import estimate_scale, lissa_repetition, mean_of_repetitions
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


def make_solver(objective: Objective, train: Examples, config: SolverConfig, *, chunk_size: int = 256,
                factors: KroneckerFactors | None = None) -> InverseHVP:
    """The exact or EK-FAC solver ``config`` describes, bound to a model replica and its training set.
    ``factors``: the job's Kronecker factors, which the runner fits when ``config.preconditioner`` asks for them.
    LiSSA runs one repetition per unit (:func:`lissa_repetition`), and ``AutoConfig`` is resolved by the runner
    before any unit."""
    if isinstance(config, ExactConfig):
        return ExactSolver(objective, train, config, chunk_size=chunk_size)
    if getattr(config, "preconditioner", None) is not None and factors is None:
        raise TypeError(f"{type(config).__name__}(preconditioner={config.preconditioner!r}) needs the job's "
                        "factors: the runner fits them (rayif.api.fit_factors in one process)")
    if isinstance(config, EKFACConfig):
        return EKFACSolver(factors, config)
    raise TypeError(f"make_solver binds exact or EK-FAC, not {config!r} (the runner solves CG on the driver, "
                    "its products sharded: rayif.sharded)")


__all__ = [
    "EKFACSolver",
    "ExactSolver",
    "InverseHVP",
    "KroneckerFactors",
    "SolveStats",
    "estimate_scale",
    "lissa_repetition",
    "make_solver",
    "mean_of_repetitions",
]
