"""The math both executors share: influence from gradients, the running top-m, chunk and candidate plans.

Nothing here knows about models, solvers or Ray: plain arrays in, plain arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from .errors import RayifError


def influence_from_grads(s_test: Tensor, train_grads: Tensor) -> np.ndarray:
    """``[m, c]`` influence ``-s_test . grad L(z)`` from ``s_test [m, p]`` and gradients ``[c, p]``, float64."""
    return (-(s_test.to(train_grads.device) @ train_grads.T)).double().cpu().numpy()


@dataclass
class TopInfluence:
    """Running top-``top`` harmful (largest) and helpful (smallest) influences per test row.

    Ties break by the smaller train id, so the result depends neither on chunk order nor on worker count.
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
        """Fold in another accumulator over disjoint training examples (another shard)."""
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


# --- chunk and candidate plans ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkWork:
    """Scoring work over training rows ``[start, stop)``: a chunk of the fixed chunk grid, or a window of
    candidates.

    ``rows``/``cols`` (candidates only): the (test row, training position) pairs to score, positions
    absolute; ``None``: every test row against every row of the chunk.
    """

    start: int
    stop: int
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None


def chunk_grid(n: int, chunk_size: int) -> list[ChunkWork]:
    """The whole training set, chunk by chunk: every chunk is the same computation whatever runs it."""
    return [ChunkWork(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def candidate_positions(candidate_ids: np.ndarray, train_ids: np.ndarray, sorter: np.ndarray,
                        what: str = "candidates") -> np.ndarray:
    """Training positions of training ids (``[m, k]`` candidates, or any shape; ``sorter = argsort(train_ids)``);
    ``what`` names them in the error for an id the training data does not have."""
    pos = np.searchsorted(train_ids, candidate_ids, sorter=sorter)
    pos = sorter[np.clip(pos, 0, len(sorter) - 1)]
    unknown = train_ids[pos] != candidate_ids
    if unknown.any():
        shown = np.unique(candidate_ids[unknown])[:10].tolist()
        raise RayifError(f"{what} name ids that are not in the training data: {shown}")
    return pos


def candidate_plan(positions: np.ndarray, n: int, chunk_size: int) -> list[ChunkWork]:
    """The (test row, training position) pairs of ``[m, k]`` candidate positions, in windows of at most
    ``chunk_size`` distinct training rows: O(m k) memory, never an ``[m, n]`` mask.

    A window is cut by the positions alone, never by the worker count, so every window is the same
    computation on 1 or N workers; windows of distinct rows (not chunks of the grid) keep the gradient calls
    full when candidates are spread thinly over a large training set.
    """
    m, k = positions.shape
    rows = np.repeat(np.arange(m), k)
    cols = positions.reshape(-1)
    pairs = np.unique(cols * m + rows)  # sorted by position, duplicates gone
    cols, rows = pairs // m, pairs % m
    distinct = np.concatenate([[True], np.diff(cols) > 0]).cumsum() - 1  # index of each pair's row
    window = distinct // chunk_size
    cuts = np.flatnonzero(np.diff(window)) + 1
    return [ChunkWork(int(c[0]), int(c[-1]) + 1, r, c)
            for r, c in zip(np.split(rows, cuts), np.split(cols, cuts), strict=True)]


def shards(work: list[ChunkWork], num: int) -> list[list[ChunkWork]]:
    """``work`` dealt into ``num`` shards: item ``i`` always lands in shard ``i % num`` (for the chunk grid, the
    same worker every test batch, whose gradient cache then holds the chunk)."""
    out: list[list[ChunkWork]] = [[] for _ in range(num)]
    for i, w in enumerate(work):
        out[i % num].append(w)
    return out
