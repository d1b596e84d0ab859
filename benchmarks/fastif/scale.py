"""Scale: a synthetic training set of a million rows with an MLP. Index build, amortised time per test point over
many test points, and peak resident memory of the driver and of the Ray workers, on 1 and 2 workers."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

from rayif import IndexConfig, RunConfig, ScalingConfig, build_index, explain
from rayif.data import as_examples
from rayif.grads import Objective
from rayif.ihvp import estimate_scale
from rayif.mixture import mixture_task

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
    out["index_memory"] = mem.report()
    out["index_rows_per_s"] = s.scale_rows / out["index_build_s"]
    out["runs"] = []
    for workers in (1, 2):
        with Memory() as mem:
            t0 = time.perf_counter()
            table = explain(task, train, test, top=10, solver=cfg, seed=s.seed, index=index, k=s.scale_k,
                            scaling=ScalingConfig(num_workers=workers), run_config=RunConfig(progress=False))
            wall = time.perf_counter() - t0
        job = json.loads(table.schema.metadata[b"rayif.job"])
        out["runs"].append({"workers": workers, "wall_s": wall, "s_per_point": wall / s.scale_test_points,
                            "phases_s": job["seconds"], "memory": mem.report(), "rows": table.num_rows,
                            "table": table})
    a, b = (r.pop("table") for r in out["runs"])
    if a.to_pydict() != b.to_pydict():
        raise SystemExit("scale: 1 and 2 workers gave different tables")
    out["same_table_on_1_and_2_workers"] = True
    return out


def _rss_mib(pid: int | str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _ray_workers() -> dict[str, str]:
    """``{pid: what}`` of this machine's busy Ray worker processes: Ray titles them ``ray::Class.method`` (rayif's
    replicas are ``_Worker``, the index pipeline's feature actors ``MapWorker(...)``)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                title = Path(f"/proc/{d}/cmdline").read_bytes()[:96].split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::") and not title.startswith("ray::IDLE"):
                out[d] = title[5:].split(".")[0].split("(")[0].split(" ")[0]
    return out


class Memory(threading.Thread):
    """Peak resident memory of this process (the driver) and of each busy Ray worker, sampled every 50 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.before = _rss_mib("self") or 0.0
        self.driver, self.workers, self._done = self.before, {}, threading.Event()

    def __enter__(self) -> Memory:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self.join()

    def run(self) -> None:
        while not self._done.wait(0.05):
            self.driver = max(self.driver, _rss_mib("self") or 0.0)
            for pid, what in _ray_workers().items():
                rss = _rss_mib(pid)
                if rss is not None:
                    self.workers[pid] = (what, max(self.workers.get(pid, (what, 0.0))[1], rss))

    def report(self) -> dict[str, Any]:
        """Peaks in MiB: the driver's, and each busy worker's grouped by what Ray titles it (largest first)."""
        by: dict[str, list[float]] = {}
        for what, peak in self.workers.values():
            by.setdefault(what, []).append(round(peak, 1))
        return {"driver_before_mib": self.before, "driver_peak_mib": self.driver,
                "worker_peak_mib": {k: sorted(v, reverse=True) for k, v in by.items()}}
