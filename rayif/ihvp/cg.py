"""(Preconditioned) conjugate gradients for many right-hand sides, one full-data product pass per iteration."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..config import CGConfig
from ..data import Examples
from ..errors import ConvergenceError, IndefiniteError
from ..grads import Objective
from .stats import SolveStats

_PACE = 25  # iterations over which CG's rate of convergence is measured


class CGSolver:
    """Independent CG runs per column of ``V``, sharing each batched curvature product; ``precondition``
    applies ``M^-1 ~ (C + lambda I)^-1`` (symmetric positive definite) to a ``[m, p]`` residual."""

    def __init__(self, objective: Objective, train: Examples, config: CGConfig, *, chunk_size: int = 256,
                 precondition: Callable[[Tensor], Tensor] | None = None):
        self.objective, self.train, self.config, self.chunk_size = objective, train, config, chunk_size
        self.precondition = precondition or (lambda r: r)
        self.stats = SolveStats()

    def _apply(self, p: Tensor) -> Tensor:
        return self.objective.full_hvp(p, self.train, self.chunk_size, self.config.curvature) + self.config.damping * p

    def solve(self, vectors: Tensor) -> Tensor:
        cfg = self.config
        b = vectors
        x = torch.zeros_like(b)
        r = b.clone()
        z = self.precondition(r)
        d = z.clone()
        rz = (r * z).sum(1)
        target = cfg.tol**2 * (b * b).sum(1)
        rs = (r * r).sum(1)
        active = rs > target
        bb = (b * b).sum(1).clamp_min(1e-300)
        history: list[float] = []  # the worst relative residual at each iteration
        for it in range(cfg.max_iter):
            if not bool(active.any()):
                self.stats = SolveStats.one(it, False)
                return x
            history.append(float((rs / bb).sqrt().max()))
            self._check_pace(history, it)
            ad = self._apply(d)
            dad = (d * ad).sum(1)
            if bool((dad[active] <= 0).any()):
                hint = " or use curvature='ggn'" if cfg.curvature == "hessian" else ""
                raise IndefiniteError(
                    f"CG met non-positive curvature: C + damping*I is not positive definite; raise CGConfig.damping "
                    f"(now {cfg.damping}){hint}"
                )
            alpha = torch.where(active, rz / torch.where(active, dad, torch.ones_like(dad)), torch.zeros_like(rz))
            x = x + alpha[:, None] * d
            r = r - alpha[:, None] * ad
            z = self.precondition(r)
            rz_new = (r * z).sum(1)
            beta = torch.where(active, rz_new / torch.where(active, rz, torch.ones_like(rz)), torch.zeros_like(rz))
            d = torch.where(active[:, None], z + beta[:, None] * d, d)
            rz = torch.where(active, rz_new, rz)
            rs = (r * r).sum(1)
            active = active & (rs > target)
        if bool(active.any()):
            worst = float((rs[active] / bb[active]).sqrt().max())
            raise ConvergenceError(
                f"CG did not reach tol={cfg.tol} in max_iter={cfg.max_iter} iterations (worst relative residual "
                f"{worst:.2e}); raise CGConfig.max_iter or CGConfig.damping, or use a preconditioner"
            )
        self.stats = SolveStats.one(cfg.max_iter, False)
        return x

    def _check_pace(self, history: list[float], it: int) -> None:
        """Stop early, as at the cap, when the last ``_PACE`` iterations' rate of residual reduction would need
        more than twice ``max_iter`` to reach ``tol``: a solve that cannot converge should not run to its cap
        (``solver="auto"`` then solves exactly). CG speeds up as it goes, so the projection is pessimistic only
        early; it starts after ``2 * _PACE`` iterations."""
        cfg = self.config
        if it < 2 * _PACE or it % _PACE:
            return
        then, now = min(history[-_PACE - 1 : -_PACE]), min(history[-_PACE:])
        rate = math.log(max(then, 1e-300) / max(now, 1e-300)) / _PACE
        needed = it + (math.log(now / cfg.tol) / rate if rate > 0 else math.inf)
        if needed > 2 * cfg.max_iter:
            raise ConvergenceError(
                f"CG will not reach tol={cfg.tol} in max_iter={cfg.max_iter} iterations (relative residual {now:.2e} "
                f"after {it}, falling {rate:.3g} per iteration in log: ~{needed:.0f} needed); raise CGConfig.max_iter "
                "or CGConfig.damping, or use a preconditioner")
