"""Block preconditioned conjugate gradients: every right-hand side of a solve shares one Krylov space.

Independent CG runs per test vector each rediscover the curvature's outlying eigenvalues; block CG
(O'Leary 1980) searches the span of every column's residual at once, so ``m`` right-hand sides deflate
each other's slow directions: on the digits MLP, 50 test vectors need 14 passes instead of 32 (EK-FAC-
preconditioned, tol 1e-3), and 200 need 7. Each iteration is still one full-data product pass for the
block; the block's own algebra (``[k, k]`` systems and an SVD of ``[k, p]``) is small beside it.

The search block is orthonormalised each iteration and directions its SVD finds dependent are dropped,
the breakdown-free variant of Ji & Li (2017); converged columns leave the block, so it shrinks as
columns finish. The iteration is a function of the product alone: where the product is summed in a fixed
order (``rayif.sharded`` sums row shards in shard order), 1 and N workers give the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..config import CGConfig, ExactConfig
from ..errors import ConvergenceError, IndefiniteError
from .stats import SolveStats

_PACE = 25  # iterations over which CG's rate of convergence is measured
_DROP = 1e-10  # search directions below this fraction of the block's largest singular value are dropped
_RECYCLE_BYTES = 512 * 2**20  # bound on a recycled Krylov space (directions and products, float64)
_REFINEMENTS = 4  # rounds of mixed-precision refinement; float32 products need one, rarely two


class KrylovSpace:
    """Search directions ``W`` of a job's first solve and their products ``A W``, recycled by the later ones
    (deflated CG, Saad et al. 2000): a later solve starts from its Galerkin answer in ``span(W)`` and keeps
    its own directions ``A``-conjugate to ``W``, so the curvature directions the first solve found are not
    searched again. ``limit``: directions kept, at most ``p`` (more are dependent) and at most
    ``_RECYCLE_BYTES`` of them and their products."""

    def __init__(self, limit: int, p: int):
        self.limit, self._w, self._aw = min(limit, p, _RECYCLE_BYTES // (16 * max(1, p))), [], []
        self.w: Tensor | None = None  # [K, p] once frozen, A-orthonormal
        self.aw: Tensor | None = None

    @property
    def recording(self) -> bool:
        return self.w is None and self.limit > 0

    def add(self, p: Tensor, q: Tensor) -> None:
        if self.recording and sum(len(w) for w in self._w) + len(p) <= self.limit:
            self._w.append(p.double())
            self._aw.append(q.double())

    def freeze(self) -> None:
        """End the recording. What was kept is made ``A``-orthonormal (``W A W^T = I``), dropping directions
        that rounding left dependent, and later solves use it."""
        if not self.recording:
            return
        self.limit = 0
        if not self._w:
            return
        w, aw = torch.cat(self._w), torch.cat(self._aw)
        self._w, self._aw = [], []
        g = w @ aw.T
        evals, evecs = torch.linalg.eigh((g + g.T) / 2)
        keep = evals > _DROP * evals[-1].clamp_min(0)
        if not bool(keep.any()) or float(evals[0]) < -_DROP * float(evals[-1]):  # not definite: keep nothing
            return
        t = evecs[:, keep] / evals[keep].sqrt()
        self.w, self.aw = t.T @ w, t.T @ aw

    def start(self, b: Tensor) -> tuple[Tensor, Tensor]:
        """The Galerkin answer in ``span(W)`` and its residual, ``(x0, b - A x0)``."""
        coef = self.w @ b.double().T  # [K, m]
        return (coef.T @ self.w).to(b.dtype), (b.double() - coef.T @ self.aw).to(b.dtype)

    def deflate(self, p: Tensor) -> Tensor:
        """``p`` made ``A``-conjugate to ``W``."""
        coef = self.aw @ p.double().T
        return (p.double() - coef.T @ self.w).to(p.dtype)


def refined_cg(apply: Callable[[Tensor], Tensor], apply_low: Callable[[Tensor], Tensor] | None,
               precondition: Callable[[Tensor], Tensor], b: Tensor, config: CGConfig,
               space: KrylovSpace | None = None) -> tuple[Tensor, SolveStats]:
    """:func:`block_cg` on ``apply_low`` (the same operator in lower precision), refined: each round's true
    residual ``b - apply(x)`` (one pass in the model's dtype) is solved for again until every column is below
    ``tol``. Rounding in the cheap products then moves the answer by no more than the tolerance allows.
    Without ``apply_low``, plain :func:`block_cg` on ``apply``. ``space``: as :func:`block_cg`."""
    try:
        if apply_low is None:
            return block_cg(apply, precondition, b, config, space=space)
        return _refine(apply, apply_low, precondition, b, config, space)
    finally:
        if space is not None:
            space.freeze()


def _refine(apply, apply_low, precondition, b: Tensor, config: CGConfig, space: KrylovSpace | None
            ) -> tuple[Tensor, SolveStats]:
    target = config.tol * (b * b).sum(1).double().sqrt()
    x, r, stats = torch.zeros_like(b), b, SolveStats()
    for _ in range(_REFINEMENTS):
        e, st = block_cg(apply_low, precondition, r, config, target, space)
        x = x + e
        r = b - apply(x)
        stats = SolveStats(stats.iterations + st.iterations + 1, 0, 1)
        worst = float(((r * r).sum(1).double().sqrt() / target.clamp_min(1e-300)).max())
        if worst <= 1:
            return x, stats
    raise ConvergenceError(f"CG with float32 products did not reach tol={config.tol} in {_REFINEMENTS} rounds of "
                           f"refinement (residual {worst:.2g}x the tolerance); set CGConfig(mixed_precision=False)")


def block_cg(apply: Callable[[Tensor], Tensor], precondition: Callable[[Tensor], Tensor], b: Tensor,
             config: CGConfig, target: Tensor | None = None, space: KrylovSpace | None = None
             ) -> tuple[Tensor, SolveStats]:
    """``(C + lambda I)^-1 b`` for every row of ``b [m, p]``: ``apply`` is ``v [k, p] -> (C + lambda I) v``
    (one pass over the training data), ``precondition`` ``r [k, p] -> M^-1 r`` (symmetric positive definite).
    A column stops when its residual's norm is below ``target [m]`` (default ``tol * ||b||``). ``space``: a
    :class:`KrylovSpace` this solve records into (the job's first) or starts from and deflates with (the
    later ones). Returns the solution and its stats (``iterations``: product passes)."""
    cfg = config
    bb = (b * b).sum(1).double().clamp_min(1e-300)
    tt = bb * cfg.tol**2 if target is None else target.double() ** 2
    deflate = space is not None and space.w is not None
    record = space is not None and space.recording
    x, r = space.start(b) if deflate else (torch.zeros_like(b), b.clone())
    project = space.deflate if deflate else (lambda v: v)
    active = ((r * r).sum(1).double() > tt).nonzero().flatten()
    p = _orthonormal(project(precondition(r[active]))) if len(active) else None
    history: list[float] = []  # the worst relative residual at each iteration
    for it in range(cfg.max_iter):
        if not len(active):
            return x, SolveStats.one(it, False)
        worst = float(((r[active] * r[active]).sum(1).double() / bb[active]).sqrt().max())
        history.append(worst)
        _check_pace(history, it, cfg)
        q = apply(p)
        if record:
            space.add(p, q)
        pq = (p.double() @ q.double().T)
        pq = (pq + pq.T) / 2
        chol, info = torch.linalg.cholesky_ex(pq)
        if int(info):
            hint = " or use curvature='ggn'" if cfg.curvature == "hessian" else ""
            raise IndefiniteError(f"CG met non-positive curvature: C + damping*I is not positive definite; raise "
                                  f"CGConfig.damping (now {cfg.damping}){hint}")
        alpha = torch.cholesky_solve(p.double() @ r[active].double().T, chol)  # [k, a]
        x[active] += (alpha.T @ p.double()).to(x.dtype)
        r[active] -= (alpha.T @ q.double()).to(r.dtype)
        if deflate:  # rounding in q leaves r a part in span(W) that directions kept out of it cannot reduce
            dx, r[active] = space.start(r[active])
            x[active] += dx
        still = (r[active] * r[active]).sum(1).double() > tt[active]
        active = active[still]
        if not len(active):
            continue
        z = precondition(r[active])
        beta = -torch.cholesky_solve(q.double() @ z.double().T, chol)  # [k, a]
        p = _orthonormal(project(z + (beta.T @ p.double()).to(z.dtype)))
    if len(active):
        worst = float(((r[active] * r[active]).sum(1).double() / bb[active]).sqrt().max())
        raise ConvergenceError(
            f"CG did not reach tol={cfg.tol} in max_iter={cfg.max_iter} iterations (worst relative residual "
            f"{worst:.2e}); raise CGConfig.max_iter or CGConfig.damping, or use a preconditioner")
    return x, SolveStats.one(cfg.max_iter, False)


def _orthonormal(z: Tensor) -> Tensor:
    """Orthonormal rows spanning ``z [a, p]``'s, dependent directions dropped (``[k <= a, p]``)."""
    u, s, vh = torch.linalg.svd(z.double(), full_matrices=False)
    keep = s > _DROP * s[0] if len(s) and float(s[0]) > 0 else s > 0
    return vh[keep].to(z.dtype)


def _check_pace(history: list[float], it: int, cfg: CGConfig) -> None:
    """Stop early, as at the cap, when the last ``_PACE`` iterations' rate of residual reduction would need
    more than twice ``max_iter`` to reach ``tol``: a solve that cannot converge should not run to its cap
    (``solver="auto"`` then solves exactly). CG speeds up as it goes, so the projection is pessimistic only
    early; it starts after ``2 * _PACE`` iterations."""
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


def low_precision(config: CGConfig | ExactConfig, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype of the curvature products of a ``dtype`` model under ``config`` (``None``: its own): CG's
    iterations and the explicit matrix's build share the rule."""
    return torch.float32 if config.mixed_precision and dtype == torch.float64 else None

