"""Curvature-vector products: time per vector against the number of vectors, old path against new, one run.

    .venv/bin/python -m benchmarks.hvp            # about 3 minutes on 2 cores
    .venv/bin/python -m benchmarks.hvp --quick    # about 1 minute: 1, 16 and 256 vectors, float64 only

Every product is the curvature of the mean training loss on one batch of 64 rows (LiSSA's default batch),
times ``m`` vectors, ``m`` from 1 to 256, for

* the digits MLP (64-32-10 tanh, p = 2410),
* the digits CNN (two 3x3 convolutions with ReLU and max-pooling, then 64-32-10 tanh; p = 3658),
* the token transformer of ``rayif.tokens`` (2 encoder layers, d = 16, 8 tokens): its default selection,
  the top layer's feed-forward output, norm and the head (p = 594), and every parameter (p = 5058, through
  both attention layers),

in float64 and float32, on three paths:

* **old**: the Hessian through ``torch.autograd.grad(..., is_grads_batched=True)``, what rayif 0.3 ran (and
  what ``rayif.curvature`` still runs for a model ``torch.func`` cannot take). Its vmap loops over the vectors
  for activation and loss backwards (``tanh_backward``, log-softmax's, ``gelu_backward``, the double backward
  of a convolution, max-pooling's backward).
* **new**: the Hessian as ``Objective.product`` computes it now: through ``torch.func`` (``vmap`` over
  ``vjp`` of ``grad``), and below ``BATCHED_FROM`` (8) vectors the old path.
* **ggn**: the Gauss-Newton product as ``Objective.product`` computes it (``torch.func``, as in 0.3).

``--device cuda`` runs the products on a GPU (the models are trained on the CPU first). ``--profile`` adds
where the time of one LiSSA step goes on the digits CNN in float32 (a product for 50 vectors on 64 rows,
then the EK-FAC preconditioner): the profiler's table of operations.

Before timing, each model's new product is checked against the old one (1e-10 relative in float64), and
``rayif.curvature.unbatched_op`` reports any operation without a batching rule. Times are medians of
repeated calls after a warm-up call; the table prints microseconds per vector and the new path's speed-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch

from rayif import digits, tokens
from rayif.curvature import product, unbatched_op
from rayif.data import as_examples
from rayif.grads import Objective

from ._common import print_table, write_json

ROWS = 64  # --rows
PATHS = {"old": ("hessian", "autograd"), "new": ("hessian", None), "ggn": ("ggn", None)}


def workloads(dtype: torch.dtype, rows: int, device: str = "cpu"):
    """(name, Objective, batch) for each model, trained once."""
    npd = np.float64 if dtype == torch.float64 else np.float32
    sp = digits.load_digits_split(n_train=1000, n_test=200, dtype=npd)
    batch = as_examples((sp.x_train[:rows], sp.y_train[:rows])).to(device).batch
    out = []
    for kind in ("mlp", "cnn"):
        task, _ = digits.digits_task(kind, sp, weight_decay=1e-3, dtype=dtype, max_iter=100)
        out.append((f"digits {kind}", Objective(task, device), batch))
    data = tokens.make_tokens(256)
    task = tokens.token_task(data, dtype=dtype, pretrain_steps=100)
    tb = {k: torch.as_tensor(v, device=device) for k, v in data.batch(slice(0, rows)).items()}
    out.append(("transformer top", Objective(task, device), tb))
    def every_layer():
        model = task.model_factory()
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    every = dataclasses.replace(task, model_factory=every_layer, params=None)
    out.append(("transformer all", Objective(every, device), tb))
    return out


def per_vector_us(obj: Objective, batch, m: int, curvature: str, path: str, budget_s: float) -> float:
    v = torch.randn(m, obj.num_params, dtype=obj.dtype, generator=torch.Generator().manual_seed(m)).to(obj.device)
    sync = torch.cuda.synchronize if obj.device.type == "cuda" else (lambda: None)
    product(obj, v, batch, curvature, path=path)  # warm-up
    times: list[float] = []
    while len(times) < 3 and (sum(times) < budget_s or not times):
        sync()
        t0 = time.perf_counter()
        product(obj, v, batch, curvature, path=path)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / m * 1e6


def profile_lissa_step(vectors: int = 50) -> None:
    """The profiler's table for one LiSSA step on the digits CNN: product, preconditioner, update."""
    from torch.profiler import profile

    from rayif import LissaConfig
    from rayif.api import fit_factors
    from rayif.ihvp import kfac

    sp = digits.load_digits_split(n_train=1000, n_test=200, dtype=np.float32)
    task, _ = digits.digits_task("cnn", sp, weight_decay=1e-3, dtype=torch.float32, max_iter=100)
    obj = Objective(task)
    train = as_examples((sp.x_train, sp.y_train))
    pre = kfac.preconditioner(fit_factors(task, train, "ekfac", chunk_size=256), LissaConfig())
    v = torch.randn(vectors, obj.num_params, generator=torch.Generator().manual_seed(0))
    x = v.clone()
    batch = train.take(np.arange(ROWS)).batch

    def step():
        return x + pre(v - obj.product(x, batch) - 1e-3 * x) / 100.0

    step()
    t0 = time.perf_counter()
    for _ in range(5):
        step()
    print(f"\none LiSSA step, digits CNN float32, {vectors} vectors x {ROWS} rows: "
          f"{(time.perf_counter() - t0) / 5 * 1e3:.1f} ms (mean of 5)")
    with profile() as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1, 16, 256 vectors; float64 only")
    ap.add_argument("--budget", type=float, default=2.0, help="seconds of repeats per measurement (at most 3)")
    ap.add_argument("--rows", type=int, default=ROWS, help="rows per batch (LiSSA's B; 64 is its default)")
    ap.add_argument("--profile", action="store_true", help="profile one LiSSA step on the digits CNN (float32)")
    ap.add_argument("--device", default="cpu", help="where the products run: cpu (default) or cuda")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/hvp.json)")
    args = ap.parse_args(argv)
    sizes = (1, 16, 256) if args.quick else (1, 4, 16, 64, 256)
    dtypes = (torch.float64,) if args.quick else (torch.float64, torch.float32)
    torch.manual_seed(0)
    rows, checks = [], []
    for dtype in dtypes:
        for name, obj, batch in workloads(dtype, args.rows, args.device):
            v = torch.randn(3, obj.num_params, dtype=obj.dtype, generator=torch.Generator().manual_seed(7))
            v = v.to(obj.device)
            old = product(obj, v, batch, "hessian", path="autograd").double()
            new = product(obj, v, batch, "hessian", path="batched").double()
            err = float((new - old).norm() / old.norm())
            checks.append({"model": name, "dtype": str(dtype)[6:], "p": obj.num_params, "new_vs_old": err,
                           "unbatched_hessian": unbatched_op(obj, batch, "hessian"),
                           "unbatched_ggn": unbatched_op(obj, batch, "ggn")})
            if dtype == torch.float64 and err > 1e-10:
                raise SystemExit(f"{name}: new and old Hessian products differ by {err:.2e}")
            for m in sizes:
                r = {"model": name, "dtype": str(dtype)[6:], "p": obj.num_params, "vectors": m}
                for key, (curvature, path) in PATHS.items():
                    r[key] = per_vector_us(obj, batch, m, curvature, path, args.budget)
                r["speedup"] = r["old"] / r["new"]
                rows.append(r)
                print(f"  {name} {r['dtype']} m={m}: old {r['old']:.0f} us, new {r['new']:.0f} us, "
                      f"ggn {r['ggn']:.0f} us per vector", flush=True)
    print_table("checks: new Hessian product vs old (relative), operations without a batching rule", checks,
                [("model", "model", "s"), ("dtype", "dtype", "s"), ("p", "p", "d"), ("new_vs_old", "rel. diff", ".1e"),
                 ("unbatched_hessian", "unbatched (H)", "s"), ("unbatched_ggn", "unbatched (GGN)", "s")])
    print_table(f"microseconds per vector, one product on {args.rows} rows (median), {args.device}", rows,
                [("model", "model", "s"), ("dtype", "dtype", "s"), ("vectors", "vectors", "d"),
                 ("old", "old Hessian", ".0f"), ("new", "new Hessian", ".0f"), ("speedup", "x old", ".2f"),
                 ("ggn", "GGN", ".0f")])
    if args.profile:
        profile_lissa_step()
    name = "hvp" if args.rows == ROWS else f"hvp_rows{args.rows}"
    name += "" if args.device == "cpu" else f"_{args.device}"
    write_json(name, {"rows_per_batch": args.rows, "checks": checks, "results": rows}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
