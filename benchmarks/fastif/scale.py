"""Scale: a synthetic training set of a million rows with an MLP. Index build, amortised time per test point over
many test points, and peak resident memory of the driver and of the Ray workers, on 1 and 2 workers."""

from __future__ import annotations

import time
from typing import Any

import torch

from rayif import IndexConfig, RunConfig, ScalingConfig, build_index, explain
from rayif.data import as_examples
from rayif.grads import Objective
from rayif.ihvp import estimate_scale
from rayif.mixture import mixture_task
from rayif.results import metadata

from .._common import Memory
from .workload import Settings, lissa


def run(s: Settings) -> dict[str, Any]:
    t0 = time.perf_counter()
    task, split = mixture_task(s.scale_rows, s.scale_test_points, hidden=32, weight_decay=1e-3,
                               dtype=torch.float32, max_iter=30, seed=s.seed)
    train, test = (split.x_train, split.y_train), (split.x_test, split.y_test)
    out: dict[str, Any] = {"rows": s.scale_rows, "test_points": s.scale_test_points, "k": s.scale_k,
                           "model": "64-32-10 tanh MLP, float32 (p = 2410), 30 full-batch L-BFGS steps",
                           "train_s": time.perf_counter() - t0}
    cfg = lissa(s.scale_lissa, 1.0)
    t0 = time.perf_counter()
    scale = estimate_scale(Objective(task), as_examples(train), cfg, seed=s.seed)
    out["scale_s"] = time.perf_counter() - t0
    cfg = lissa(s.scale_lissa, scale)
    out["solver"] = f"LiSSA J={cfg.depth} B={cfg.batch_size} T={cfg.repetitions}"
    with Memory() as mem:
        t0 = time.perf_counter()
        index = build_index(task, train, IndexConfig(progress=False))
        out["index_build_s"] = time.perf_counter() - t0
    out["index_memory"] = _memory(mem)
    out["index_rows_per_s"] = s.scale_rows / out["index_build_s"]
    out["runs"] = []
    for workers in (1, 2):
        with Memory() as mem:
            t0 = time.perf_counter()
            table = explain(task, train, test, top=10, solver=cfg, seed=s.seed, index=index, k=s.scale_k,
                            scaling_config=ScalingConfig(num_workers=workers), run_config=RunConfig(progress=False))
            wall = time.perf_counter() - t0
        job = metadata(table)["job"]
        out["runs"].append({"workers": workers, "wall_s": wall, "s_per_point": wall / s.scale_test_points,
                            "phases_s": job["seconds"], "memory": _memory(mem), "rows": table.num_rows,
                            "table": table})
    a, b = (r.pop("table") for r in out["runs"])
    if a.to_pydict() != b.to_pydict():
        raise SystemExit("scale: 1 and 2 workers gave different tables")
    out["same_table_on_1_and_2_workers"] = True
    return out


def _memory(mem: Memory) -> dict[str, Any]:
    return {"driver_before_mib": mem.before, "driver_peak_mib": mem.driver, "worker_peak_mib": mem.workers}
