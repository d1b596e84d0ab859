"""Ground truth: the explicit Hessian of the training objective and a dense solve."""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import ExactConfig
from ..data import Examples
from ..errors import IndefiniteError, RayifError
from ..grads import Objective
from .stats import SolveStats


def explicit_hessian(objective: Objective, train: Examples, chunk_size: int = 256, curvature: str = "hessian"
                     ) -> Tensor:
    """``[p, p]`` Hessian (or GGN) of the mean training loss, built from products with blocks of the identity."""
    p = objective.num_params
    eye = torch.eye(p, dtype=objective.dtype, device=objective.device)
    cols = [objective.full_hvp(eye[i : i + 512], train, chunk_size, curvature) for i in range(0, p, 512)]
    h = torch.cat(cols).double()
    return (h + h.T) / 2


class ExactSolver:
    """``(C + damping I)^-1 V`` through an eigendecomposition of the explicit curvature ``C`` (float64)."""

    def __init__(self, objective: Objective, train: Examples, config: ExactConfig, *, chunk_size: int = 256):
        self.check_size(objective.num_params, config)
        self._factor(explicit_hessian(objective, train, chunk_size, config.curvature), config, objective.dtype)

    @classmethod
    def from_matrix(cls, curvature: Tensor, config: ExactConfig, dtype: torch.dtype) -> ExactSolver:
        """The solver of an explicit ``[p, p]`` curvature built elsewhere (``rayif.sharded``, in column blocks);
        ``dtype``: the model's, which its answers take."""
        self = cls.__new__(cls)
        h = curvature.double()
        self._factor((h + h.T) / 2, config, dtype)
        return self

    @staticmethod
    def check_size(p: int, config: ExactConfig) -> None:
        """Refuse a ``p`` above ``config.max_params`` before anything is built."""
        if p > config.max_params:
            raise RayifError(
                f"the exact solver builds a {p} x {p} Hessian, above ExactConfig.max_params={config.max_params}; "
                "select fewer parameters (Task.params), raise max_params, or use CGConfig / LissaConfig / EKFACConfig"
            )

    def _factor(self, h: Tensor, config: ExactConfig, dtype: torch.dtype) -> None:
        self.dtype, self.config, self.stats = dtype, config, SolveStats()
        evals, self._evecs = torch.linalg.eigh(h)
        self.eigenvalues = evals
        self._shifted = evals + config.damping

    @property
    def smallest(self) -> float:
        """The smallest eigenvalue of the curvature (without damping)."""
        return float(self.eigenvalues.min())

    def solve(self, vectors: Tensor) -> Tensor:
        cfg = self.config
        if float(self._shifted.min()) <= 0:  # checked here, so a caller may first read the eigenvalues
            raise IndefiniteError(
                f"the {cfg.curvature} + {cfg.damping}*I is not positive definite (smallest eigenvalue "
                f"{float(self._shifted.min()):.3g}); set ExactConfig.damping above {-self.smallest:.3g}"
                + (" or use curvature='ggn'" if cfg.curvature == "hessian" else "")
            )
        q = self._evecs
        out = ((vectors.double().to(q.device) @ q) / self._shifted) @ q.T
        return out.to(dtype=self.dtype, device=vectors.device)
