"""The smallest eigenvalue of the curvature, by Lanczos: is ``C + damping I`` positive definite here?

A network trained for a fixed budget is rarely at a minimum, and influence through an indefinite Hessian
answers no question (the damped objective has no minimum to move). ``solver="auto"`` checks before it solves.
Lanczos' Ritz values lie inside the spectrum, so a negative one proves the curvature indefinite; its extreme
Ritz values converge first, so a few full-data products find a clearly negative eigenvalue.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def smallest_eigenvalue(apply: Callable[[Tensor], Tensor], p: int, steps: int, seed: int, dtype: torch.dtype,
                        device: torch.device | str = "cpu") -> float:
    """The smallest Ritz value of ``steps`` Lanczos iterations (full reorthogonalisation) on the symmetric
    ``apply: [1, p] -> [1, p]``, from a start vector drawn with ``seed``. An upper bound on the smallest
    eigenvalue, tight for the well-separated negative ones this looks for."""
    steps = max(1, min(steps, p))
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(p, generator=gen, dtype=torch.float64)
    basis = [q / q.norm()]
    alphas, betas = [], []
    for j in range(steps):
        w = apply(basis[j].to(device, dtype)[None])[0].double().cpu()
        alphas.append(float(w @ basis[j]))
        for q in basis:  # full reorthogonalisation: steps are few, so keep the basis exact
            w = w - (w @ q) * q
        beta = float(w.norm())
        if j == steps - 1 or beta <= 1e-12 * max(1.0, abs(alphas[-1])):
            break
        betas.append(beta)
        basis.append(w / beta)
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return float(torch.linalg.eigvalsh(t)[0])
