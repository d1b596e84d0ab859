"""Conjugate gradients for many right-hand sides, one full-data HVP pass per iteration for all of them."""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import CGConfig
from ..data import Examples
from ..errors import SolverError
from ..grads import Objective


class CGSolver:
    """Independent CG runs per column of ``V``, sharing each batched HVP."""

    def __init__(self, objective: Objective, train: Examples, config: CGConfig, *, chunk_size: int = 256):
        self.objective, self.train, self.config, self.chunk_size = objective, train, config, chunk_size

    def _apply(self, p: Tensor) -> Tensor:
        return self.objective.full_hvp(p, self.train, self.chunk_size) + self.config.damping * p

    def solve(self, vectors: Tensor) -> Tensor:
        cfg = self.config
        b = vectors
        x = torch.zeros_like(b)
        r = b.clone()
        d = r.clone()
        rs = (r * r).sum(1)
        target = cfg.tol**2 * rs
        active = rs > target
        for _ in range(cfg.max_iter):
            if not bool(active.any()):
                return x
            ad = self._apply(d)
            dad = (d * ad).sum(1)
            if bool((dad[active] <= 0).any()):
                raise SolverError(
                    "CG met non-positive curvature: H + damping*I is not positive definite; "
                    f"raise CGConfig.damping (now {cfg.damping})"
                )
            alpha = torch.where(active, rs / torch.where(active, dad, torch.ones_like(dad)), torch.zeros_like(rs))
            x = x + alpha[:, None] * d
            r = r - alpha[:, None] * ad
            rs_new = (r * r).sum(1)
            beta = torch.where(active, rs_new / torch.where(active, rs, torch.ones_like(rs)), torch.zeros_like(rs))
            d = r + beta[:, None] * d
            rs = torch.where(active, rs_new, rs)
            active = active & (rs > target)
        if bool(active.any()):
            worst = float((rs[active] / target[active].clamp_min(1e-300)).sqrt().max() * cfg.tol)
            raise SolverError(
                f"CG did not reach tol={cfg.tol} in max_iter={cfg.max_iter} iterations (worst relative "
                f"residual {worst:.2e}); raise CGConfig.max_iter or CGConfig.damping"
            )
        return x
