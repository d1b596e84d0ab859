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
    from .scaling import ScalingConfig

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
    scaling = ScalingConfig(num_workers=args.workers, use_gpu=args.gpu)
    t1 = time.perf_counter()
    table = explain(task, (split.x_train, split.y_train), {"x": split.x_test[picks], "y": split.y_test[picks],
                                                            "id": picks}, top=args.top, solver=solver, seed=args.seed,
                    scaling=scaling, address=args.address)
    took = time.perf_counter() - t1
    if args.workers > 0:
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
    where = f"{args.workers} Ray workers" if args.workers > 0 else "this process"
    choice = json.loads(table.schema.metadata[b"rayif.solver_choice"])
    solver_said = choice["chosen"] + (f" chosen by {args.solver}" if args.solver == "auto" else "")
    print(f"\ninfluence ({solver_said}, {where}) took {took:.1f}s; {table.num_rows} rows written to {out}")
    print("positive influence = harmful: removing that example would lower this test point's loss")
    return 0


def _solver(name: str):
    from .config import solver_from_dict

    return solver_from_dict({"method": name})


def _recall(args: argparse.Namespace) -> int:
    import torch

    from . import RayifError, digits, write_parquet
    from .index import IndexConfig, build_index, candidate_recall, plot_recall

    split = digits.load_digits_split(n_train=1000, n_test=200, seed=args.seed)
    task, _ = digits.digits_task("mlp", split, weight_decay=1e-3, seed=args.seed, dtype=torch.float64)
    out, train = Path(args.out), (split.x_train, split.y_train)
    indexes = {}
    for source in args.sources.split(","):
        config = IndexConfig(kind=args.kind, source=source, sketch_dim=args.sketch_dim, seed=args.seed)
        name = "feature kNN" if source == "features" else f"gradient sketch (d={args.sketch_dim})"
        indexes[name] = build_index(task, train, config, path=out / f"digits-mlp-{source}-{args.kind}-index",
                                    num_rows=len(split.x_train))
    ks = sorted({min(int(k), len(split.x_train)) for k in args.ks.split(",")})
    test = (split.x_test[: args.test_points], split.y_test[: args.test_points])
    t0 = time.perf_counter()
    table = candidate_recall(task, train, test, indexes, ks, top=args.top, solver=_solver(args.solver), seed=args.seed)
    print(f"recall of the true top-{args.top} harmful and helpful (influence over all {len(split.x_train)} training "
          f"digits, {args.solver}) among each index's k candidates ({args.kind} index), {args.test_points} test "
          f"points, {time.perf_counter() - t0:.1f}s:")
    print(f"{'index':<28} {'k':>6} {'k/n':>6} {'harmful':>8} {'(min)':>6} {'helpful':>8} {'(min)':>6}")
    for r in table.to_pylist():
        print(f"{r['index']:<28} {r['k']:>6} {r['fraction']:>6.1%} {r['harmful_mean']:>8.3f} {r['harmful_min']:>6.2f} "
              f"{r['helpful_mean']:>8.3f} {r['helpful_min']:>6.2f}")
    write_parquet(table, out / "recall.parquet")
    print(f"wrote {out / 'recall.parquet'}")
    try:
        png = plot_recall(table, out / "recall.png", title=f"digits MLP: true top-{args.top} among the k candidates")
    except RayifError as e:  # the table is the result; the picture is optional
        print(f"no PNG: {e}")
        return 0
    print(f"wrote {png}")
    return 0


def _index(args: argparse.Namespace) -> int:
    from .data import read_examples
    from .index import IndexConfig, build_index

    task = _load_task(args.task)
    n = len(read_examples(args.train, name="training data", input_column=args.input_column,
                          target_column=args.target_column, id_column=args.id_column, dict_batch=task.dict_batches))
    config = IndexConfig(kind=args.kind, source=args.source, sketch_dim=args.sketch_dim, use_gpu=args.gpu,
                         seed=args.seed)
    t0 = time.perf_counter()
    idx = build_index(task, args.train, config, path=args.out, rebuild=args.rebuild, input_column=args.input_column,
                      id_column=args.id_column, target_column=args.target_column, num_rows=n, address=args.address)
    extra = ""
    if idx.source == "sketch" and idx.meta["sketch"]["energy_kept"] is not None:
        extra = f"; the basis keeps {idx.meta['sketch']['energy_kept']:.4f} of the sampled gradient energy"
    print(f"{args.source} index ({args.kind}) of {len(idx)} x {idx.dim} in {args.out} "
          f"({time.perf_counter() - t0:.1f}s{extra})")
    return 0


def _load_task(spec: str):
    """``module:callable`` -> the Task the zero-argument callable returns (or the Task object itself)."""
    import importlib

    from .errors import RayifError
    from .task import Task

    module, _, name = spec.partition(":")
    if not module or not name:
        raise RayifError(f"--task must be 'module:callable', got {spec!r}")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise RayifError(f"--task {spec}: {e} (under `ray job submit`, ship your code with --working-dir)") from None
    task = obj if isinstance(obj, Task) else obj()
    if not isinstance(task, Task):
        raise RayifError(f"--task {spec} returned {type(task).__name__}, expected a rayif.Task")
    return task


def _explain(args: argparse.Namespace) -> int:
    from . import explain, write_parquet
    from .config import RunConfig, solver_from_dict
    from .data import read_examples
    from .errors import RayifError
    from .scaling import ScalingConfig

    task = _load_task(args.task)
    cols = {"input_column": args.input_column, "target_column": args.target_column, "id_column": args.id_column,
            "dict_batch": task.dict_batches}
    train = read_examples(args.train, name="training data", **cols)
    test = read_examples(args.test, name="test data", **cols)
    options = {}
    for o in args.solver_option:
        key, eq, value = o.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            eq = ""
        if not eq:
            raise RayifError(f"--solver-option takes KEY=JSON (e.g. depth=2000), got {o!r}")
    solver = solver_from_dict({"method": args.solver, **options})
    scaling = ScalingConfig(num_workers=args.workers, use_gpu=args.gpu)
    index = None
    if args.k is not None:
        from .index import IndexConfig, build_index

        config = IndexConfig(kind=args.index_kind, use_gpu=args.gpu, source=args.candidates,
                             sketch_dim=args.sketch_dim)
        index = build_index(task, args.train, config, path=args.index_dir, input_column=args.input_column,
                            id_column=args.id_column, target_column=args.target_column, num_rows=len(train),
                            address=args.address)
    out = Path(args.out)
    run = RunConfig(output_dir=str(out / "batches"), test_batch_size=args.test_batch_size)
    t0 = time.perf_counter()
    table = explain(task, train, test, top=args.top, solver=solver, seed=args.seed, group=args.group,
                    scaling=scaling, run_config=run, address=args.address, index=index, k=args.k)
    path = write_parquet(table, out / "influence.parquet")
    print(f"{len(test)} test points x top {args.top} harmful and helpful of {len(train)} training examples"
          f"{f' ({_CANDIDATES[args.candidates]}, k={args.k})' if args.k else ''} in {time.perf_counter() - t0:.1f}s "
          f"-> {path}")
    return 0


SOLVERS = ["auto", "exact", "cg", "lissa", "ekfac"]
_CANDIDATES = {"features": "feature kNN", "sketch": "gradient-sketch candidates"}
SOLVER_HELP = ("auto (default): exact for small models, else EK-FAC-preconditioned CG or LiSSA; all at the same "
               "damping (1e-3) and curvature (hessian)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayif", description="Influence functions, the FastIF way, on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small MLP on scikit-learn's digits and explain a few predictions")
    demo.add_argument("--test-points", type=int, default=3, help="how many test points to explain")
    demo.add_argument("--top", type=int, default=5, help="harmful and helpful examples shown per test point")
    demo.add_argument("--train-size", type=int, default=1000, help="training examples (of 1797 digits)")
    demo.add_argument("--solver", choices=SOLVERS, default="auto", help=SOLVER_HELP)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--workers", type=int, default=2,
                      help="Ray worker actors, one model replica each (0: run in this process without Ray)")
    demo.add_argument("--gpu", action="store_true", help="one GPU per worker (falls back to CPU, and says so)")
    demo.add_argument("--address", default=None,
                      help="Ray cluster to join (default: RAY_ADDRESS, else start a local Ray)")
    demo.add_argument("--out", default="rayif-out", help="folder the parquet result goes to")
    demo.set_defaults(run=_demo)
    ex = sub.add_parser("explain", help="explain test points of your own model and parquet data")
    ex.add_argument("--task", required=True, help="module:callable returning a rayif.Task (zero arguments)")
    ex.add_argument("--train", required=True, help="training parquet file or folder")
    ex.add_argument("--test", required=True, help="test parquet file or folder")
    ex.add_argument("--out", default="rayif-out", help="folder for influence.parquet and batches/ (a rerun resumes)")
    ex.add_argument("--input-column", default="x")
    ex.add_argument("--target-column", default="y")
    ex.add_argument("--id-column", default="id", help="integer id column (default: row positions if absent)")
    ex.add_argument("--top", type=int, default=10)
    ex.add_argument("--solver", choices=SOLVERS, default="auto", help=SOLVER_HELP)
    ex.add_argument("--solver-option", action="append", default=[], metavar="KEY=JSON",
                    help="a solver config field, e.g. damping=0.005, curvature=\"ggn\", tol=0.001 (repeatable)")
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--group", action="store_true", help="one s_test for the mean test loss (group influence)")
    ex.add_argument("--k", type=int, default=None, help="candidates per test point (builds or reuses an index)")
    ex.add_argument("--candidates", choices=["features", "sketch"], default="features",
                    help="with --k: the k nearest in feature space (FastIF) or the k/2 + k/2 of largest and "
                         "smallest influence by gradient sketch")
    ex.add_argument("--sketch-dim", type=int, default=256, help="dimension of a gradient sketch (--candidates sketch)")
    ex.add_argument("--index-dir", default=None, help="where the FAISS index is kept and reused")
    ex.add_argument("--index-kind", choices=["flat", "ivf_flat", "ivf_pq"], default="flat")
    ex.add_argument("--workers", type=int, default=2, help="Ray workers (0: this process only)")
    ex.add_argument("--gpu", action="store_true")
    ex.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    ex.add_argument("--test-batch-size", type=int, default=256)
    ex.set_defaults(run=_explain)
    ix = sub.add_parser("index", help="build (or reuse) the FAISS index of a training set: features or gradient "
                                      "sketches")
    ix.add_argument("--task", required=True, help="module:callable returning a rayif.Task (zero arguments)")
    ix.add_argument("--train", required=True, help="training parquet file or folder")
    ix.add_argument("--out", required=True, help="index directory (index.faiss, meta.json)")
    ix.add_argument("--source", choices=["features", "sketch"], default="features")
    ix.add_argument("--kind", choices=["flat", "ivf_flat", "ivf_pq"], default="flat")
    ix.add_argument("--sketch-dim", type=int, default=256)
    ix.add_argument("--input-column", default="x")
    ix.add_argument("--target-column", default="y")
    ix.add_argument("--id-column", default="id")
    ix.add_argument("--seed", type=int, default=0)
    ix.add_argument("--rebuild", action="store_true", help="replace an index built otherwise")
    ix.add_argument("--gpu", action="store_true")
    ix.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    ix.set_defaults(run=_index)
    recall = sub.add_parser("recall", help="recall of the truly most harmful and helpful training points among "
                                           "feature-kNN and gradient-sketch candidates (FastIF Fig. 3a), digits "
                                           "MLP: table and PNG")
    recall.add_argument("--test-points", type=int, default=50)
    recall.add_argument("--top", type=int, default=10, help="the true top-m harmful to look for")
    recall.add_argument("--ks", default="10,25,50,100,200,300,500,750,1000", help="comma-separated k values")
    recall.add_argument("--kind", choices=["flat", "ivf_flat", "ivf_pq"], default="flat")
    recall.add_argument("--sources", default="features,sketch", help="comma-separated: features, sketch")
    recall.add_argument("--sketch-dim", type=int, default=256)
    recall.add_argument("--solver", choices=SOLVERS, default="exact")
    recall.add_argument("--seed", type=int, default=0)
    recall.add_argument("--out", default="rayif-out")
    recall.set_defaults(run=_recall)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .errors import RayifError

    try:
        return args.run(args)
    except RayifError as e:  # a user mistake: one line, exit 2 (as argparse does); -v shows the traceback
        if args.verbose:
            logging.getLogger("rayif").exception("rayif failed")
        print(f"rayif: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
