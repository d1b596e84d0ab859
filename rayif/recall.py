"""FastIF Fig. 3a: how many of the truly most influential training points an index's k candidates contain."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .api import compute_s_test, influence_matrix, task_examples
from .config import SolverConfig
from .errors import RayifError
from .index.faiss_index import FeatureIndex
from .plotting import pyplot, save
from .task import Task


def true_top(values: np.ndarray, ids: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """``(harmful [m, top], helpful [m, top])`` training ids of an influence matrix ``[m, n]`` (ties by id)."""
    tie = np.broadcast_to(ids, values.shape)
    harmful = ids[np.lexsort((tie, -values), axis=1)[:, :top]]
    helpful = ids[np.lexsort((tie, values), axis=1)[:, :top]]
    return harmful, helpful


def candidate_recall(task: Task, train: Any, test: Any, indexes: FeatureIndex | Mapping[str, FeatureIndex],
                     ks: Sequence[int], *, top: int = 10, solver: SolverConfig | None = None, seed: int = 0,
                     values: np.ndarray | None = None, s_test: Any = None) -> pa.Table:
    """Recall of each test point's true top-``top`` harmful and helpful training points among the ``k``
    candidates an index gives it, for each index and ``k``.

    The truth is influence over the *whole* training set (``influence_matrix`` with ``solver``, or ``values
    [m, n]`` when given). A feature index's candidates are the ``k`` nearest in feature space (FastIF's kNN);
    a sketch index's the ``k/2`` of largest and the ``k/2`` of smallest sketched influence, from ``s_test``
    (solved with ``solver`` unless given).

    Args:
        indexes: one index, or ``{name: index}`` to compare several on the same test points.

    Returns:
        a table with columns ``index`` (its name; a single index is named by its ``source``), ``source``,
        ``k``, ``fraction`` (k / n), ``harmful_mean``/``_min``/``_max`` and ``helpful_mean``/``_min``/``_max``
        over the test points, and ``num_test``.
    """
    train_ex = task_examples(task, train, "training data")
    test_ex = task_examples(task, test, "test data")
    if isinstance(indexes, FeatureIndex):
        indexes = {indexes.source: indexes}
    ks = sorted({int(k) for k in ks})
    if values is None:
        values = influence_matrix(task, train_ex, test_ex, solver=solver, seed=seed)  # [m, n]
    if values.shape != (len(test_ex), len(train_ex)):
        raise RayifError(f"values must be [num_test, num_train] = [{len(test_ex)}, {len(train_ex)}], "
                         f"got {values.shape}")
    harmful, helpful = true_top(values, train_ex.ids, top)
    rows = []
    for name, index in indexes.items():
        if index.source == "sketch":
            if s_test is None:
                s_test = compute_s_test(task, train_ex, test_ex, solver, seed=seed)
            per_k = {k: index.sketch_candidates(task, s_test, k) for k in ks}
        else:
            nearest = index.candidates(task, test_ex, max(ks))
            per_k = {k: nearest[:, :k] for k in ks}
        for k in ks:
            row = {"index": name, "source": index.source, "k": k, "fraction": k / len(train_ex)}
            for side, truth in (("harmful", harmful), ("helpful", helpful)):
                r = np.array([len(np.intersect1d(truth[i], per_k[k][i])) / top for i in range(len(test_ex))])
                row.update({f"{side}_mean": float(r.mean()), f"{side}_min": float(r.min()),
                            f"{side}_max": float(r.max())})
            rows.append({**row, "num_test": len(test_ex)})
    return pa.Table.from_pylist(rows)


def knn_recall(task: Task, train: Any, test: Any, index: FeatureIndex, ks: Sequence[int], *, top: int = 10,
               solver: SolverConfig | None = None, seed: int = 0) -> pa.Table:
    """:func:`candidate_recall` of one index (the name 0.4 had; its ``recall_*`` columns are the harmful side)."""
    t = candidate_recall(task, train, test, index, ks, top=top, solver=solver, seed=seed)
    for stat in ("mean", "min", "max"):
        t = t.append_column(f"recall_{stat}", t.column(f"harmful_{stat}"))
    return t


def plot_recall(table: pa.Table, path: str | Path, *, title: str = "recall of the most influential") -> Path:
    """Recall against k / n as a PNG, one line per index and side (needs matplotlib: the ``plot`` extra)."""
    plt = pyplot("the recall plot")
    rows = table.to_pylist()
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for name in dict.fromkeys(r["index"] for r in rows):
        mine = [r for r in rows if r["index"] == name]
        x = np.array([r["fraction"] for r in mine]) * 100
        for side, style in (("harmful", "-"), ("helpful", "--")):
            line, = ax.plot(x, [r[f"{side}_mean"] for r in mine], style, marker="o", ms=3, label=f"{name}: {side}")
            ax.fill_between(x, [r[f"{side}_min"] for r in mine], [r[f"{side}_max"] for r in mine],
                            color=line.get_color(), alpha=0.1)
    ax.set_xscale("log")
    ax.set_xlabel("k, % of the training set (log)")
    ax.set_ylabel("recall of the true top (band: min to max)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)
