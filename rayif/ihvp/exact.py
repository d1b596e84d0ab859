"""Ground truth: the explicit Hessian of the training objective and a dense solve.

The matrix costs ``p`` vector-products over the training data. With ``ExactConfig.mixed_precision`` a
float64 model's matrix is built from float32 products (2.1-2.3x cheaper on a CPU) and factored in float64;
its rounding then leaves a relative residual of up to about ``kappa * 1e-7``, which float64 products check:
every test vector's (refined where it is above ``tol``), or, for the inverse handed to self-influence (whose
rows cannot each be checked), seeded Gaussian probes', which weigh every eigendirection alike. A matrix that
fails is built again from float64 products.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from ..config import ExactConfig
from ..data import Examples
from ..errors import IndefiniteError, RayifError
from ..grads import Objective
from .cg import low_precision
from .stats import SolveStats

log = logging.getLogger("rayif")

_COLUMNS = 512  # identity columns per product of an explicit matrix's build
_REFINEMENTS = 3  # rounds of refinement against float64 products before the matrix is rebuilt in float64
_PROBES = 32  # Gaussian vectors that check a float32-built inverse before it is handed out

Curvature = Callable[[Tensor, "torch.dtype | None"], Tensor]
"""``(v [k, p], the products' dtype or None: the model's) -> C v``: one pass of curvature products."""


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
    """``(C + damping I)^-1 V`` through a Cholesky factorisation of the explicit curvature ``C`` (float64)."""

    def __init__(self, objective: Objective, train: Examples, config: ExactConfig, *, chunk_size: int = 256):
        def curvature(v: Tensor, dtype: torch.dtype | None = None) -> Tensor:
            o = objective if dtype is None else objective.in_dtype(dtype)
            return o.full_hvp(v.to(o.device, o.dtype), train, chunk_size, config.curvature).to(v.device, v.dtype)

        self._build(curvature, objective.num_params, config, objective.dtype)

    @classmethod
    def build(cls, curvature: Curvature, p: int, config: ExactConfig, dtype: torch.dtype,
              matrix: Tensor | None = None) -> ExactSolver:
        """The solver of the operator ``curvature`` (sharded over workers by ``rayif.sharded``); ``dtype``:
        the model's, which its answers take. ``matrix``: the ``[p, p]`` float64 curvature when it was built
        otherwise, in the model's precision (:mod:`rayif.ihvp.chain`): factored as it is, answers unchecked."""
        self = cls.__new__(cls)
        self._build(curvature, p, config, dtype, matrix)
        return self

    @staticmethod
    def check_size(p: int, config: ExactConfig) -> None:
        """Refuse a ``p`` above ``config.max_params`` before anything is built."""
        if p > config.max_params:
            raise RayifError(
                f"the exact solver builds a {p} x {p} Hessian, above ExactConfig.max_params={config.max_params}; "
                "select fewer parameters (Task.params), raise max_params, or use CGConfig / LissaConfig / EKFACConfig"
            )

    def _build(self, curvature: Curvature, p: int, config: ExactConfig, dtype: torch.dtype,
               matrix: Tensor | None = None) -> None:
        self.check_size(p, config)
        self.dtype, self.config, self.stats = dtype, config, SolveStats()
        self._curvature, self._p = curvature, p
        self.low = None if matrix is not None else low_precision(config, dtype)
        self._probed = False
        if matrix is None:
            self._factor(self.low or dtype)
        else:
            self._factor_matrix(matrix)

    def _factor(self, dtype: torch.dtype) -> None:
        low = None if dtype == self.dtype else dtype
        self._factor_matrix(explicit_matrix(lambda v: self._curvature(v, low), self._p, dtype))

    def _factor_matrix(self, h: Tensor) -> None:
        """Cholesky of ``h + damping I`` (a tenth of an eigendecomposition's time; ``h`` is shifted in place);
        where it fails, the smallest eigenvalue, for the error :meth:`_check_definite` raises."""
        shifted = h
        shifted.diagonal().add_(self.config.damping)
        self._cholesky, info = torch.linalg.cholesky_ex(shifted)
        self._lowest = None if int(info) == 0 else float(torch.linalg.eigvalsh(shifted)[0])

    def _rebuild(self, why: str) -> None:
        log.warning("rayif: the explicit matrix built from float32 products %s: building it again from float64 "
                    "products (ExactConfig(mixed_precision=False) builds it so from the start)", why)
        self.low = None
        self._factor(self.dtype)

    def _direct(self, b: Tensor) -> Tensor:
        return torch.cholesky_solve(b.T, self._check_definite()).T

    def _operator(self, x: Tensor) -> Tensor:
        """``(C + damping I) x`` in float64, ``C`` from products in the model's dtype."""
        return self._curvature(x.to(self.dtype), None).double() + self.config.damping * x

    def _relative(self, r: Tensor, b: Tensor) -> Tensor:
        """``||r|| / (tol ||b||)`` per row: above 1, the row's answer misses the tolerance."""
        return (r * r).sum(1).sqrt() / (self.config.tol * (b * b).sum(1).sqrt().clamp_min(1e-300))

    def solve(self, vectors: Tensor) -> Tensor:
        """``(C + damping I)^-1`` applied to each row of ``vectors [m, p]``; ``stats``: the check's passes."""
        b = vectors.double().cpu()
        x, passes = self._direct(b), 0
        while self.low is not None:
            r = b - self._operator(x)
            passes += 1
            worst = float(self._relative(r, b).max())
            if worst <= 1:
                break
            if passes > _REFINEMENTS:
                self._rebuild(f"leaves a relative residual of {worst * self.config.tol:.2g} after {_REFINEMENTS} "
                              f"refinements (tol={self.config.tol})")
                x = self._direct(b)
                break
            x = x + self._direct(r)
        self.stats = SolveStats.one(passes, False)
        return x.to(dtype=self.dtype, device=vectors.device)

    def inverse(self) -> Tensor:
        """``[p, p]`` float64 ``(C + damping I)^-1``: what workers apply to many right-hand sides of their own
        (self-influence: every training gradient), where one product with it costs no more than a solve. A
        float32-built matrix is first checked on ``_PROBES`` seeded Gaussian vectors."""
        if self.low is not None and not self._probed:
            self._probed = True
            z = torch.randn(_PROBES, self._p, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            worst = float(self._relative(z - self._operator(self._direct(z)), z).max())
            self.stats = SolveStats.one(1, False)
            if worst > 1:
                self._rebuild(f"leaves a relative residual of {worst * self.config.tol:.2g} on random vectors "
                              f"(tol={self.config.tol})")
        return torch.cholesky_inverse(self._check_definite())

    def _check_definite(self) -> Tensor:
        """The Cholesky factor, once ``C + damping I`` is known positive definite (checked here, where the
        answer is needed)."""
        cfg = self.config
        if self._lowest is not None:
            raise IndefiniteError(
                f"the {cfg.curvature} + {cfg.damping}*I is not positive definite (smallest eigenvalue "
                f"{self._lowest:.3g}); set ExactConfig.damping above {cfg.damping - self._lowest:.3g}"
                + (" or use curvature='ggn'" if cfg.curvature == "hessian" else "")
            )
        return self._cholesky
