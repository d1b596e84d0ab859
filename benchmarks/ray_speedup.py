"""Parallel FastIF on Ray against FastIF's naive loop, and 1, 2 and 4 workers, measured in one run.

    .venv/bin/python -m benchmarks.ray_speedup           # about 3 minutes on 2 cores
    .venv/bin/python -m benchmarks.ray_speedup --quick   # about 40 s, smaller J and fewer test points

The workload: the digits MLP (64-32-10, float32, p = 2410), 797 training images, all of them the candidates
of every test point, and 1000 test points; LiSSA at FastIF's recommended shape (small B, J ~ 1000, T = 2,
plain last iterate) with the same damping and scale for everyone.

* **naive**: FastIF's reference loop, one test point at a time: a test gradient, its own LiSSA (T
  repetitions of J single-vector HVPs, each a double backward through the module), then one backward per
  candidate and a dot product. It shares nothing between test points, so its time per test point is
  measured on ``--naive-points`` points and holds for any number of them.
* **rayif, 1, 2 and 4 workers**: ``explain(..., scaling_config=ScalingConfig(num_workers=w))`` over all the test
  points, end to end (worker start-up, validation, s_test, scoring, ranking); the local Ray is started
  before the clock runs. Test points share every sampled LiSSA batch (one batched HVP per step for the
  whole test batch), and each candidate's gradient is computed once per test batch. With T=2 and 4 workers
  two test batches are in flight at once, so every worker gets an s_test unit; the table reports each
  worker's busy fraction (seconds inside units / wall) from the job's own timings. 4 workers share this
  machine's 2 cores (0.5 CPU each), so they show the scheduling, not more speed.

The naive loop uses the same batches (repetition ``t`` draws from seed ``(seed, t)``), so its influence must
match rayif's; the run checks that, and that 1 and 2 workers give identical tables, before it reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import numpy as np
import torch

from rayif import LissaConfig, RunConfig, ScalingConfig, explain
from rayif.data import as_examples
from rayif.digits import digits_task, load_digits_split
from rayif.grads import Objective
from rayif.ihvp import estimate_scale
from rayif.results import metadata
from rayif.scaling import ensure_ray

from ._common import print_table, write_json
from ._naive import naive_point

WORKERS = (1, 2, 4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test-points", type=int, default=1000)
    ap.add_argument("--depth", type=int, default=1000, help="LiSSA J")
    ap.add_argument("--batch-size", type=int, default=8, help="LiSSA B")
    ap.add_argument("--repetitions", type=int, default=2, help="LiSSA T")
    ap.add_argument("--test-batch-size", type=int, default=256)
    ap.add_argument("--naive-points", type=int, default=4)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="J=300, 200 test points, 2 naive points")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/ray_speedup.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.depth, args.test_points, args.naive_points = 300, 200, 2
    logging.basicConfig(level=logging.WARNING)

    split = load_digits_split(n_train=797, n_test=1000, dtype=np.float32)
    task, _ = digits_task("mlp", split, dtype=torch.float32)
    train = as_examples((split.x_train, split.y_train))
    test = as_examples((split.x_test[: args.test_points], split.y_test[: args.test_points]))
    # FastIF's recipe: fixed depth, last iterate, no preconditioner
    base = LissaConfig(depth=args.depth, batch_size=args.batch_size, repetitions=args.repetitions, tail_average=0.0,
                       tol=None, preconditioner=None)
    scale = estimate_scale(Objective(task), train, base, seed=0)
    cfg = dataclasses.replace(base, scale=scale)
    print(f"digits MLP p=2410, n={len(train)} candidates, {len(test)} test points, "
          f"LiSSA J={cfg.depth} B={cfg.batch_size} T={cfg.repetitions} damping={cfg.damping} scale={scale:.3g}")

    model, xt, yt = task.model_factory(), torch.as_tensor(split.x_train), torch.as_tensor(split.y_train)
    naive_values, t0 = [], time.perf_counter()
    for i in range(args.naive_points):
        naive_values.append(naive_point(model, task.weight_decay, xt, yt, test.inputs[i], test.targets[i], cfg, 0))
    naive_per_point = (time.perf_counter() - t0) / args.naive_points
    print(f"naive: {naive_per_point:.3f} s per test point ({args.naive_points} measured)")

    ensure_ray()
    runs = {}
    for w in WORKERS:
        t0 = time.perf_counter()
        table = explain(task, train, test, top=args.top, solver=cfg, seed=0,
                        scaling_config=ScalingConfig(num_workers=w, resources_per_worker={"CPU": min(1.0, 2 / w)}),
                        run_config=RunConfig(test_batch_size=args.test_batch_size, progress=False))
        wall = time.perf_counter() - t0
        job = metadata(table)["job"]
        busy = [sum(b.values()) / wall for b in job["worker_busy"]]
        runs[w] = {"wall_s": wall, "table": table, "timings": job["seconds"], "worker_busy_s": job["worker_busy"],
                   "busy_fraction": busy}
        phases = ", ".join(f"{k} {v:.2f}" for k, v in job["seconds"].items())
        print(f"rayif {w} worker(s): {wall:.2f} s  ({phases}); busy fraction per worker "
              f"{', '.join(f'{b:.0%}' for b in busy)}")

    for w in WORKERS[1:]:
        if runs[1]["table"].to_pydict() != runs[w]["table"].to_pydict():
            raise SystemExit(f"1 and {w} workers gave different tables")
    worst = 0.0
    for i, want in enumerate(naive_values):
        t = runs[2]["table"]
        rows = t.filter((t["test_id"].to_numpy() == int(test.ids[i])) & (np.array(t["kind"].to_pylist()) == "harmful"))
        got = rows["influence"].to_numpy()
        ref = np.sort(want)[::-1][: len(got)]
        worst = max(worst, float(np.abs(got - ref).max() / np.abs(ref).max()))
    if worst > 1e-3:
        raise SystemExit(f"naive and rayif influence disagree (max relative difference {worst:.2e})")

    m = len(test)
    rows = [{"method": "naive FastIF loop (1 process)", "points": args.naive_points,
             "wall": naive_per_point * args.naive_points, "per_point": naive_per_point, "speedup": 1.0}]
    for w in WORKERS:
        per = runs[w]["wall_s"] / m
        rows.append({"method": f"rayif, {w} Ray worker{'s' if w > 1 else ''}", "points": m, "wall": runs[w]["wall_s"],
                     "per_point": per, "speedup": naive_per_point / per,
                     "busy": " ".join(f"{b:.0%}" for b in runs[w]["busy_fraction"])})
    efficiency = runs[1]["wall_s"] / (2 * runs[2]["wall_s"])
    print_table(f"amortised time per test point (baseline: naive, measured in this run); influence matches the "
                f"naive loop to {worst:.1e}",
                rows, [("method", "method", "s"), ("points", "test points", "d"), ("wall", "wall s", ".2f"),
                       ("per_point", "s / test point", ".4f"), ("speedup", "x naive", ".1f"),
                       ("busy", "worker busy / wall", "s")])
    print(f"\n1 -> 2 workers: speedup {runs[1]['wall_s'] / runs[2]['wall_s']:.2f}x, parallel efficiency "
          f"{efficiency:.0%} (goal >= 85%)")
    write_json("ray_speedup", {
        "config": {"depth": cfg.depth, "batch_size": cfg.batch_size, "repetitions": cfg.repetitions,
                   "damping": cfg.damping, "scale": scale, "num_train": len(train), "num_test": m,
                   "test_batch_size": args.test_batch_size, "naive_points": args.naive_points},
        "naive_s_per_test_point": naive_per_point,
        "rayif": {str(w): {"wall_s": r["wall_s"], "s_per_test_point": r["wall_s"] / m,
                           "speedup_vs_naive": naive_per_point * m / r["wall_s"], "phases_s": r["timings"],
                           "worker_busy_s": r["worker_busy_s"], "busy_fraction": r["busy_fraction"]}
                  for w, r in runs.items()},
        "efficiency_1_to_2_workers": efficiency,
        "max_relative_difference_vs_naive": worst,
    }, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
