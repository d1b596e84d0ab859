"""Errors rayif raises on bad input or a failed estimate: each says what is wrong and what to change."""

from __future__ import annotations


class RayifError(ValueError):
    """Base class of every error rayif raises for bad input or a failed estimate."""


class NonFiniteError(RayifError):
    """A loss or gradient is NaN or infinite; the message names the offending example ids."""


class LissaDivergenceError(RayifError):
    """The LiSSA recursion blew up; the message says which knob (``scale`` or ``damping``) to change."""


class SolverError(RayifError):
    """An inverse-HVP solver could not produce a trustworthy answer (indefinite Hessian, no convergence)."""


class IndefiniteError(SolverError):
    """The curvature plus damping is not positive definite: the point is not a minimum of the damped objective.
    ``solver="auto"`` answers with the Gauss-Newton curvature instead; an explicit ``curvature="hessian"`` stops."""


class ConvergenceError(SolverError):
    """An iterative solver stopped at its iteration cap before its tolerance; ``solver="auto"`` then solves
    exactly where the explicit matrix fits."""
