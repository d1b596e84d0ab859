"""The ``rayif`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np


def _demo(args: argparse.Namespace) -> int:
    import torch

    from . import digits, explain, write_parquet
    from .distributed import ScalingConfig, ensure_ray

    t0 = time.perf_counter()
    split = digits.load_digits_split(n_train=args.train_size, n_test=360, seed=args.seed, dtype=np.float32)
    task, _ = digits.digits_task("mlp", split, weight_decay=1e-3, seed=args.seed, dtype=torch.float32)
    model = task.build_model()
    with torch.no_grad():
        pred = model(torch.as_tensor(split.x_test)).argmax(1).numpy()
    wrong = np.flatnonzero(pred != split.y_test)
    picks = np.concatenate([wrong[: args.test_points - 1], np.flatnonzero(pred == split.y_test)[:1]])
    picks = picks[: args.test_points]
    print(f"trained a 64-32-10 MLP on {args.train_size} digits in {time.perf_counter() - t0:.1f}s; "
          f"test accuracy {np.mean(pred == split.y_test):.3f}; explaining test points {picks.tolist()}")
    solver = _solver(args.solver)
    scaling = ScalingConfig(num_workers=args.workers, use_gpu=args.gpu) if args.workers > 0 else None
    if scaling is not None:
        ensure_ray(args.address)
    t1 = time.perf_counter()
    table = explain(task, (split.x_train, split.y_train), {"x": split.x_test[picks], "y": split.y_test[picks],
                                                            "id": picks}, top=args.top, solver=solver, seed=args.seed,
                    scaling=scaling, address=args.address)
    took = time.perf_counter() - t1
    if scaling is not None:
        workers = json.loads(table.schema.metadata[b"rayif.workers"])
        for i, w in enumerate(workers):
            print(f"worker {i} ran on node {w['node_id']} ({w['device']})")
    rows = table.to_pylist()
    for t in picks:
        print(f"\ntest point {t}: label {split.y_test[t]}, predicted {pred[t]}")
        for kind in ("harmful", "helpful"):
            mine = [r for r in rows if r["test_id"] == t and r["kind"] == kind]
            items = ", ".join(f"#{r['train_id']} (label {split.y_train[r['train_id']]}) {r['influence']:+.3g}"
                              for r in mine)
            print(f"  most {kind}: {items}")
    out = write_parquet(table, Path(args.out) / "demo.parquet")
    where = f"{args.workers} Ray workers" if scaling else "this process"
    print(f"\ninfluence ({args.solver}, {where}) took {took:.1f}s; {table.num_rows} rows written to {out}")
    print("positive influence = harmful: removing that example would lower this test point's loss")
    return 0


def _solver(name: str):
    from .config import CGConfig, ExactConfig, LissaConfig

    return {"lissa": LissaConfig(), "cg": CGConfig(damping=1e-3), "exact": ExactConfig(damping=1e-3)}[name]


def _recall(args: argparse.Namespace) -> int:
    import torch

    from . import RayifError, digits, write_parquet
    from .index import IndexConfig, build_index, knn_recall, plot_recall

    split = digits.load_digits_split(n_train=1000, n_test=200, seed=args.seed)
    task, _ = digits.digits_task("mlp", split, weight_decay=1e-3, seed=args.seed, dtype=torch.float64)
    out = Path(args.out)
    index = build_index(task, (split.x_train, split.y_train), IndexConfig(kind=args.kind),
                        path=out / f"digits-mlp-{args.kind}-index", num_rows=len(split.x_train))
    ks = sorted({min(int(k), len(split.x_train)) for k in args.ks.split(",")})
    test = (split.x_test[: args.test_points], split.y_test[: args.test_points])
    t0 = time.perf_counter()
    table = knn_recall(task, (split.x_train, split.y_train), test, index, ks, top=args.top,
                       solver=_solver(args.solver), seed=args.seed)
    print(f"recall of the top-{args.top} harmful (influence over all {len(split.x_train)} training digits, "
          f"{args.solver}) among the k nearest in feature space ({args.kind} index), "
          f"{args.test_points} test points, {time.perf_counter() - t0:.1f}s:")
    print(f"{'k':>6} {'k/n':>6} {'mean':>6} {'min':>6} {'max':>6}")
    for r in table.to_pylist():
        print(f"{r['k']:>6} {r['fraction']:>6.1%} {r['recall_mean']:>6.3f} {r['recall_min']:>6.2f} "
              f"{r['recall_max']:>6.2f}")
    write_parquet(table, out / "recall.parquet")
    print(f"wrote {out / 'recall.parquet'}")
    try:
        png = plot_recall(table, out / "recall.png", title=f"digits MLP: top-{args.top} harmful among kNN")
    except RayifError as e:  # the table is the result; the picture is optional
        print(f"no PNG: {e}")
        return 0
    print(f"wrote {png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayif", description="Influence functions, the FastIF way, on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small MLP on scikit-learn's digits and explain a few predictions")
    demo.add_argument("--test-points", type=int, default=3, help="how many test points to explain")
    demo.add_argument("--top", type=int, default=5, help="harmful and helpful examples shown per test point")
    demo.add_argument("--train-size", type=int, default=1000, help="training examples (of 1797 digits)")
    demo.add_argument("--solver", choices=["lissa", "cg", "exact"], default="lissa")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--workers", type=int, default=2,
                      help="Ray worker actors, one model replica each (0: run in this process without Ray)")
    demo.add_argument("--gpu", action="store_true", help="one GPU per worker (falls back to CPU, and says so)")
    demo.add_argument("--address", default=None,
                      help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)")
    demo.add_argument("--out", default="rayif-out", help="folder the parquet result goes to")
    demo.set_defaults(run=_demo)
    recall = sub.add_parser("recall", help="kNN recall of the most harmful training points (FastIF Fig. 3a), "
                                           "digits MLP: table and PNG")
    recall.add_argument("--test-points", type=int, default=50)
    recall.add_argument("--top", type=int, default=10, help="the true top-m harmful to look for")
    recall.add_argument("--ks", default="10,25,50,100,200,300,500,750,1000", help="comma-separated k values")
    recall.add_argument("--kind", choices=["flat", "ivf_flat", "ivf_pq"], default="flat")
    recall.add_argument("--solver", choices=["lissa", "cg", "exact"], default="exact")
    recall.add_argument("--seed", type=int, default=0)
    recall.add_argument("--out", default="rayif-out")
    recall.set_defaults(run=_recall)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
