"""The public driver API: every entry point builds a :class:`~rayif.runner.Job` and runs it on an executor.

``scaling_config=None`` (or ``ScalingConfig(num_workers=0)``) runs in this process;
``ScalingConfig(num_workers=N)`` on N Ray workers. Same seed, same answer either way.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .config import (
    AutoConfig,
    CGConfig,
    EKFACConfig,
    ExactConfig,
    LissaConfig,
    RunConfig,
    SolverConfig,
    solver_from_dict,
)
from .data import Examples, as_examples, ids_digest
from .errors import RayifError
from .executors import make_executor
from .kernels import candidate_positions
from .runner import Job, Runner
from .scaling import ScalingConfig
from .task import Task


def task_examples(task: Task, data: Any, name: str) -> Examples:
    """User data in the batch form ``task`` takes (``(inputs, targets)`` or dict / tuple batches)."""
    return as_examples(data, name=name, dict_batch=task.dict_batches)


def solver_config(solver: Any) -> SolverConfig:
    """``solver`` as the entry points take it (``None``, a name, a config) as a config; ``None``: ``AutoConfig()``."""
    if solver is None:
        return AutoConfig()
    if isinstance(solver, str):
        return solver_from_dict({"method": solver})
    if not isinstance(solver, (ExactConfig, CGConfig, LissaConfig, EKFACConfig, AutoConfig)):
        raise RayifError("solver must be 'auto', 'exact', 'cg', 'lissa', 'ekfac' or one of their configs "
                         f"(AutoConfig(...), ExactConfig(...), ...), got {solver!r}")
    return solver


def test_job(task: Task, train: Any, test: Any, solver: SolverConfig | None, seed: int, group: bool,
             run_config: RunConfig | None) -> Job:
    """The :class:`~rayif.runner.Job` of ``compute_s_test`` and ``influence_matrix``: to drive a runner yourself
    (``benchmarks/solvers.py`` reads its solver stats)."""
    return Job(task_examples(task, train, "training data"), task_examples(task, test, "test data"),
               solver_config(solver), seed, group, run=run_config or RunConfig())


def _run(task: Task, job: Job, scaling: ScalingConfig | None, address: str | None, what: str):
    with make_executor(task, job.train, job.test, scaling, job.run, address) as ex:
        runner = Runner(job, ex)
        return getattr(runner, what)()


RENAMED = {"scaling": "scaling_config"}  # 0.7 spelling -> 0.8 spelling; the old ones go in 0.10


def renamed_keywords(fn):
    """Accept the 0.7 keyword spellings (``scaling=``) for one version, with a ``FutureWarning`` naming the new."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        for old, new in RENAMED.items():
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got {old}= and {new}=: pass {new}= only")
                warnings.warn(f"rayif.{fn.__name__}({old}=...) is deprecated and goes in 0.10: pass {new}=",
                              FutureWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
        return fn(*args, **kwargs)

    return call


def fit_factors(task: Task, train: Any, kind: str = "ekfac", *, chunk_size: int = 256) -> Any:
    """The (E)K-FAC factors of ``task``'s curvature on ``train``, fitted in this process by the runner (the
    same chunk units it shards over Ray workers for a job). ``kind``: ``"ekfac"`` or ``"kfac"``."""
    from .ihvp.kfac import KroneckerFactors

    job = Job(task_examples(task, train, "training data"), None, CGConfig(preconditioner=kind),
              run=RunConfig(chunk_size=chunk_size))
    with make_executor(task, job.train, None, None, job.run, None) as ex:
        factors = Runner(job, ex).factors()
    assert isinstance(factors, KroneckerFactors)  # the local executor's put() is the object itself
    return factors


@renamed_keywords
def explain(
    task: Task,
    train: Any,
    test: Any,
    solver: SolverConfig | str | None = None,
    *,
    top: int = 10,
    seed: int = 0,
    group: bool = False,
    candidates: np.ndarray | None = None,
    index: Any = None,
    k: int | None = None,
    scaling_config: ScalingConfig | None = None,
    run_config: RunConfig | None = None,
    address: str | None = None,
) -> pa.Table:
    """The ``top`` most harmful and most helpful training examples for each test point.

    Args:
        task: the model and its losses.
        train: training data: ``(inputs, targets)`` arrays/tensors, a mapping of columns, a ``pyarrow.Table``,
            a ``ray.data.Dataset`` or ``Examples`` (dict / tuple batches for tasks with ``batch_loss``).
        test: test points, in the same forms.
        top: how many harmful and how many helpful examples per test point (at most the training size).
        solver: how to compute s_test: a config or its name; default ``AutoConfig()`` (``"auto"``: exact when
            the model is small enough, else EK-FAC-preconditioned CG or LiSSA; the choice is recorded in the
            results' metadata). Every solver takes the same additive ``damping`` and ``curvature``.
        seed: fixes every LiSSA repetition.
        group: one s_test for the mean test loss over all test points (FastIF's group influence); the
            rows then carry ``test_id = -1``.
        candidates: ``[m, k]`` training ids each test point may rank (``[1, k]`` with ``group``), ``k >= top``;
            each worker scores only the candidates in its own training shard.
        index: a :class:`rayif.index.FeatureIndex` (``build_index``). Of features: each test point's ``k``
            nearest training rows become its candidates (FastIF's kNN preselection); with ``group=True`` the
            neighbours of the test points' mean feature. Of gradient sketches (``IndexConfig(source="sketch")``):
            once a test batch's ``s_test`` is solved, the ``k/2`` training rows of largest and the ``k/2`` of
            smallest sketched influence (with ``group=True``, of the group's ``s_test``). A stale index is refused.
        k: candidates per test point with ``index=`` (a sketch index: both sides together).
        scaling_config: a :class:`rayif.ScalingConfig` to run on Ray workers that each hold one model
            replica; ``None`` or ``num_workers=0``: this process. (``scaling=``, its 0.7 name, still works
            until 0.10, with a ``FutureWarning``.)
        run_config: test batches, output folder and resume, progress, gradient cache, failure policy
            (:class:`rayif.RunConfig`).
        address: (Ray) the cluster to join; default ``RAY_ADDRESS``, else a local Ray started here.

    Returns:
        A ``pyarrow.Table`` in :data:`rayif.results.SCHEMA` (positive influence = harmful). Its metadata holds
        the solver, seed, model fingerprint, workers and the job's timings (``rayif.job``).
    """
    run = run_config or RunConfig()
    train_ex, test_ex = task_examples(task, train, "training data"), task_examples(task, test, "test data")
    _check_top(top, len(train_ex))
    source = None
    if index is not None:
        if candidates is not None:
            raise RayifError("pass candidates= or index= (with k=), not both")
        if k is None or k < top:
            raise RayifError(f"index= needs k= candidates per test point, at least top={top}; got k={k}")
        source = {"source": "index", "index": index.fingerprint, "k": int(k)}
        if getattr(index, "source", "features") == "sketch":
            index.check_task(task)
            job = Job(train_ex, test_ex, solver_config(solver), seed, group, top, None, source, run,
                      candidate_fn=lambda s: index.sketch_candidates(task, s, k))
            return _run(task, job, scaling_config, address, "explain")
        candidates = index.candidates(task, test_ex, k, group=group)
    elif k is not None:
        raise RayifError("k= takes an index= to find the candidates in")
    if candidates is not None:
        candidates = np.asarray(candidates)
        rows = 1 if group else len(test_ex)
        if candidates.ndim != 2 or len(candidates) != rows or not np.issubdtype(candidates.dtype, np.integer):
            raise RayifError(f"candidates must be [{rows}, k] integer training ids (one row per test point"
                             f"{', one for the group' if group else ''}), got {candidates.dtype} {candidates.shape}")
        if candidates.shape[1] < top:
            raise RayifError(f"candidates must give each test point k >= top={top} training ids, got "
                             f"k={candidates.shape[1]}")
        source = source or {"source": "ids", "sha256": ids_digest(candidates), "k": int(candidates.shape[1])}
    job = Job(train_ex, test_ex, solver_config(solver), seed, group, top, candidates, source, run)
    return _run(task, job, scaling_config, address, "explain")


@renamed_keywords
def compute_s_test(
    task: Task,
    train: Any,
    test: Any,
    solver: SolverConfig | str | None = None,
    *,
    seed: int = 0,
    group: bool = False,
    scaling_config: ScalingConfig | None = None,
    run_config: RunConfig | None = None,
    address: str | None = None,
) -> torch.Tensor:
    """``s_test = (H + lambda I)^-1 grad L(z_test)`` for every test point: ``[m, p]`` (``[1, p]`` if ``group``)."""
    job = test_job(task, train, test, solver, seed, group, run_config)
    return _run(task, job, scaling_config, address, "s_test_all")


@renamed_keywords
def influence_matrix(
    task: Task,
    train: Any,
    test: Any,
    solver: SolverConfig | str | None = None,
    *,
    seed: int = 0,
    group: bool = False,
    scaling_config: ScalingConfig | None = None,
    run_config: RunConfig | None = None,
    address: str | None = None,
) -> np.ndarray:
    """Every influence value, ``[m, n]`` float64 (``[1, n]`` if ``group``), columns in training-data order.

    Holds the whole matrix: for large training sets use :func:`explain`, which keeps only the top.
    """
    job = test_job(task, train, test, solver, seed, group, run_config)
    return _run(task, job, scaling_config, address, "matrix")


@renamed_keywords
def self_influence(
    task: Task,
    train: Any,
    solver: SolverConfig | str | None = None,
    *,
    seed: int = 0,
    train_ids: Any = None,
    scaling_config: ScalingConfig | None = None,
    run_config: RunConfig | None = None,
    address: str | None = None,
) -> pa.Table:
    """``grad L(z)^T H^-1 grad L(z)`` for every training example: large values flag likely mislabels.

    Args:
        train_ids: only these training ids (a sample of a large set); the Hessian is still the whole set's.

    Returns a table ``(train_id, self_influence)`` sorted by decreasing self influence.
    """
    train_ex = task_examples(task, train, "training data")
    rows = None
    if train_ids is not None:
        want = np.asarray(train_ids)
        if want.ndim != 1 or not len(want) or not np.issubdtype(want.dtype, np.integer):
            raise RayifError(f"train_ids must be a non-empty 1-D list of integer training ids, got {want.dtype} "
                             f"{want.shape}")
        rows = np.unique(candidate_positions(want, train_ex.ids, np.argsort(train_ex.ids), what="train_ids"))
    job = Job(train_ex, None, solver_config(solver), seed, run=run_config or RunConfig(), self_rows=rows)
    return _run(task, job, scaling_config, address, "self_influence")


def _check_top(top: int, n: int) -> None:
    if top < 1:
        raise RayifError(f"top must be >= 1, got {top}")
    if top > n:
        raise RayifError(f"top={top} is larger than the training set ({n} examples)")
