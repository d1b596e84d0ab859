"""FastIF's reference loop, one test point at a time, as its authors wrote it: the baseline of the speed tables."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from rayif import LissaConfig
from rayif.ihvp.lissa import repetition_rng


def naive_point(model, weight_decay: float, x_train: torch.Tensor, y_train: torch.Tensor, x: torch.Tensor,
                y: torch.Tensor, cfg: LissaConfig, seed: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Influence of the training rows ``rows`` (default: every one) on one test point, ``[len(rows)]``.

    A test gradient, its own LiSSA (``T`` repetitions of ``J`` single-vector HVPs on ``B`` sampled rows, each a
    double backward through the module, last iterate, no preconditioner), then one backward per scored row and
    a dot product. Repetition ``t`` samples its batches from ``repetition_rng(seed, t)``, as rayif's LiSSA does,
    so the two give the same values.
    """
    params = list(model.parameters())

    def flat(tensors):
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflat(vec):
        return [c.view_as(p) for c, p in zip(vec.split([p.numel() for p in params]), params, strict=True)]

    def objective(xb, yb):
        return F.cross_entropy(model(xb), yb) + 0.5 * weight_decay * sum((p * p).sum() for p in params)

    v = flat(torch.autograd.grad(F.cross_entropy(model(x[None]), y[None]), params))
    n, total = len(x_train), torch.zeros_like(v)
    for t in range(cfg.repetitions):
        batches = repetition_rng(seed, t).integers(0, n, size=(cfg.depth, cfg.batch_size))
        h = v.clone()
        for j in range(cfg.depth):
            g = torch.autograd.grad(objective(x_train[batches[j]], y_train[batches[j]]), params, create_graph=True)
            hv = flat(torch.autograd.grad(g, params, grad_outputs=unflat(h)))
            h = (v + (1 - cfg.damping / cfg.scale) * h - hv / cfg.scale).detach()
        total += h / cfg.scale
    s_test = total / cfg.repetitions
    rows = np.arange(n) if rows is None else np.asarray(rows)
    out = np.empty(len(rows))
    for i, r in enumerate(rows):  # one backward per scored training row
        model.zero_grad()
        objective(x_train[r : r + 1], y_train[r : r + 1]).backward()
        out[i] = -float(s_test @ flat(p.grad for p in params))
    return out
