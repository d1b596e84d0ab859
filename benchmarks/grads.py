"""Per-example gradients by path (hooks, vmap, loop) and curvature products, on the zoo's models.

    .venv/bin/python -m benchmarks.grads              # every zoo model, about 3 minutes on 2 cores
    .venv/bin/python -m benchmarks.grads bert resnet  # some of them

For each model of ``rayif.zoo`` (float64, as trained there):

* per-example gradient throughput, rows per second, of each path ``rayif.per_example`` has (``hooks``: one
  batched backward and layer hooks; ``vmap``: ``torch.func`` over the examples; ``loop``: one backward per
  example) on one chunk of 64 training rows, the median of 3 calls after a warm-up call; ``-`` where a path
  cannot run the model (vmap on Hugging Face models, whose mask construction branches on data), and the
  path rayif chose. The loop is the baseline of the ratios.
* the time of one curvature product per vector (Hessian and GGN) for 32 vectors on 64 rows, as the solvers
  call it (``Objective.product``).

Every path's gradients are checked against the loop's first (1e-9 relative) before timing.
Prints the tables and writes ``benchmarks/results/grads.json``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from rayif import zoo
from rayif.api import task_examples
from rayif.grads import Objective
from rayif.per_example import PATHS

from ._common import print_table, write_json

ROWS, VECTORS = 64, 32


def _median(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name: str) -> dict:
    pr = zoo.problem(name)
    obj = Objective(pr.task)
    batch = task_examples(pr.task, pr.train, "training data").take(slice(0, ROWS)).batch
    row = {"model": name, "p": obj.num_params, "chosen": obj.grad_path(batch)}
    fn = obj.task.train_losses
    want = obj.per_example.run("loop", fn, batch, obj.names)
    scale = max(float(g.abs().max()) for g in want)
    for path in PATHS:
        try:
            got = obj.per_example.run(path, fn, batch, obj.names)
        except Exception as e:  # noqa: BLE001 - a path that cannot run this model
            row[f"{path}_why"] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
            continue
        err = max(float((g - w).abs().max()) for g, w in zip(got, want, strict=True)) / scale
        if err > 1e-9:
            raise AssertionError(f"{name}: the {path} path's gradients differ from the loop's by {err:.2e}")
        row[f"{path}_rows_s"] = ROWS / _median(lambda p=path: obj.per_example.run(p, fn, batch, obj.names))
    for path in PATHS:
        if row.get(f"{path}_rows_s"):
            row[f"{path}_x_loop"] = row[f"{path}_rows_s"] / row["loop_rows_s"]
    vectors = torch.randn(VECTORS, obj.num_params, dtype=obj.dtype, generator=torch.Generator().manual_seed(0))
    for curvature in ("hessian", "ggn"):
        seconds = _median(lambda c=curvature: obj.product(vectors, batch, c))
        row[f"{curvature}_us"] = seconds / VECTORS * 1e6
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(zoo.MODELS), help=f"some of {', '.join(zoo.MODELS)}")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/grads.json)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.models) - set(zoo.MODELS))
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(zoo.MODELS)}")
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    rows = [measure(name) for name in args.models]
    print_table(f"per-example gradients, rows/s on {ROWS} rows (x loop: against the per-example loop)", rows, [
        ("model", "model", "s"), ("p", "p", "d"), ("chosen", "rayif chose", "s"),
        ("hooks_rows_s", "hooks", ".0f"), ("vmap_rows_s", "vmap", ".0f"), ("loop_rows_s", "loop", ".0f"),
        ("hooks_x_loop", "hooks x loop", ".1f"), ("vmap_x_loop", "vmap x loop", ".1f")])
    print_table(f"curvature products, microseconds per vector ({VECTORS} vectors on {ROWS} rows)", rows, [
        ("model", "model", "s"), ("p", "p", "d"), ("hessian_us", "Hessian", ".0f"), ("ggn_us", "GGN", ".0f")])
    write_json("grads", {"rows_per_chunk": ROWS, "vectors": VECTORS, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
