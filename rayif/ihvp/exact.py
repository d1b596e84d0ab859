"""Ground truth: the explicit Hessian of the training objective and a dense solve."""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import ExactConfig
from ..data import Examples
from ..errors import RayifError, SolverError
from ..grads import Objective


def explicit_hessian(objective: Objective, train: Examples, chunk_size: int = 256) -> Tensor:
    """``[p, p]`` Hessian of the mean training loss, built from HVPs with blocks of the identity."""
    p = objective.num_params
    eye = torch.eye(p, dtype=objective.dtype, device=objective.device)
    cols = [objective.full_hvp(eye[i : i + 512], train, chunk_size) for i in range(0, p, 512)]
    h = torch.cat(cols).double()
    return (h + h.T) / 2


class ExactSolver:
    """``(H + damping I)^-1 V`` through an eigendecomposition of the explicit Hessian (float64)."""

    def __init__(self, objective: Objective, train: Examples, config: ExactConfig, *, chunk_size: int = 256):
        p = objective.num_params
        if p > config.max_params:
            raise RayifError(
                f"the exact solver builds a {p} x {p} Hessian, above ExactConfig.max_params={config.max_params}; "
                "select fewer parameters (Task.params), raise max_params, or use LissaConfig / CGConfig"
            )
        self.dtype = objective.dtype
        h = explicit_hessian(objective, train, chunk_size)
        evals, self._evecs = torch.linalg.eigh(h)
        self.eigenvalues = evals
        self._shifted = evals + config.damping
        smallest = float(self._shifted.min())
        if smallest <= 0:
            raise SolverError(
                f"H + {config.damping}*I is not positive definite (smallest eigenvalue {smallest:.3g}); "
                f"set ExactConfig.damping above {-float(evals.min()):.3g}"
            )

    def solve(self, vectors: Tensor) -> Tensor:
        q = self._evecs
        out = ((vectors.double().to(q.device) @ q) / self._shifted) @ q.T
        return out.to(dtype=self.dtype, device=vectors.device)
