"""Ground truth: the explicit Hessian of the training objective and a dense solve."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..config import ExactConfig
from ..data import Examples
from ..errors import IndefiniteError, RayifError
from ..grads import Objective
from .stats import SolveStats

_COLUMNS = 512  # identity columns per product of an explicit matrix's build


def explicit_matrix(apply: Callable[[Tensor], Tensor], p: int, dtype: torch.dtype,
                    device: torch.device | str = "cpu") -> Tensor:
    """The symmetric ``[p, p]`` float64 matrix of the operator ``apply: [k, p] -> [k, p]``, from its products
    with blocks of the identity (in this process, or sharded over workers by ``rayif.sharded``)."""
    eye = torch.eye(p, dtype=dtype, device=device)
    h = torch.cat([apply(eye[i : i + _COLUMNS]) for i in range(0, p, _COLUMNS)]).double().cpu()
    return (h + h.T) / 2


def explicit_hessian(objective: Objective, train: Examples, chunk_size: int = 256, curvature: str = "hessian"
                     ) -> Tensor:
    """``[p, p]`` Hessian (or GGN) of the mean training loss, built from products with blocks of the identity."""
    return explicit_matrix(lambda v: objective.full_hvp(v, train, chunk_size, curvature), objective.num_params,
                           objective.dtype, objective.device)


class ExactSolver:
    """``(C + damping I)^-1 V`` through an eigendecomposition of the explicit curvature ``C`` (float64)."""

    def __init__(self, objective: Objective, train: Examples, config: ExactConfig, *, chunk_size: int = 256):
        self.check_size(objective.num_params, config)
        self._factor(explicit_hessian(objective, train, chunk_size, config.curvature), config, objective.dtype)

    @classmethod
    def from_matrix(cls, curvature: Tensor, config: ExactConfig, dtype: torch.dtype) -> ExactSolver:
        """The solver of a symmetric ``[p, p]`` curvature built elsewhere (``rayif.sharded``, by
        :func:`explicit_matrix`); ``dtype``: the model's, which its answers take."""
        self = cls.__new__(cls)
        self._factor(curvature.double(), config, dtype)
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
        q = self._check_definite()
        out = ((vectors.double().to(q.device) @ q) / self._shifted) @ q.T
        return out.to(dtype=self.dtype, device=vectors.device)

    def inverse(self) -> Tensor:
        """``[p, p]`` float64 ``(C + damping I)^-1``: what workers apply to many right-hand sides of their own
        (self-influence: every training gradient), where one product with it costs no more than a solve."""
        q = self._check_definite()
        return (q / self._shifted) @ q.T

    def _check_definite(self) -> Tensor:
        """The eigenvectors, once ``C + damping I`` is known positive definite (checked here, not when
        factored, so a caller may first read the eigenvalues)."""
        cfg = self.config
        if float(self._shifted.min()) <= 0:
            raise IndefiniteError(
                f"the {cfg.curvature} + {cfg.damping}*I is not positive definite (smallest eigenvalue "
                f"{float(self._shifted.min()):.3g}); set ExactConfig.damping above {-self.smallest:.3g}"
                + (" or use curvature='ggn'" if cfg.curvature == "hessian" else "")
            )
        return self._evecs
