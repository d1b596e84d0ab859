"""LiSSA (Agarwal et al. 2017; FastIF's s_test): a stochastic, optionally preconditioned, fixed-point recursion.

``x <- x + P (v - (C_B + lambda I) x) / scale`` with a fresh batch ``B`` each step converges (in mean) to
``(C + lambda I)^-1 v``; without ``P`` it is FastIF's ``h <- v + (1 - lambda/scale) h - C_B h / scale``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..config import LissaConfig
from ..data import Examples
from ..errors import LissaDivergenceError
from ..grads import Objective
from ..progress import Progress
from .stats import SolveStats

log = logging.getLogger("rayif")

_SCALE_STREAM = 2**40  # seed-sequence key of the scale estimate, apart from every repetition's key
_POWER_ITERATIONS = 30
_GROWTH_WINDOW = 6  # consecutive divergence checks over which a norm that keeps growing means divergence
_BLOCKS = 8  # blocks per averaging stage, for the standard error of its average
_PROBES = 256  # training examples whose influence the convergence test watches

Precondition = Callable[[Tensor], Tensor]


def repetition_rng(seed: int, repetition: int) -> np.random.Generator:
    """The generator of repetition ``t``: a function of ``(seed, t)`` alone, whatever runs it."""
    return np.random.default_rng([seed, repetition])


def _identity(x: Tensor) -> Tensor:
    return x


def estimate_scale(objective: Objective, train: Examples, config: LissaConfig, seed: int = 0,
                   precondition: Precondition | None = None) -> float:
    """A ``scale`` above the largest |eigenvalue| of ``P (C_B + lambda I)`` for the batches the recursion meets.

    Power iteration on ``config.scale_batches`` random batches of ``batch_size`` and on up to 1024 examples
    together; the largest estimate times ``scale_safety``.
    """
    pre = precondition or _identity
    rng = np.random.default_rng([seed, _SCALE_STREAM])
    n, k, b = len(train), config.scale_batches, config.batch_size
    idx = rng.integers(0, n, size=(k, b))
    batches = [train.take(idx[i]).to(objective.device).batch for i in range(k)]
    sample = train.take(rng.choice(n, size=min(n, 1024), replace=False))
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    v = torch.randn(k + 1, objective.num_params, generator=gen, dtype=objective.dtype).to(objective.device)
    v = v / v.norm(dim=1, keepdim=True)
    lam = torch.zeros(k + 1, dtype=objective.dtype, device=objective.device)
    cur = config.curvature
    for _ in range(_POWER_ITERATIONS):
        hv = torch.cat([
            *(objective.product(v[i : i + 1], batches[i], cur) for i in range(k)),
            objective.full_hvp(v[k:], sample, chunk_size=256, curvature=cur),
        ]) + config.damping * v
        hv = pre(hv)
        lam = hv.norm(dim=1)  # v has unit norm: at convergence, the dominant |eigenvalue|
        v = hv / lam[:, None].clamp_min(torch.finfo(objective.dtype).tiny)
    top = float(lam.max())
    scale = config.scale_safety * top
    log.info("LiSSA scale %.4g (largest |eigenvalue| estimate %.4g x %.2f)", scale, top, config.scale_safety)
    return scale if scale > 0 else 1.0


def lissa_repetition(
    objective: Objective,
    train: Examples,
    vectors: Tensor,
    config: LissaConfig,
    *,
    scale: float,
    seed: int,
    repetition: int,
    precondition: Precondition | None = None,
    progress: bool | None = False,
) -> tuple[Tensor, SolveStats]:
    """One LiSSA repetition for every row of ``vectors [m, p]``: its estimate of ``(C + lambda I)^-1 v``.

    All rows share the same sampled batches, so the batched result equals ``m`` single-row runs with the
    same ``(seed, repetition)`` (though a batch stops when its slowest row has converged). ``progress``: a
    bar over the ``depth`` steps (see :class:`rayif.progress.Progress`).
    """
    with Progress(config.depth, f"LiSSA repetition {repetition}", "step", enabled=progress) as bar:
        return _repetition(objective, train, vectors, config, scale, seed, repetition, precondition, bar)


def _repetition(objective: Objective, train: Examples, vectors: Tensor, config: LissaConfig, scale: float,
                seed: int, repetition: int, precondition: Precondition | None, bar: Progress
                ) -> tuple[Tensor, SolveStats]:
    pre = precondition or _identity
    lam, n, b, every = config.damping, len(train), config.batch_size, config.check_every
    rng = repetition_rng(seed, repetition)
    batches = rng.integers(0, n, size=(config.depth, b))
    v = vectors.to(objective.device)
    x = pre(v) / scale
    history: list[Tensor] = [x.norm(dim=1)]
    # ||(C + lambda I)^-1 v|| <= ||v|| / (lambda + weight decay) when C + lambda I is positive definite: an
    # iterate 10x past that bound is divergence for sure, however slowly it grows
    floor = lam + objective.task.weight_decay
    bound = 10 * v.norm(dim=1) / floor if floor > 0 else torch.full_like(history[0], float("inf"))
    probe = None
    if config.tol is not None:  # the error that matters is the influence's: watch it on sampled training rows
        rows = rng.choice(n, size=min(n, _PROBES), replace=False)
        probe = objective.train_grads(train.take(np.sort(rows))).T  # [p, k]
    avg = _Averages(config, v, probe)
    bar_at = 0
    for j in range(1, config.depth + 1):
        batch = train.take(batches[j - 1]).to(objective.device).batch
        x = x + pre(v - objective.product(x, batch, config.curvature) - lam * x) / scale
        avg.add(x, j)
        if j % every == 0 or j == config.depth:
            norms = x.norm(dim=1)
            if not bool(torch.isfinite(norms).all()):
                # bad examples, not a bad scale, when the batches since the last check hold any
                objective.train_grads(train.take(np.unique(batches[max(0, j - every) : j])))
            history.append(norms)
            _check_divergence(history, j, repetition, scale, config, bound)
            bar.update(j - bar_at)
            bar_at = j
        if avg.converged:
            return avg.result, SolveStats.one(j, False)
    if config.tol is not None:
        log.warning("LiSSA repetition %d hit depth=%d before its average reached tol=%g (relative standard error "
                    "%.3g): raise LissaConfig.depth or batch_size, or use a preconditioner", repetition,
                    config.depth, config.tol, avg.last_error)
    return avg.result, SolveStats.one(config.depth, config.tol is not None)


class _Averages:
    """Averages of the iterates: stages of doubling length with a standard-error stop (``tol``), or the last
    ``tail_average`` fraction of exactly ``depth`` steps (``tol=None``)."""

    def __init__(self, config: LissaConfig, v: Tensor, probe: Tensor | None):
        self.cfg, self._probe = config, probe
        self.converged, self.last_error = False, float("inf")
        self._result: Tensor | None = None
        self._last = v
        if config.tol is None:
            n_tail = max(1, int(config.tail_average * config.depth))
            self._tail_start, self._n_tail = config.depth - n_tail, n_tail
            self._sum = torch.zeros_like(v)
            return
        self._stage_start, self._block_len = 0, config.check_every
        self._new_stage(v)

    def _new_stage(self, v: Tensor) -> None:
        self._block, self._sum = torch.zeros_like(v), torch.zeros_like(v)
        self._psum = torch.zeros(v.shape[0], self._probe.shape[1], dtype=torch.float64, device=v.device)
        self._sq = torch.zeros(v.shape[0], dtype=torch.float64, device=v.device)
        self._filled, self._in_block = 0, 0

    def add(self, x: Tensor, step: int) -> None:
        self._last = x
        if self.cfg.tol is None:
            if step > self._tail_start:
                self._sum += x
            return
        self._block += x
        self._in_block += 1
        if self._in_block < self._block_len:
            return
        mean_b = self._block / self._block_len
        self._sum += mean_b
        infl = (mean_b @ self._probe).double()  # the block's influence on the probe rows, [m, k]
        self._psum += infl
        self._sq += (infl**2).sum(1)
        self._filled += 1
        self._block.zero_()
        self._in_block = 0
        if self._filled == _BLOCKS:
            mean, pmean = self._sum / _BLOCKS, self._psum / _BLOCKS
            var = (self._sq - _BLOCKS * (pmean**2).sum(1)).clamp_min(0) / (_BLOCKS - 1)
            # pooled over the vectors: a well-predicted test point's tiny s_test would otherwise hold back all
            self.last_error = float((var.sum() / _BLOCKS).sqrt() / (pmean**2).sum().sqrt().clamp_min(1e-300))
            self._result = mean
            if self.last_error <= self.cfg.tol:
                self.converged = True
                return
            self._block_len *= 2  # the next stage: twice as long, this one forgotten as burn-in
            self._new_stage(x)

    @property
    def result(self) -> Tensor:
        if self.cfg.tol is None:
            return self._sum / self._n_tail
        if self._filled >= 2:  # capped mid-stage: this stage's complete blocks
            return self._sum / self._filled
        return self._result if self._result is not None else self._last


def _check_divergence(history: list[Tensor], step: int, repetition: int, scale: float, cfg: LissaConfig,
                      bound: Tensor) -> None:
    now = history[-1]
    blew_up = not bool(torch.isfinite(now).all())
    growing = not blew_up and bool((now > bound).any())
    if not blew_up and len(history) > _GROWTH_WINDOW:
        w = torch.stack(history[-_GROWTH_WINDOW - 1 :])  # [W+1, m]
        # A converging recursion adds ever smaller increments (burn-in of a slow direction: nearly constant
        # ones); a diverging one grows geometrically, its increments faster and faster. Sampled batches make
        # constant increments jitter: with hundreds of test vectors, some vector's 5 increments rise in a row
        # by chance (a 1.5x margin fired on the digits MLP at B=8), so the margin is 3x and the norm must
        # quadruple. Slower divergence still meets the bound above.
        steady_rise = (w[1:] > w[:-1]).all(0)
        quadrupled = w[-1] > 4 * w[0]
        increments = w[1:] - w[:-1]
        accelerating = (increments[1:] > increments[:-1]).all(0) & (increments[-1] > 3 * increments[0])
        growing = growing or bool((steady_rise & quadrupled & accelerating).any())
    if blew_up or growing:
        before = history[max(0, len(history) - _GROWTH_WINDOW - 1)]
        what = ("reached NaN/inf" if blew_up else
                f"keeps growing (||x|| {float(before.max()):.3g} -> {float(now.max()):.3g}, past any solution's)")
        fix = ("use curvature='ggn' (positive semi-definite, cannot diverge this way) or raise LissaConfig.damping "
               f"(now {cfg.damping}) above the negative curvature" if cfg.curvature == "hessian"
               else f"raise LissaConfig.damping (now {cfg.damping})")
        raise LissaDivergenceError(
            f"LiSSA diverged: the recursion {what} at step {step} of repetition {repetition}. Either scale="
            f"{scale:.4g} is below the largest eigenvalue of the batch curvature: raise LissaConfig.scale_safety or "
            f"batch_size (or set scale); or the batch curvature has negative eigenvalues: {fix}."
        )


def mean_of_repetitions(estimates: list) -> Tensor:
    """The LiSSA answer: the mean of its repetitions' estimates, summed in repetition order whatever ran them,
    so 1 and N workers give the same bits. ``estimates``: tensors or numpy arrays of one shape."""
    total = estimates[0] * 1  # a copy, never the caller's array
    for x in estimates[1:]:
        total += x
    return total / len(estimates)
