"""Candidates as ids at scale: driver memory and time per test batch, 256 test points x 1M training rows.

    .venv/bin/python -m benchmarks.candidates_memory           # about 2 minutes on 2 cores
    .venv/bin/python -m benchmarks.candidates_memory --rows 200000 --quick

The workload: 1,000,000 synthetic training rows (64 float32 features, 10 classes), a 64-32-10 tanh MLP
(p = 2410), 512 test points in 2 batches of 256, each with k = 1000 candidate training ids drawn at random
(the worst case for locality: every test point's candidates spread over the whole set), LiSSA J=100, T=2,
on 2 Ray workers.

Each test batch's candidates travel as ``[256, 1000]`` ids: the driver turns them into (test row, position)
pairs, O(m k), and each worker receives only the pairs in its own training shard. The baseline is what the
dense ``[m, n]`` bool mask of the previous design weighed (m x n bytes per batch on the driver, and again on
every worker), computed, not run. The driver's resident memory is sampled every 20 ms while the job runs.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
from torch import nn

from rayif import LissaConfig, RunConfig, ScalingConfig, Task, explain
from rayif.digits import cross_entropy
from rayif.kernels import candidate_plan
from rayif.results import metadata
from rayif.scaling import ensure_ray

from ._common import Memory, peak_rss_mib, print_table, write_json


def _model_factory(state):
    def build():
        model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        model.load_state_dict(state)
        return model
    return build


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--test-points", type=int, default=512)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="256 test points (one batch)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/candidates_memory.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.test_points = 256
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=args.rows)
    x = (centers[y] + rng.normal(size=(args.rows, 64)).astype(np.float32))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    task = Task(model_factory=_model_factory({k: v.clone() for k, v in model.state_dict().items()}),
                loss=cross_entropy, weight_decay=1e-3)
    yt = rng.integers(0, 10, size=args.test_points)
    xt = centers[yt] + rng.normal(size=(args.test_points, 64)).astype(np.float32)
    cand = np.stack([rng.choice(args.rows, size=args.k, replace=False) for _ in range(args.test_points)])
    ensure_ray()
    # the MLP is untrained (memory is measured, not influence): its Hessian is indefinite and LiSSA on it
    # diverges (caught since 0.4), so the positive semi-definite GGN, with its scale estimated
    solver = LissaConfig(depth=100, batch_size=32, repetitions=2, curvature="ggn", preconditioner=None)
    print(f"{args.rows:,} training rows x 64, MLP p=2410, {args.test_points} test points in batches of 256, "
          f"k={args.k} random candidate ids each, LiSSA J={solver.depth} T={solver.repetitions}, "
          f"{args.workers} workers")

    with Memory(period=0.02) as mem:
        t0 = time.perf_counter()
        table = explain(task, (x, y), (xt, yt), top=10, solver=solver, seed=0, candidates=cand,
                        scaling_config=ScalingConfig(num_workers=args.workers), run_config=RunConfig(progress=False))
        wall = time.perf_counter() - t0
    before, peak = mem.before, mem.driver
    job = metadata(table)["job"]
    batches = -(-args.test_points // 256)
    plan = candidate_plan(cand[:256], args.rows, 256)
    pair_bytes = sum(w.rows.nbytes + w.cols.nbytes for w in plan)
    data_mib = (x.nbytes + y.nbytes) / 2**20
    rows = [
        {"what": "dense [m, n] bool mask (previous design), per batch", "mib": 256 * args.rows / 2**20},
        {"what": "candidate ids [m, k] int64, per batch", "mib": cand[:256].nbytes / 2**20},
        {"what": "(row, position) pairs sent to workers, per batch, all shards", "mib": pair_bytes / 2**20},
        {"what": "training data held by the driver", "mib": data_mib},
        {"what": "driver RSS before the job", "mib": before},
        {"what": "driver RSS peak during the job", "mib": peak},
        {"what": "driver RSS growth during the job", "mib": peak - before},
    ]
    print_table("driver memory (MiB)", rows, [("what", "", "s"), ("mib", "MiB", ".1f")])
    per_batch = {k: v / batches for k, v in job["seconds"].items()}
    print_table(f"seconds per test batch of 256 ({batches} batches, {wall:.1f} s end to end incl. worker start)",
                [{"phase": k, "s": v} for k, v in per_batch.items()], [("phase", "phase", "s"), ("s", "s", ".2f")])
    print(f"scoring windows of <= 256 distinct candidate rows in the first batch: {len(plan)} (the chunk grid has "
          f"{-(-args.rows // 256)}); worker busy s: {job['worker_busy']}")
    write_json("candidates_memory", {
        "config": {"rows": args.rows, "test_points": args.test_points, "k": args.k, "workers": args.workers,
                   "depth": solver.depth, "repetitions": solver.repetitions},
        "memory_mib": {r["what"]: r["mib"] for r in rows}, "peak_rss_mib_process": peak_rss_mib(),
        "seconds_per_batch": per_batch, "wall_s": wall, "worker_busy_s": job["worker_busy"],
    }, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
