"""Single-process influence: s_test, chunked scoring against training points, top-m, self influence.

The Ray path calls the same functions; it only moves work and data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from .config import LissaConfig, SolverConfig, solver_to_dict
from .data import Examples, as_examples
from .errors import RayifError
from .grads import Objective, require_finite_vectors
from .ihvp import make_solver
from .results import GROUP_TEST_ID, SELF_INFLUENCE_SCHEMA, ranked_table
from .task import Task

DEFAULT_CHUNK = 256


def grads_at_test_points(
    objective: Objective, test: Examples, *, group: bool = False, chunk_size: int = DEFAULT_CHUNK
) -> Tensor:
    """``[m, p]`` test-loss gradients (``[1, p]``: their mean, when ``group``)."""
    grads = torch.cat([objective.test_grads(c) for c in test.chunks(chunk_size)])
    return grads.mean(0, keepdim=True) if group else grads


def influence_block(objective: Objective, s_test: Tensor, train_chunk: Examples) -> np.ndarray:
    """``[m, c]`` influence ``-s_test . grad L(z)`` of each training example in the chunk."""
    return influence_from_grads(s_test, objective.train_grads(train_chunk))


def influence_from_grads(s_test: Tensor, train_grads: Tensor) -> np.ndarray:
    """``[m, c]`` influence from ``s_test [m, p]`` and training gradients ``[c, p]``, as float64."""
    return (-(s_test.to(train_grads.device) @ train_grads.T)).double().cpu().numpy()


@dataclass
class TopInfluence:
    """Running top-``top`` harmful (largest) and helpful (smallest) influences per test row.

    Ties break by the smaller train id, so the result does not depend on chunk order or worker count.
    """

    rows: int
    top: int
    harmful_ids: np.ndarray = field(init=False)
    harmful: np.ndarray = field(init=False)
    helpful_ids: np.ndarray = field(init=False)
    helpful: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.harmful_ids = np.zeros((self.rows, 0), np.int64)
        self.helpful_ids = np.zeros((self.rows, 0), np.int64)
        self.harmful = np.zeros((self.rows, 0))
        self.helpful = np.zeros((self.rows, 0))

    def add(self, scores: np.ndarray, ids: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Fold in ``scores [rows, c]`` of training examples ``ids [c]``.

        ``mask [rows, c]`` (optional): False where a test row may not rank that example (not a candidate).
        """
        if mask is not None:
            scores = np.where(mask, scores, np.nan)  # NaN ranks after every real value
        ids2 = np.broadcast_to(ids, scores.shape)
        self._fold(np.concatenate([self.harmful, scores], 1), np.concatenate([self.harmful_ids, ids2], 1),
                   np.concatenate([self.helpful, scores], 1), np.concatenate([self.helpful_ids, ids2], 1))

    def merge(self, other: TopInfluence) -> None:
        """Fold in another accumulator over disjoint training examples (a worker's shard)."""
        self._fold(np.concatenate([self.harmful, other.harmful], 1),
                   np.concatenate([self.harmful_ids, other.harmful_ids], 1),
                   np.concatenate([self.helpful, other.helpful], 1),
                   np.concatenate([self.helpful_ids, other.helpful_ids], 1))

    def _fold(self, hv, hi, pv, pi) -> None:
        self.harmful, self.harmful_ids = _best(hv, hi, self.top, largest=True)
        self.helpful, self.helpful_ids = _best(pv, pi, self.top, largest=False)


def _best(values: np.ndarray, ids: np.ndarray, top: int, *, largest: bool) -> tuple[np.ndarray, np.ndarray]:
    key = np.where(np.isnan(values), np.inf, -values if largest else values)
    order = np.lexsort((ids, key), axis=1)[:, :top]  # by value, then by id
    return np.take_along_axis(values, order, 1), np.take_along_axis(ids, order, 1)


def score(objective: Objective, s_test: Tensor, train: Examples, *, top: int,
          chunk_size: int = DEFAULT_CHUNK, candidates: np.ndarray | None = None) -> TopInfluence:
    """Top-``top`` harmful and helpful training examples per row of ``s_test``, one chunk in memory at a time.

    ``candidates [m, n] bool`` (optional): which training rows each test row may rank; chunks that hold no
    candidate of any row are skipped.
    """
    acc = TopInfluence(s_test.shape[0], top)
    for start in range(0, len(train), chunk_size):
        stop = min(start + chunk_size, len(train))
        mask = None if candidates is None else candidates[:, start:stop]
        if mask is not None and not mask.any():
            continue
        chunk = train.take(slice(start, stop))
        acc.add(influence_block(objective, s_test, chunk), chunk.ids, mask)
    return acc


def candidate_mask(cand_ids: np.ndarray, train: Examples, top: int) -> np.ndarray:
    """``[m, n]`` bool from ``[m, k]`` candidate training ids."""
    cand_ids = np.asarray(cand_ids)
    if cand_ids.ndim != 2 or cand_ids.shape[1] < top:
        raise RayifError(f"candidates must be [m, k] training ids with k >= top={top}, got shape {cand_ids.shape}")
    order = np.argsort(train.ids)
    pos = np.searchsorted(train.ids, cand_ids, sorter=order)
    pos = order[np.clip(pos, 0, len(order) - 1)]
    if not (train.ids[pos] == cand_ids).all():
        raise RayifError("candidates name ids that are not in the training data")
    mask = np.zeros((len(cand_ids), len(train)), dtype=bool)
    np.put_along_axis(mask, pos, True, axis=1)
    return mask


# --- the public single-process API ----------------------------------------------------------------


def _prepare(task: Task, train: Any, test: Any | None, device: str) -> tuple[Objective, Examples, Examples | None]:
    objective = Objective(task, device)
    train_ex = as_examples(train, name="training data")
    objective.check(train_ex, "training data")
    test_ex = None
    if test is not None:
        test_ex = as_examples(test, name="test data")
        objective.check(test_ex, "test data")
    return objective, train_ex, test_ex


def compute_s_test(
    task: Task,
    train: Any,
    test: Any,
    solver: SolverConfig | None = None,
    *,
    seed: int = 0,
    group: bool = False,
    device: str = "cpu",
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """``s_test = (H + lambda I)^-1 grad L(z_test)`` for every test point: ``[m, p]`` (``[1, p]`` if ``group``)."""
    objective, train_ex, test_ex = _prepare(task, train, test, device)
    return _s_test(objective, train_ex, test_ex, solver or LissaConfig(), seed, group, chunk_size)


def _s_test(objective: Objective, train: Examples, test: Examples, solver: SolverConfig, seed: int,
            group: bool, chunk_size: int) -> Tensor:
    v = grads_at_test_points(objective, test, group=group, chunk_size=chunk_size)
    s = make_solver(objective, train, solver, seed=seed, chunk_size=chunk_size).solve(v)
    require_finite_vectors(s, "s_test")
    return s


def influence_matrix(
    task: Task,
    train: Any,
    test: Any,
    solver: SolverConfig | None = None,
    *,
    seed: int = 0,
    group: bool = False,
    device: str = "cpu",
    chunk_size: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Every influence value, ``[m, n]`` float64 (``[1, n]`` if ``group``), columns in training-data order.

    Holds the whole matrix: for large training sets use :func:`explain`, which keeps only the top.
    """
    objective, train_ex, test_ex = _prepare(task, train, test, device)
    s = _s_test(objective, train_ex, test_ex, solver or LissaConfig(), seed, group, chunk_size)
    return np.concatenate([influence_block(objective, s, c) for c in train_ex.chunks(chunk_size)], axis=1)


def explain(
    task: Task,
    train: Any,
    test: Any,
    *,
    top: int = 10,
    solver: SolverConfig | None = None,
    seed: int = 0,
    group: bool = False,
    device: str = "cpu",
    chunk_size: int = DEFAULT_CHUNK,
    scaling: Any = None,
    output_dir: str | None = None,
    test_batch_size: int = 256,
    candidates: np.ndarray | None = None,
    index: Any = None,
    k: int | None = None,
    address: str | None = None,
) -> pa.Table:
    """The ``top`` most harmful and most helpful training examples for each test point.

    Args:
        task: the model and its losses.
        train: training data: ``(inputs, targets)`` arrays/tensors, a mapping of columns, or ``Examples``.
        test: test points, in the same forms.
        top: how many harmful and how many helpful examples per test point (at most the training size).
        solver: how to compute s_test; default ``LissaConfig()``.
        seed: fixes every LiSSA repetition.
        group: one s_test for the mean test loss over all test points (FastIF's group influence); the
            rows then carry ``test_id = -1``.
        device: where the model replica runs.
        chunk_size: training examples per batch of per-example gradients.
        scaling: a :class:`rayif.ScalingConfig` to run on Ray: worker actors each hold one model replica,
            share LiSSA's repetitions and score shards of the training set. ``None``: this process only.
            The same seed gives the same result on any number of workers, and the single-process result.
        output_dir: (Ray) one parquet file per test batch goes here; rerunning on the same folder resumes,
            computing only the missing batches.
        test_batch_size: (Ray) test points per batch: they share every sampled LiSSA batch and one pass of
            gradients over the candidates.
        candidates: ``[m, k]`` training ids each test point may rank (its kNN), ``k >= top``; only the
            union over a test batch is scored. With ``group=True``, ``[1, k]``.
        index: a :class:`rayif.index.FeatureIndex` of the training features (``build_index``): each test
            point's ``k`` nearest training rows become its candidates (FastIF's kNN preselection); with
            ``group=True`` the neighbours of the test points' mean feature. A stale index is refused.
        k: candidates per test point with ``index=``.
        address: (Ray) the cluster to join; default ``RAY_ADDRESS``, else a local Ray started here.

    Returns:
        A ``pyarrow.Table`` in :data:`rayif.results.SCHEMA` (positive influence = harmful).
    """
    solver = solver or LissaConfig()
    train_ex, test_ex = as_examples(train, name="training data"), as_examples(test, name="test data")
    _check_top(top, len(train_ex))
    if index is not None:
        if candidates is not None:
            raise RayifError("pass candidates= or index= (with k=), not both")
        if k is None or k < top:
            raise RayifError(f"index= needs k= candidates per test point, at least top={top}; got k={k}")
        candidates = index.candidates(task, test_ex, k, group=group)
    rows = 1 if group else len(test_ex)
    if candidates is not None and (np.ndim(candidates) != 2 or len(candidates) != rows):
        raise RayifError(f"candidates must be [{rows}, k] training ids (one row per test point"
                         f"{', one for the group' if group else ''}), got shape {np.shape(candidates)}")
    if scaling is not None:
        if group:
            raise RayifError("group influence runs in one process: drop scaling= for group=True")
        from .distributed import run_explain

        return run_explain(task, train_ex, test_ex, top=top, solver=solver, seed=seed, scaling=scaling,
                           output_dir=output_dir, test_batch_size=test_batch_size, chunk_size=chunk_size,
                           candidates=candidates, address=address)
    if output_dir is not None:
        raise RayifError("output_dir= takes scaling=ScalingConfig(...) (the Ray path)")
    objective, train_ex, test_ex = _prepare(task, train_ex, test_ex, device)
    mask = None if candidates is None else candidate_mask(candidates, train_ex, top)
    s = _s_test(objective, train_ex, test_ex, solver, seed, group, chunk_size)
    acc = score(objective, s, train_ex, top=top, chunk_size=chunk_size, candidates=mask)
    test_ids = np.array([GROUP_TEST_ID]) if group else test_ex.ids
    meta = {"solver": solver_to_dict(solver), "seed": seed, "num_train": len(train_ex), "group": group,
            "knn": candidates is not None}
    return ranked_table(test_ids, acc.harmful_ids, acc.harmful, acc.helpful_ids, acc.helpful, meta)


def self_influence(
    task: Task,
    train: Any,
    *,
    solver: SolverConfig | None = None,
    seed: int = 0,
    device: str = "cpu",
    chunk_size: int = DEFAULT_CHUNK,
) -> pa.Table:
    """``grad L(z)^T H^-1 grad L(z)`` for every training example: large values flag likely mislabels.

    Returns a table ``(train_id, self_influence)`` sorted by decreasing self influence.
    """
    objective, train_ex, _ = _prepare(task, train, None, device)
    inv = make_solver(objective, train_ex, solver or LissaConfig(), seed=seed, chunk_size=chunk_size)
    values = []
    for chunk in train_ex.chunks(chunk_size):
        g = objective.train_grads(chunk)
        values.append((g * inv.solve(g)).sum(1).double().cpu().numpy())
    v = np.concatenate(values)
    order = np.lexsort((train_ex.ids, -v))
    return pa.Table.from_arrays([pa.array(train_ex.ids[order]), pa.array(v[order])], schema=SELF_INFLUENCE_SCHEMA)


def _check_top(top: int, n: int) -> None:
    if top < 1:
        raise RayifError(f"top must be >= 1, got {top}")
    if top > n:
        raise RayifError(f"top={top} is larger than the training set ({n} examples)")
