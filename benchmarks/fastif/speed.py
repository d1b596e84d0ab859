"""FastIF Tables 1 and 2 on the digits MLP: time per test point of each speed-up, as a ratio to full influence
by FastIF's naive loop measured in the same run, and each one's agreement with exact influence."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from rayif import RunConfig, ScalingConfig, explain
from rayif.recall import true_top
from rayif.results import metadata

from .._naive import naive_point
from .workload import Problem, Settings, agreement, top_overlap


def run(p: Problem, s: Settings) -> dict[str, Any]:
    n, m, k = len(p.train), len(p.test), p.k
    exact_harmful = true_top(p.exact, p.train.ids, 10)[0]
    t0 = time.perf_counter()
    knn = p.indexes["features"].candidates(p.task, p.test, k)  # ids are row positions here
    knn_search = (time.perf_counter() - t0) / m
    original, fast = p.lissa(s.original), p.lissa(s.fast)
    build = {src: p.seconds[f"{src} index (Ray Data -> FAISS)"] for src in ("features", "sketch")}
    scale_s = p.seconds["LiSSA scale (power iteration)"]
    rows: list[dict[str, Any]] = []

    model = p.task.build_model()
    xt, yt = torch.as_tensor(p.split.x_train), torch.as_tensor(p.split.y_train)
    naive_fast: list[np.ndarray] = []
    for name, cfg, cand, one_off in (
            ("full influence, original s_test: FastIF's naive loop", original, None, scale_s),
            (f"+ kNN (k = {k}), naive loop", original, knn, scale_s + build["features"]),
            ("+ kNN + fast s_test, naive loop", fast, knn, scale_s + build["features"])):
        values, exact, harmful, wall = [], [], [], 0.0
        for i in range(s.naive_points):
            rows_i = np.arange(n) if cand is None else cand[i]
            t0 = time.perf_counter()
            v = naive_point(model, p.task.weight_decay, xt, yt, p.test.inputs[i], p.test.targets[i], cfg, s.seed,
                            rows=rows_i)
            wall += time.perf_counter() - t0
            values.append(v)
            exact.append(p.exact[i, rows_i])
            harmful.append(rows_i[np.argsort(-v, kind="stable")])
        if cfg is fast:
            naive_fast = values
        per = wall / s.naive_points + (knn_search if cand is not None else 0.0)
        rows.append({"method": name, "where": "1 process, one test point at a time", "points": s.naive_points,
                     "s_per_point": per, "one_off_s": one_off, "solver": _shape(cfg),
                     **agreement(values, exact), "top10_harmful": top_overlap(harmful, exact_harmful[: len(harmful)]),
                     **_recall(cand, exact_harmful, s.naive_points)})

    explained: dict[str, Any] = {}
    for name, solver, workers, source, one_off in (
            ("+ kNN + fast s_test, rayif batched", fast, 1, "features", scale_s + build["features"]),
            ("+ kNN + fast s_test, rayif batched", fast, 2, "features", scale_s + build["features"]),
            ("rayif defaults: auto solver, gradient-sketch candidates", None, 2, "sketch", build["sketch"]),
            ("rayif: full influence (every training row), auto solver", None, 2, None, 0.0)):
        index = p.indexes[source] if source else None
        t0 = time.perf_counter()
        table = explain(p.task, p.train, p.test, top=(k // 2 if index else n // 2), solver=solver, seed=s.seed,
                        index=index, k=k if index else None, scaling_config=ScalingConfig(num_workers=workers),
                        run_config=RunConfig(progress=False))
        wall = time.perf_counter() - t0
        meta = metadata(table)
        ids, values = _per_test(table, p.test.ids)
        explained[f"{source}:{workers}"] = (ids, values)
        cand = np.stack([np.sort(i) for i in ids]) if index is not None else None
        rows.append({"method": name, "where": f"{workers} Ray worker{'s' if workers > 1 else ''}, {m} test points",
                     "points": m, "s_per_point": wall / m, "one_off_s": one_off,
                     "solver": _shape(solver) if solver else _auto(meta["solver"]),
                     "phases_s": meta["job"]["seconds"],
                     **agreement(values, [p.exact[i, ids[i]] for i in range(m)]),
                     "top10_harmful": top_overlap([ids[i][np.argsort(-values[i], kind="stable")] for i in range(m)],
                                                  exact_harmful),
                     **_recall(cand, exact_harmful, m)})
    base = rows[0]["s_per_point"]
    for r in rows:
        r["speedup"] = base / r["s_per_point"]
        r["speedup_with_one_offs"] = (base * m + rows[0]["one_off_s"]) / (r["s_per_point"] * m + r["one_off_s"])
    # the naive loop and rayif run the same recursion on the same batches: their values must agree
    ids, values = explained["features:1"]
    worst = max(float(np.abs(_on(ids[i], values[i], knn[i]) - naive_fast[i]).max() / np.abs(naive_fast[i]).max())
                for i in range(len(naive_fast)))
    return {"k": k, "num_train": n, "num_test": m, "scales": p.scales, "knn_search_s_per_point": knn_search,
            "naive_vs_rayif_max_rel_diff": worst, "rows": rows}


def _shape(cfg: Any) -> str:
    return f"LiSSA J={cfg.depth} B={cfg.batch_size} T={cfg.repetitions}"


def _auto(chosen: dict[str, Any]) -> str:
    """What the automatic solver chose, e.g. ``auto: CG + ekfac``."""
    pre = chosen.get("preconditioner")
    return f"auto: {chosen['method'].upper()}" + (f" + {pre.upper()}" if pre else "")


def _per_test(table, test_ids: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each test point's scored training ids and values (both sides of the table together, deduplicated)."""
    t = table.to_pydict()
    tid, train, inf = np.array(t["test_id"]), np.array(t["train_id"]), np.array(t["influence"])
    ids, values = [], []
    for q in test_ids:
        sel = tid == q
        u, first = np.unique(train[sel], return_index=True)
        ids.append(u)
        values.append(inf[sel][first])
    return ids, values


def _on(ids: np.ndarray, values: np.ndarray, want: np.ndarray) -> np.ndarray:
    return values[np.searchsorted(ids, want)]


def _recall(cand: np.ndarray | None, exact_harmful: np.ndarray, m: int) -> dict[str, float]:
    if cand is None:
        return {"recall_top10_harmful": 1.0}
    return {"recall_top10_harmful": float(np.mean([len(np.intersect1d(exact_harmful[i], cand[i])) / 10
                                                   for i in range(m)]))}
