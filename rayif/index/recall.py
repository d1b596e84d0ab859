"""FastIF Fig. 3a: how many of the truly most harmful training points the kNN candidates contain."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..api import influence_matrix, task_examples
from ..config import SolverConfig
from ..errors import RayifError
from ..task import Task
from .faiss_index import FeatureIndex


def knn_recall(task: Task, train: Any, test: Any, index: FeatureIndex, ks: Sequence[int], *, top: int = 10,
               solver: SolverConfig | None = None, seed: int = 0) -> pa.Table:
    """Recall of the top-``top`` harmful training points among each test point's ``k`` nearest neighbours.

    The truth is influence over the *whole* training set (``influence_matrix`` with ``solver``); for each
    ``k`` the recall of a test point is ``|top-harmful ∩ kNN_k| / top``.

    Returns:
        a table with columns ``k``, ``fraction`` (k / n), ``recall_mean``, ``recall_min``, ``recall_max``
        over the test points, and ``num_test``.
    """
    train_ex = task_examples(task, train, "training data")
    test_ex = task_examples(task, test, "test data")
    ks = sorted({int(k) for k in ks})
    values = influence_matrix(task, train_ex, test_ex, solver=solver, seed=seed)  # [m, n]
    order = np.lexsort((np.broadcast_to(train_ex.ids, values.shape), -values), axis=1)[:, :top]
    truth = train_ex.ids[order]  # [m, top] most harmful ids
    knn = index.candidates(task, test_ex, max(ks))  # [m, k_max]: nearest first
    rows = []
    for k in ks:
        r = np.array([len(np.intersect1d(truth[i], knn[i, :k])) / top for i in range(len(test_ex))])
        rows.append({"k": k, "fraction": k / len(train_ex), "recall_mean": float(r.mean()),
                     "recall_min": float(r.min()), "recall_max": float(r.max()), "num_test": len(test_ex)})
    return pa.Table.from_pylist(rows)


def plot_recall(table: pa.Table, path: str | Path, *, title: str = "kNN recall of the most harmful") -> Path:
    """Recall against k / n as a PNG (needs matplotlib: the ``plot`` extra)."""
    try:
        import matplotlib
    except ImportError:
        raise RayifError("the recall plot needs matplotlib: pip install 'rayif[plot]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.to_pydict()
    x = np.array(t["fraction"]) * 100
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(x, t["recall_mean"], marker="o", label="mean over test points")
    ax.fill_between(x, t["recall_min"], t["recall_max"], alpha=0.2, label="min to max")
    ax.set_xlabel("k, % of the training set")
    ax.set_ylabel("recall of the top harmful")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
