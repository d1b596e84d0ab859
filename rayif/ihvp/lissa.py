"""LiSSA (Agarwal et al. 2017) as FastIF runs it: depth J, batch B, T seeded repetitions."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from ..config import LissaConfig
from ..data import Examples
from ..errors import LissaDivergenceError
from ..grads import Objective

log = logging.getLogger(__name__)

_SCALE_STREAM = 2**40  # seed-sequence key of the scale estimate, apart from every repetition's key
_POWER_ITERATIONS = 30
_GROWTH_WINDOW = 6  # consecutive divergence checks over which a norm that keeps growing means divergence


def repetition_rng(seed: int, repetition: int) -> np.random.Generator:
    """The generator of repetition ``t``: a function of ``(seed, t)`` alone, whatever runs it."""
    return np.random.default_rng([seed, repetition])


def estimate_scale(objective: Objective, train: Examples, config: LissaConfig, seed: int = 0) -> float:
    """A ``scale`` above the largest |eigenvalue| of the batch Hessians the recursion will meet.

    Power iteration on ``config.scale_batches`` random batches of ``batch_size`` (all at once, one vmapped
    HVP per iteration) and on up to 1024 examples together; the largest estimate times ``scale_safety``.
    """
    rng = np.random.default_rng([seed, _SCALE_STREAM])
    n, k, b = len(train), config.scale_batches, config.batch_size
    idx = rng.integers(0, n, size=(k, b))
    batches = [train.take(idx[i]).to(objective.device).batch for i in range(k)]
    sample = train.take(rng.choice(n, size=min(n, 1024), replace=False))
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    v = torch.randn(k + 1, objective.num_params, generator=gen, dtype=objective.dtype).to(objective.device)
    v = v / v.norm(dim=1, keepdim=True)
    lam = torch.zeros(k + 1, dtype=objective.dtype, device=objective.device)
    for _ in range(_POWER_ITERATIONS):
        hv = torch.cat([
            *(objective.hvp(v[i : i + 1], batches[i]) for i in range(k)),
            objective.full_hvp(v[k:], sample, chunk_size=256),
        ])
        lam = (v * hv).sum(1).abs()
        v = hv / hv.norm(dim=1, keepdim=True).clamp_min(torch.finfo(objective.dtype).tiny)
    top = float(lam.max())
    scale = config.scale_safety * top
    log.info("LiSSA scale %.4g (largest batch-Hessian |eigenvalue| estimate %.4g x %.2f)",
             scale, top, config.scale_safety)
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
) -> Tensor:
    """One LiSSA repetition for every row of ``vectors [m, p]``; returns ``h / scale`` ``[m, p]``.

    ``h`` is the last iterate ``h_J``, or the mean of the last ``tail_average * depth`` iterates.

    All rows share the same sampled batches, so the batched result equals ``m`` single-row runs with the
    same ``(seed, repetition)``.
    """
    d, n, b = config.damping, len(train), config.batch_size
    rng = repetition_rng(seed, repetition)
    batches = rng.integers(0, n, size=(config.depth, b))
    v = vectors.to(objective.device)
    h = v.clone()
    n_tail = max(1, int(config.tail_average * config.depth))  # 1: the plain last iterate
    tail_start = config.depth - n_tail
    tail = torch.zeros_like(v)
    history: list[Tensor] = [h.norm(dim=1)]
    for j in range(1, config.depth + 1):
        batch = train.take(batches[j - 1]).to(objective.device).batch
        h = v + (1 - d) * h - objective.hvp(h, batch) / scale
        if j > tail_start:
            tail += h
        if j % config.check_every == 0 or j == config.depth:
            norms = h.norm(dim=1)
            if not bool(torch.isfinite(norms).all()):
                # bad examples, not a bad scale, when the batches since the last check hold any
                recent = np.unique(batches[max(0, j - config.check_every) : j])
                objective.train_grads(train.take(recent))
            history.append(norms)
            _check_divergence(history, j, repetition, scale, config)
    return tail / (n_tail * scale)


def _check_divergence(history: list[Tensor], step: int, repetition: int, scale: float, cfg: LissaConfig) -> None:
    now = history[-1]
    blew_up = not bool(torch.isfinite(now).all())
    growing = False
    if not blew_up and len(history) > _GROWTH_WINDOW:
        w = torch.stack(history[-_GROWTH_WINDOW - 1 :])  # [W+1, m]
        # A converging recursion adds ever smaller increments; a diverging one keeps growing faster.
        steady_rise = (w[1:] > w[:-1]).all(0)
        doubled = w[-1] > 2 * w[0]
        increments = w[1:] - w[:-1]
        not_slowing = increments[-1] >= increments[0]
        growing = bool((steady_rise & doubled & not_slowing).any())
    if blew_up or growing:
        what = "reached NaN/inf" if blew_up else f"keeps growing (||h|| {float(history[-_GROWTH_WINDOW - 1].max()):.3g}"
        what += "" if blew_up else f" -> {float(now.max()):.3g})"
        raise LissaDivergenceError(
            f"LiSSA diverged: the recursion {what} at step {step} of repetition {repetition}. "
            f"scale={scale:.4g} is below the largest eigenvalue of the batch Hessians: raise LissaConfig.scale "
            "(scale=None estimates it by power iteration; raise scale_safety or batch_size if that is not enough). "
            f"If the model is not convex, negative curvature beyond damping*scale also diverges: raise "
            f"LissaConfig.damping (now {cfg.damping})."
        )


class LissaSolver:
    """The mean of ``config.repetitions`` seeded repetitions of :func:`lissa_repetition`."""

    def __init__(self, objective: Objective, train: Examples, config: LissaConfig, *, seed: int = 0,
                 scale: float | None = None):
        self.objective, self.train, self.config, self.seed = objective, train, config, seed
        self.scale = scale or config.scale or estimate_scale(objective, train, config, seed)

    def solve(self, vectors: Tensor) -> Tensor:
        total = torch.zeros_like(vectors)
        for t in range(self.config.repetitions):
            total += lissa_repetition(self.objective, self.train, vectors, self.config,
                                      scale=self.scale, seed=self.seed, repetition=t).to(vectors.device)
        return total / self.config.repetitions
