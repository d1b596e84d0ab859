"""Typed, validated configs for the inverse-HVP estimators.

A config is plain data: the Python API, the CLI and a cluster job all say the same thing with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Union

from .errors import RayifError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise RayifError(msg)


@dataclass(frozen=True)
class ExactConfig:
    """Explicit Hessian over the whole training set and a dense solve of ``(H + damping*I) X = V``.

    Ground truth for small models: memory is ``num_params**2`` floats, so models above ``max_params``
    selected parameters are refused.

    Attributes:
        damping: additive lambda >= 0 (same units as the loss Hessian).
        max_params: largest number of selected parameters accepted (10,000 = 800 MB of float64 Hessian).
    """

    damping: float = 0.0
    max_params: int = 10_000

    def __post_init__(self) -> None:
        _check(self.damping >= 0, f"ExactConfig.damping must be >= 0, got {self.damping}")
        _check(self.max_params >= 1, f"ExactConfig.max_params must be >= 1, got {self.max_params}")


@dataclass(frozen=True)
class CGConfig:
    """Conjugate gradients on ``(H + damping*I) X = V`` with full-training-set Hessian-vector products.

    Attributes:
        damping: additive lambda >= 0; needed when the Hessian is not positive definite.
        tol: stop a column when ``||residual|| <= tol * ||v||`` (relative, unitless).
        max_iter: iterations before giving up with an error (each is one pass over the training set).
    """

    damping: float = 0.0
    tol: float = 1e-6
    max_iter: int = 1000

    def __post_init__(self) -> None:
        _check(self.damping >= 0, f"CGConfig.damping must be >= 0, got {self.damping}")
        _check(0 < self.tol < 1, f"CGConfig.tol must be in (0, 1), got {self.tol}")
        _check(self.max_iter >= 1, f"CGConfig.max_iter must be >= 1, got {self.max_iter}")


@dataclass(frozen=True)
class LissaConfig:
    """LiSSA as FastIF runs it: ``h <- v + (1 - damping) h - H_B h / scale``, returning ``h / scale``.

    ``H_B`` is the Hessian of the mean training loss on ``batch_size`` examples drawn with replacement.
    The fixed point is ``h/scale = (H + damping*scale*I)^-1 v``: this unitless ``damping`` is an additive
    lambda of ``damping * scale`` in the units of :class:`ExactConfig`/:class:`CGConfig`.

    The recursion converges when every eigenvalue of ``H_B`` lies in ``(-damping*scale, (2-damping)*scale)``;
    its error shrinks by about ``(1 - damping)`` per step, so ``depth`` should exceed ``~5 / damping``.

    Attributes:
        depth: recursion steps per repetition (the paper's J).
        batch_size: training examples per Hessian-vector product (the paper's B).
        repetitions: independent runs averaged at the end (the paper's T); each has its own seed.
        damping: unitless, in [0, 1).
        scale: divides the Hessian; must exceed its largest eigenvalue. ``None``: estimate it by power
            iteration (see ``scale_safety``).
        scale_safety: the estimated largest eigenvalue over sampled batches is multiplied by this.
        scale_batches: how many random batches of ``batch_size`` the power iteration looks at.
        tail_average: fraction of the last steps whose iterates are averaged into the result (0: FastIF's
            plain ``h_J / scale``). The recursion is linear with independent batches, so every iterate past
            burn-in has the fixed point as its mean: averaging them removes most of the batch noise at no
            extra HVPs (on digits it lifted Spearman vs exact from ~0.95 to ~0.99).
        check_every: steps between divergence checks.
    """

    depth: int = 1000
    batch_size: int = 32
    repetitions: int = 4
    damping: float = 0.01
    scale: float | None = None
    scale_safety: float = 1.5
    scale_batches: int = 16
    tail_average: float = 0.5
    check_every: int = 25

    def __post_init__(self) -> None:
        _check(self.depth >= 1, f"LissaConfig.depth must be >= 1, got {self.depth}")
        _check(self.batch_size >= 1, f"LissaConfig.batch_size must be >= 1, got {self.batch_size}")
        _check(self.repetitions >= 1, f"LissaConfig.repetitions must be >= 1, got {self.repetitions}")
        _check(0 <= self.damping < 1, f"LissaConfig.damping must be in [0, 1), got {self.damping}")
        _check(self.scale is None or self.scale > 0, f"LissaConfig.scale must be > 0, got {self.scale}")
        _check(self.scale_safety >= 1, f"LissaConfig.scale_safety must be >= 1, got {self.scale_safety}")
        _check(self.scale_batches >= 1, f"LissaConfig.scale_batches must be >= 1, got {self.scale_batches}")
        _check(0 <= self.tail_average < 1, f"LissaConfig.tail_average must be in [0, 1), got {self.tail_average}")
        _check(self.check_every >= 1, f"LissaConfig.check_every must be >= 1, got {self.check_every}")


SolverConfig = Union[ExactConfig, CGConfig, LissaConfig]  # noqa: UP007 (a runtime alias)

_BY_NAME = {"exact": ExactConfig, "cg": CGConfig, "lissa": LissaConfig}


def solver_name(config: SolverConfig) -> str:
    """The short name ('exact', 'cg', 'lissa') of a solver config."""
    for name, cls in _BY_NAME.items():
        if isinstance(config, cls):
            return name
    raise TypeError(f"not a solver config: {config!r}")


def solver_from_dict(d: dict[str, Any]) -> SolverConfig:
    """Build a solver config from ``{"method": "lissa", "depth": 500, ...}`` (CLI / JSON form)."""
    d = dict(d)
    method = d.pop("method", "lissa")
    if method not in _BY_NAME:
        raise RayifError(f"unknown solver method {method!r}; choose one of {sorted(_BY_NAME)}")
    cls = _BY_NAME[method]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise RayifError(f"unknown {method} option(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)


def solver_to_dict(config: SolverConfig) -> dict[str, Any]:
    """Inverse of :func:`solver_from_dict`."""
    return {"method": solver_name(config), **dataclasses.asdict(config)}


@dataclass(frozen=True)
class RunConfig:
    """How one influence job runs, whatever executes it (this process or Ray workers).

    Attributes:
        output_dir: ``explain`` writes one parquet file per test batch here (``batch-NNNNNN.parquet``) and
            a manifest of the job; rerunning on the same folder computes only the missing batches, and a
            folder holding another job (other model, data, solver, seed, candidates) is refused.
        test_batch_size: test points per batch; they share every sampled LiSSA batch and one pass of
            gradients over the candidates.
        chunk_size: training examples per block of per-example gradients (memory: ``chunk_size * p``
            floats per worker at a time).
        solve_block: test vectors per exact / CG work unit: a test batch splits into blocks of this many
            so every worker has work. Fixed, not derived from the worker count, so 1 and N workers compute
            the same blocks and give bit-identical results.
        batches_in_flight: test batches whose units are scheduled together. ``None``: enough to give every
            worker a unit (``ceil(workers / units per batch)``), bounded so their ``s_test`` vectors stay
            under ``inflight_mb``.
        inflight_mb: bound on the ``s_test`` vectors of the batches in flight, in MiB.
        grad_cache_mb: per-worker cache of training-gradient chunks reused across test batches, in MiB.
        max_failures: times each worker may die (Ray restarts it; its unfinished units are rerun on the
            replacement, so the result is unchanged). Past it the job stops and says how to resume.
        progress: a progress bar over test batches. ``None``: on when stderr is a terminal and ``CI`` is
            unset; log lines otherwise.
    """

    output_dir: str | None = None
    test_batch_size: int = 256
    chunk_size: int = 256
    solve_block: int = 64
    batches_in_flight: int | None = None
    inflight_mb: float = 1024.0
    grad_cache_mb: float = 512.0
    max_failures: int = 3
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.output_dir is not None:
            object.__setattr__(self, "output_dir", str(self.output_dir))
        for name in ("test_batch_size", "chunk_size", "solve_block"):
            _check(getattr(self, name) >= 1, f"RunConfig.{name} must be >= 1, got {getattr(self, name)}")
        _check(self.batches_in_flight is None or self.batches_in_flight >= 1,
               f"RunConfig.batches_in_flight must be >= 1 or None, got {self.batches_in_flight}")
        _check(self.inflight_mb > 0, f"RunConfig.inflight_mb must be > 0, got {self.inflight_mb}")
        _check(self.grad_cache_mb >= 0, f"RunConfig.grad_cache_mb must be >= 0, got {self.grad_cache_mb}")
        _check(self.max_failures >= 0, f"RunConfig.max_failures must be >= 0, got {self.max_failures}")
