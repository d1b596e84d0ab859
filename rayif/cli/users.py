"""The commands that check and read results: self-influence, validate, show."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .jobs import columns_of, load_callable, load_task, solver_of


def self_influence(args: argparse.Namespace) -> int:
    from .. import RunConfig, ScalingConfig, write_parquet
    from .. import self_influence as compute
    from ..data import read_examples
    from ..errors import RayifError

    task = load_task(args.task)
    train = read_examples(args.train, name="training data", **columns_of(args, task))
    ids = None
    if args.sample is not None:
        if not 1 <= args.sample <= len(train):
            raise RayifError(f"--sample must be between 1 and the training size {len(train)}, got {args.sample}")
        ids = np.sort(np.random.default_rng(args.seed).choice(train.ids, size=args.sample, replace=False))
    t0 = time.perf_counter()
    table = compute(task, train, solver=solver_of(args), seed=args.seed, train_ids=ids,
                    scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.gpu),
                    run_config=RunConfig(chunk_size=args.chunk_size), address=args.address)
    path = write_parquet(table, Path(args.out) / "self_influence.parquet")
    print(f"self-influence of {table.num_rows} of {len(train)} training examples in {time.perf_counter() - t0:.1f}s "
          f"-> {path}; largest first (likely mislabelled or atypical):")
    for r in table.slice(0, args.show).to_pylist():
        print(f"  train {r['train_id']}: {r['self_influence']:.4g}")
    return 0


def validate(args: argparse.Namespace) -> int:
    from ..data import read_examples
    from ..errors import RayifError
    from ..scaling import ScalingConfig
    from ..validate import ValidateConfig, plot_validation
    from ..validate import validate as run_validation

    if args.digits:
        from ..digits import validation_setup

        task, split, retrain = validation_setup(args.digits, seed=args.seed)
        train, test = (split.x_train, split.y_train), (split.x_test, split.y_test)
        train_source = train
    else:
        if not (args.task and args.train and args.test):
            raise RayifError("validate needs --task, --train and --test (or --digits logistic|mlp)")
        task = load_task(args.task)
        cols = columns_of(args, task)
        train = read_examples(args.train, name="training data", **cols)
        test = read_examples(args.test, name="test data", **cols)
        train_source = args.train
        retrain = load_callable(args.retrain, "--retrain") if args.retrain else None
        if retrain is not None and not callable(retrain):
            raise RayifError(f"--retrain {args.retrain} is not callable")
    index = None
    if args.k is not None:
        from ..index import IndexConfig, build_index

        config = IndexConfig(kind=args.index_kind, source=args.candidates, sketch_dim=args.sketch_dim,
                             use_gpu=args.gpu, seed=args.seed)
        index = build_index(task, train_source, config, path=args.index_dir or Path(args.out) / "index",
                            num_rows=len(train[0]) if isinstance(train, tuple) else len(train),
                            input_column=args.input_column, id_column=args.id_column,
                            target_column=args.target_column, address=args.address)
    cfg = ValidateConfig(test_points=args.test_points, top=args.top, loo_test_points=args.loo_test_points,
                         loo_train_points=args.loo_train_points if retrain else 0, lds_subsets=args.lds_subsets,
                         lds_fraction=args.lds_fraction, seed=args.seed)
    scaling = ScalingConfig(num_workers=args.workers, use_gpu=args.gpu)
    t0 = time.perf_counter()
    report = run_validation(task, train, test, solver=solver_of(args), index=index, k=args.k, retrain=retrain,
                            config=cfg, scaling_config=scaling, address=args.address)
    report["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validate.json").write_text(json.dumps(report, indent=1))
    _print_report(report)
    print(f"wrote {out / 'validate.json'}")
    try:
        print(f"wrote {plot_validation(report, out / 'validate.png')}")
        if "recall" in report:
            import pyarrow as pa

            from ..recall import plot_recall

            print(f"wrote {plot_recall(pa.Table.from_pylist(report['recall']), out / 'recall.png')}")
    except RayifError as e:  # the report is the result; the pictures are optional
        print(f"no PNG: {e}")
    return 0


def _print_report(r: dict) -> None:
    m = len(r["test_ids"])
    f = r["fast_vs_full"]["solver"]
    print(f"fast solver ({r['solver']['method']}) vs full ({r['reference']['method']}), {m} test points x "
          f"{r['num_train']} training points:")
    print(f"  Pearson {f['pearson']['mean']:.4f} (min {f['pearson']['min']:.4f}), Spearman "
          f"{f['spearman']['mean']:.4f} (min {f['spearman']['min']:.4f})")
    for name, part in r["fast_vs_full"].items():
        for key, v in part.items():
            if key.startswith("top"):
                print(f"  {name}: {key.replace('_', ' ')} {v['mean']:.3f} (min {v['min']:.2f})")
    for row in r.get("recall", []):
        print(f"  recall of the full top among k={row['k']} {row['source']} candidates: harmful "
              f"{row['harmful_mean']:.3f}, helpful {row['helpful_mean']:.3f}")
    if "loo" in r:
        lo = r["loo"]
        print(f"leave-one-out, {lo['retrained']} models retrained, {lo['pairs']} (test, train) pairs: Pearson "
              f"{lo['pearson']:.4f}, Spearman {lo['spearman']:.4f}, same sign {lo['sign_agreement']:.3f}")
    if "lds" in r:
        ld = r["lds"]
        print(f"LDS over {ld['subsets']} random {ld['fraction']:.0%} subsets: full {ld['reference']['mean']:.4f} "
              f"(min {ld['reference']['min']:.4f}), fast solver {ld['solver']['mean']:.4f}")
    print(f"seconds: {r['seconds']}")


def show(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..errors import RayifError

    path = Path(args.results)
    if not path.exists():
        raise RayifError(f"{path} does not exist (a results folder, or an influence .parquet file)")
    table = pq.read_table(path) if path.is_file() else _read_folder(path)
    missing = {"test_id", "kind", "rank", "train_id", "influence"} - set(table.column_names)
    if missing:
        raise RayifError(f"{path} is not an influence result (no {sorted(missing)} columns)")
    mine = table.filter(pa.compute.equal(table["test_id"], args.test_id)).to_pylist()
    if not mine:
        have = sorted(set(table["test_id"].to_pylist()))
        raise RayifError(f"test point {args.test_id} is not in {path}; it holds {len(have)} test points, e.g. "
                         f"{have[:10]}")
    extra = _train_columns(args) if args.train else {}
    print(f"test point {args.test_id} ({path}); positive influence = harmful:")
    for kind in ("harmful", "helpful"):
        rows = sorted((r for r in mine if r["kind"] == kind), key=lambda r: r["rank"])[: args.top]
        print(f"  most {kind}:")
        for r in rows:
            more = "".join(f"  {c}={v}" for c, v in extra.get(r["train_id"], {}).items())
            print(f"    #{r['rank']:<3} train {r['train_id']:<8} {r['influence']:+.4g}{more}")
    return 0


def _read_folder(path: Path):
    from .. import read_results
    from ..errors import RayifError

    if (path / "influence.parquet").exists():  # rayif explain's folder
        import pyarrow.parquet as pq

        return pq.read_table(path / "influence.parquet")
    for folder in (path, path / "batches"):
        if any(folder.glob("batch-*.parquet")):
            return read_results(folder)
    raise RayifError(f"{path} holds no influence.parquet and no batch-*.parquet files")


def _train_columns(args: argparse.Namespace) -> dict[int, dict]:
    """``{train_id: {column: value}}`` of the ``--show-columns`` of the training parquet, for context."""
    import pyarrow.parquet as pq

    from ..errors import RayifError

    cols = [c for c in args.show_columns.split(",") if c]
    have = pq.read_schema(args.train if Path(args.train).is_file() else next(Path(args.train).glob("*.parquet")))
    missing = [c for c in [args.id_column, *cols] if c not in have.names]
    if missing:
        raise RayifError(f"--train {args.train} has no columns {missing}; it has {have.names}")
    t = pq.read_table(args.train, columns=[args.id_column, *cols])
    ids = t[args.id_column].to_pylist()
    return {i: {c: t[c][j].as_py() for c in cols} for j, i in enumerate(ids)}

