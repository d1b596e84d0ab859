"""The commands that run influence jobs: demo, explain, index, recall."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..results import metadata

_CANDIDATES = {"features": "feature kNN", "sketch": "gradient-sketch candidates"}


def solver_of(args: argparse.Namespace):
    """The solver config of ``--solver`` and its ``--solver-option KEY=JSON`` fields."""
    from ..config import solver_from_dict
    from ..errors import RayifError

    options = {}
    for o in getattr(args, "solver_option", None) or []:
        key, eq, value = o.partition("=")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            eq = ""
        if not eq:
            raise RayifError(f"--solver-option takes KEY=JSON (e.g. depth=2000), got {o!r}")
    return solver_from_dict({"method": args.solver, **options})


def demo(args: argparse.Namespace) -> int:
    import torch

    from .. import digits, explain, write_parquet
    from ..scaling import ScalingConfig

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
    solver = solver_of(args)
    scaling = ScalingConfig(num_workers=args.workers, use_gpu=args.gpu)
    t1 = time.perf_counter()
    table = explain(task, (split.x_train, split.y_train), {"x": split.x_test[picks], "y": split.y_test[picks],
                                                            "id": picks}, top=args.top, solver=solver, seed=args.seed,
                    scaling_config=scaling, address=args.address)
    took = time.perf_counter() - t1
    if args.workers > 0:
        workers = metadata(table)["workers"]
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
    choice = metadata(table)["solver_choice"]
    solver_said = choice["chosen"] + (f" chosen by {args.solver}" if args.solver == "auto" else "")
    print(f"\ninfluence ({solver_said}, {where}) took {took:.1f}s; {table.num_rows} rows written to {out}")
    print("positive influence = harmful: removing that example would lower this test point's loss")
    return 0


def recall(args: argparse.Namespace) -> int:
    import torch

    from .. import RayifError, digits, write_parquet
    from ..index import IndexConfig, build_index
    from ..recall import candidate_recall, plot_recall

    split = digits.load_digits_split(n_train=1000, n_test=200, seed=args.seed)
    task, _ = digits.digits_task("mlp", split, weight_decay=1e-3, seed=args.seed, dtype=torch.float64)
    out, train = Path(args.out), (split.x_train, split.y_train)
    indexes = {}
    for source in args.candidates.split(","):
        config = IndexConfig(kind=args.index_kind, source=source, sketch_dim=args.sketch_dim, seed=args.seed)
        name = "feature kNN" if source == "features" else f"gradient sketch (d={args.sketch_dim})"
        indexes[name] = build_index(task, train, config, path=out / f"digits-mlp-{source}-{args.index_kind}-index",
                                    num_rows=len(split.x_train))
    ks = sorted({min(int(k), len(split.x_train)) for k in args.ks.split(",")})
    test = (split.x_test[: args.test_points], split.y_test[: args.test_points])
    t0 = time.perf_counter()
    table = candidate_recall(task, train, test, indexes, ks, top=args.top, solver=solver_of(args), seed=args.seed)
    print(f"recall of the true top-{args.top} harmful and helpful (influence over all {len(split.x_train)} training "
          f"digits, {args.solver}) among each index's k candidates ({args.index_kind} index), {args.test_points} test "
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


def index(args: argparse.Namespace) -> int:
    from ..data import read_examples
    from ..index import IndexConfig, build_index

    task = load_task(args.task)
    n = len(read_examples(args.train, name="training data", **columns_of(args, task)))
    config = IndexConfig(kind=args.index_kind, source=args.candidates, sketch_dim=args.sketch_dim, use_gpu=args.gpu,
                         seed=args.seed)
    t0 = time.perf_counter()
    idx = build_index(task, args.train, config, path=args.out, rebuild=args.rebuild, input_column=args.input_column,
                      id_column=args.id_column, target_column=args.target_column, num_rows=n, address=args.address)
    extra = ""
    if idx.source == "sketch" and idx.meta["sketch"]["energy_kept"] is not None:
        extra = f"; the basis keeps {idx.meta['sketch']['energy_kept']:.4f} of the sampled gradient energy"
    print(f"{args.candidates} index ({args.index_kind}) of {len(idx)} x {idx.dim} in {args.out} "
          f"({time.perf_counter() - t0:.1f}s{extra})")
    return 0


def columns_of(args: argparse.Namespace, task) -> dict:
    """The ``read_examples`` column options of a command's ``--input/--target/--id-column`` flags."""
    return {"input_column": args.input_column, "target_column": args.target_column, "id_column": args.id_column,
            "dict_batch": task.dict_batches}


def load_callable(spec: str, flag: str):
    """``module:name`` -> that object (a ``--task`` or ``--retrain``)."""
    import importlib

    from ..errors import RayifError

    module, _, name = spec.partition(":")
    if not module or not name:
        raise RayifError(f"{flag} must be 'module:callable', got {spec!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise RayifError(f"{flag} {spec}: {e} (under `ray job submit`, ship your code with --working-dir)") from None


def load_task(spec: str):
    """``module:callable`` -> the Task the zero-argument callable returns (or the Task object itself)."""
    from ..errors import RayifError
    from ..task import Task

    obj = load_callable(spec, "--task")
    task = obj if isinstance(obj, Task) else obj()
    if not isinstance(task, Task):
        raise RayifError(f"--task {spec} returned {type(task).__name__}, expected a rayif.Task")
    return task


def explain(args: argparse.Namespace) -> int:
    from .. import explain, write_parquet
    from ..config import RunConfig
    from ..data import read_examples
    from ..scaling import ScalingConfig

    task = load_task(args.task)
    cols = columns_of(args, task)
    train = read_examples(args.train, name="training data", **cols)
    test = read_examples(args.test, name="test data", **cols)
    solver = solver_of(args)
    scaling = ScalingConfig(num_workers=args.workers, use_gpu=args.gpu)
    index = None
    if args.k is not None:
        from ..index import IndexConfig, build_index

        config = IndexConfig(kind=args.index_kind, use_gpu=args.gpu, source=args.candidates,
                             sketch_dim=args.sketch_dim)
        index = build_index(task, args.train, config, path=args.index_dir, input_column=args.input_column,
                            id_column=args.id_column, target_column=args.target_column, num_rows=len(train),
                            address=args.address)
    out = Path(args.out)
    run = RunConfig(output_dir=str(out / "batches"), test_batch_size=args.test_batch_size)
    t0 = time.perf_counter()
    table = explain(task, train, test, top=args.top, solver=solver, seed=args.seed, group=args.group,
                    scaling_config=scaling, run_config=run, address=args.address, index=index, k=args.k)
    path = write_parquet(table, out / "influence.parquet")
    print(f"{len(test)} test points x top {args.top} harmful and helpful of {len(train)} training examples"
          f"{f' ({_CANDIDATES[args.candidates]}, k={args.k})' if args.k else ''} in {time.perf_counter() - t0:.1f}s "
          f"-> {path}")
    return 0


