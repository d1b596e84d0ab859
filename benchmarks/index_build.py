"""Streaming FAISS index build through Ray Data against a plain single-process loop over the same rows.

    .venv/bin/python -m benchmarks.index_build            # 1,000,000 x 64 synthetic parquet, ~2 minutes
    .venv/bin/python -m benchmarks.index_build --rows 200000
    .venv/bin/python -m benchmarks.index_build --source sketch   # gradient sketches (d = 256)

The data: ``--rows`` rows of 64 float32 inputs and 10 float32 targets in 16 parquet files (``x``, ``y``
fixed-size lists, ``id``), written once to ``benchmarks/results/data`` and reused. The model: a small MLP
64-128-64-10 (ReLU), MSE loss. Features: the 64-d input of the last layer, into a flat L2 index. Sketches
(``--source sketch``): the per-example gradient of all 17,226 parameters (stage 1 is the identity at this
size), projected on a basis fitted from the first 2048 rows, into a flat inner-product index; the loop
makes the same sketches with ``GradientSketch`` and the same basis.

* **single process**: ``pyarrow`` reads each file in batches, the model runs on them (torch on every core),
  FAISS adds the features with their ids. Nothing else runs.
* **rayif**: ``build_index(task, parquet_dir)``: Ray Data read tasks, an autoscaling pool of feature actors
  (``map_batches``), features streamed to the driver's FAISS index. The local Ray is started before the
  clock runs; the actor pool's start-up is inside it.

Memory: the peak resident set of this (driver) process, sampled every 50 ms, and the peak summed over
this process and every Ray worker process (``ray::`` in its command line), against the index's own size.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from rayif import Task, as_examples
from rayif.index import IndexConfig, build_index

from ._common import RESULTS, Memory, print_table, write_json

DIM, FILES = 64, 16


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(DIM, 128), torch.nn.ReLU(), torch.nn.Linear(128, DIM),
                               torch.nn.ReLU(), torch.nn.Linear(DIM, 10))


def _mse(out, y):
    return ((out - y) ** 2).mean(1)


def write_data(rows: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = RESULTS / "data" / f"synthetic_{rows}x{DIM}_y"
    if out.exists() and len(list(out.glob("*.parquet"))) == FILES:
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = -(-rows // FILES)
    for f in range(FILES):
        lo, hi = f * per, min(rows, (f + 1) * per)
        x = rng.standard_normal((hi - lo, DIM), dtype=np.float32)
        y = rng.standard_normal((hi - lo, 10), dtype=np.float32)
        table = pa.table({"id": np.arange(lo, hi, dtype=np.int64),
                          "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DIM),
                          "y": pa.FixedSizeListArray.from_arrays(pa.array(y.ravel()), 10)})
        pq.write_table(table, out / f"part-{f:03d}.parquet")
    return out


def single_process_sketch(data: Path, task: Task, batch: int, config: IndexConfig):
    """The same sketches in a plain loop: basis from the first ``basis_rows`` rows, then every batch."""
    import faiss
    import pyarrow.parquet as pq

    from rayif.grads import Objective
    from rayif.index.sketch import GradientSketch, Sketcher, fit_basis

    obj = Objective(task)

    def batches():
        for f in sorted(data.glob("*.parquet")):
            for b in pq.ParquetFile(f).iter_batches(batch_size=batch):
                x = torch.from_numpy(b.column("x").flatten().to_numpy().reshape(-1, DIM))
                y = torch.from_numpy(b.column("y").flatten().to_numpy().reshape(-1, 10))
                yield b.column("id").to_numpy(), (x, y)

    first = pq.ParquetFile(sorted(data.glob("*.parquet"))[0]).read_row_group(0).slice(0, config.basis_rows)
    x = torch.from_numpy(first.column("x").combine_chunks().flatten().to_numpy().reshape(-1, DIM))
    y = torch.from_numpy(first.column("y").combine_chunks().flatten().to_numpy().reshape(-1, 10))
    stage1 = Sketcher(obj, config.sketch_width, config.seed)
    basis = fit_basis(stage1.sketch((x, y)).detach().float(), config.sketch_dim)
    gs = GradientSketch(obj, config.sketch_width, config.seed, basis)
    index = faiss.index_factory(gs.dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    for ids, b in batches():
        index.add_with_ids(gs.train(b), ids)
    return index


def single_process(data: Path, model: torch.nn.Module, batch: int):
    import faiss
    import pyarrow.parquet as pq

    index = faiss.index_factory(DIM, "IDMap2,Flat")
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    head = torch.nn.Sequential(*list(model.children())[:-1])
    assert list(model.children())[-1] is last
    with torch.no_grad():
        for f in sorted(data.glob("*.parquet")):
            for b in pq.ParquetFile(f).iter_batches(batch_size=batch):
                x = b.column("x").flatten().to_numpy().reshape(-1, DIM)
                feats = head(torch.from_numpy(x)).numpy()
                index.add_with_ids(np.ascontiguousarray(feats), b.column("id").to_numpy())
    return index


def _ivf_check(task, data: Path, flat, batch_size: int):
    """IVF-Flat at the defaults on the same rows: build time, recall@10 against flat, queries per second."""
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    ivf = build_index(task, str(data), IndexConfig(kind="ivf_flat", batch_size=batch_size))
    ivf_s = time.perf_counter() - t0
    x = pq.read_table(sorted(data.glob("*.parquet"))[0]).column("x").combine_chunks()
    x = x.flatten().to_numpy().reshape(-1, DIM)[:1000] + 0.1  # queries near, not on, training rows
    q = flat.features_of(task, as_examples((x, np.zeros(len(x)))))
    t0 = time.perf_counter()
    a = flat.search(q, 10)[0]
    q_flat = len(q) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    b = ivf.search(q, 10)[0]
    q_ivf = len(q) / (time.perf_counter() - t0)
    recall = float(np.mean([len(np.intersect1d(i, j)) / 10 for i, j in zip(a, b, strict=True)]))
    return ivf_s, {"nlist": ivf.meta["nlist"], "nprobe": ivf.meta["nprobe"], "recall": recall}, q_flat, q_ivf


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=IndexConfig().batch_size)
    ap.add_argument("--source", choices=["features", "sketch"], default="features")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/index_build[_sketch].json)")
    args = ap.parse_args(argv)
    config = IndexConfig(batch_size=args.batch_size, source=args.source)
    import ray

    data = write_data(args.rows)
    model = make_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def factory():
        m = make_model()
        m.load_state_dict(state)
        return m

    task = Task(model_factory=factory, loss=_mse)
    dim = DIM if args.source == "features" else config.sketch_dim
    index_mib = args.rows * (dim * 4 + 8) / 2**20
    print(f"{args.rows:,} rows x {DIM} in {FILES} parquet files; MLP 64-128-64-10; {args.source}: flat index "
          f"~{index_mib:.0f} MiB; torch threads {torch.get_num_threads()}")

    with Memory() as mem_single:
        t0 = time.perf_counter()
        if args.source == "sketch":
            base = single_process_sketch(data, task, args.batch_size, config)
        else:
            base = single_process(data, model, args.batch_size)
        single_s = time.perf_counter() - t0
    print(f"single process: {single_s:.2f} s")

    ray.init(include_dashboard=False, log_to_driver=False)
    with Memory() as mem_ray:
        t0 = time.perf_counter()
        idx = build_index(task, str(data), config)
        ray_s = time.perf_counter() - t0
    first_s, first_rows = idx.meta["first_batch_seconds"], idx.meta["first_batch_rows"]
    steady = (args.rows - first_rows) / (ray_s - first_s)
    print(f"rayif build_index: {ray_s:.2f} s; the first features reached the index after {first_s:.2f} s "
          f"(pipeline start-up), then {steady:,.0f} rows/s")
    assert len(idx) == args.rows

    if args.source == "sketch":  # the same vectors as the loop's (to float rounding)
        probe = np.arange(0, args.rows, max(1, args.rows // 1000), dtype=np.int64)
        diff = np.abs(idx.index.reconstruct_batch(probe) - base.reconstruct_batch(probe)).max()
        print(f"largest difference between the pipeline's and the loop's sketches (1000 rows): {diff:.2e}")
    del base
    ivf_s, recall, q_flat, q_ivf = (None, {}, None, None) if args.source == "sketch" else _ivf_check(
        task, data, idx, args.batch_size)
    rows = [
        {"method": "single-process loop", "seconds": single_s, "rows_s": args.rows / single_s, "ratio": 1.0,
         "own": mem_single.driver, "total": mem_single.total},
        {"method": "rayif build_index (Ray Data)", "seconds": ray_s, "rows_s": args.rows / ray_s,
         "ratio": single_s / ray_s, "own": mem_ray.driver, "total": mem_ray.total},
        {"method": "  after its first batch (steady state)", "seconds": ray_s - first_s, "rows_s": steady,
         "ratio": steady / (args.rows / single_s)},
    ]
    print_table(f"streaming index build, {args.rows:,} rows (baseline: single-process loop, this run); "
                f"index {index_mib:.0f} MiB",
                rows, [("method", "method", "s"), ("seconds", "seconds", ".2f"), ("rows_s", "rows/s", ",.0f"),
                       ("ratio", "x single", ".2f"), ("own", "driver peak RSS MiB", ".0f"),
                       ("total", "driver+workers MiB", ".0f")])
    print(f"\nrows/s ratio {single_s / ray_s:.2f} (goal >= 0.8); driver peak RSS {mem_ray.driver:.0f} MiB vs index "
          f"{index_mib:.0f} MiB + 1024 (goal: at most {index_mib + 1024:.0f})")
    if recall:
        print(f"IVF-Flat at the defaults (nlist {recall['nlist']}, nprobe {recall['nprobe']}): built in {ivf_s:.1f} "
              f"s, recall@10 against flat {recall['recall']:.3f} over 1000 queries; search {q_flat:,.0f} queries/s "
              f"flat, {q_ivf:,.0f} IVF")
    write_json("index_build" if args.source == "features" else "index_build_sketch", {
        "rows": args.rows, "dim": dim, "source": args.source, "files": FILES, "batch_size": args.batch_size,
        "index_mib": index_mib,
        "single_process": {"seconds": single_s, "rows_per_s": args.rows / single_s, "peak_rss_mib": mem_single.driver},
        "rayif": {"seconds": ray_s, "rows_per_s": args.rows / ray_s, "peak_rss_mib": mem_ray.driver,
                  "peak_rss_with_workers_mib": mem_ray.total, "first_batch_seconds": first_s,
                  "steady_rows_per_s": steady},
        "ratio": single_s / ray_s,
        "ivf_flat": {"build_seconds": ivf_s, **recall, "flat_queries_per_s": q_flat, "ivf_queries_per_s": q_ivf}
        if recall else None,
    }, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
