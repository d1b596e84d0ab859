"""FastIF Fig. 3a: recall of the exact top-10 among k candidates, feature kNN against gradient sketches."""

from __future__ import annotations

from typing import Any

from rayif.recall import candidate_recall

from .workload import Problem, Settings


def run(p: Problem, s: Settings) -> dict[str, Any]:
    n = len(p.train)
    ks = sorted({max(2, round(f * n)) for f in s.recall_fractions})
    table = candidate_recall(p.task, p.train, p.test, {"feature kNN": p.indexes["features"],
                                                       "gradient sketch": p.indexes["sketch"]},
                             ks, top=10, seed=s.seed, values=p.exact, s_test=p.s_exact)
    return {"num_test": len(p.test), "num_train": n, "rows": table.to_pylist()}
