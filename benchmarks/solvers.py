"""Every s_test solver against exact influence at the same question, on two workloads, in one run.

    .venv/bin/python -m benchmarks.solvers            # digits and the 100k-row mixture (about 25 minutes)
    .venv/bin/python -m benchmarks.solvers --quick    # digits only (about 3 minutes)
    .venv/bin/python -m benchmarks.solvers --workloads cnn   # the digits CNN (about 20 minutes)

The question is the user's: the model's own weight decay (1e-2) in the curvature plus the default additive
damping (1e-3), the Hessian; 50 test points. For each solver, as a user calls it (``compute_s_test`` in this
process, factor fitting and scale estimation included), the table gives the time, the solver's iterations,
and the quality of the influence of every training example against exact: mean Pearson and Spearman over
test points, and the mean number of the exact top-10 harmful found in the solver's top-10.

* digits: the 64-32-10 tanh MLP (p = 2410, float64) on 1500 digits images; exact = explicit Hessian.
* mixture: a 64-64-10 tanh MLP (p = 4810, float64) on 100,000 points of a 10-class Gaussian mixture;
  exact = EK-FAC-preconditioned CG on full-data Hessian products to a relative residual of 1e-7 (the explicit
  Hessian would take 4810 products over 100k rows); plain CG is left out there (it is the slowest row).
* cnn: the digits CNN (``digits.make_model("cnn")``: two 3x3 convolutions with ReLU and max-pooling, then
  64-32-10 tanh; p = 3658) in float32, as users train one, on 1000 images, weight decay 1e-3; exact =
  explicit Hessian. Only the default solvers run there (auto, EK-FAC alone, ``CGConfig()``, ``LissaConfig()``).

"LiSSA, 0.1 defaults" is FastIF's recipe as rayif 0.2 ran it by default: unitless damping 0.01, i.e. an
additive ``0.01 * scale``: it answers a different question, which is what the table shows.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import scipy.stats as st
import torch

from rayif import AutoConfig, CGConfig, EKFACConfig, ExactConfig, LissaConfig, RunConfig
from rayif.api import test_job
from rayif.data import as_examples
from rayif.digits import digits_task, load_digits_split
from rayif.executors import make_executor
from rayif.grads import Objective
from rayif.ihvp import estimate_scale
from rayif.mixture import mixture_task
from rayif.runner import Runner

from ._common import print_table, write_json

TEST_POINTS = 50


def solve(task, train, test, solver) -> tuple[torch.Tensor, float, dict]:
    """``s_test`` as ``compute_s_test`` computes it, its wall time, and the runner's solver stats."""
    t0 = time.perf_counter()
    job = test_job(task, train, test, solver, 0, False, RunConfig())
    with make_executor(task, job.train, job.test, None, job.run) as ex:
        runner = Runner(job, ex)
        s = runner.s_test_all()
    return s, time.perf_counter() - t0, {**vars(runner.stats), "chosen": runner.choice["chosen"]}


def influence(task, train, s_tests: list[torch.Tensor], chunk: int = 2048) -> list[np.ndarray]:
    """``[m, n]`` influence of every training example for each ``s_test``, in one pass of training gradients."""
    obj = Objective(task)
    ex = as_examples(train)
    stacked = torch.cat(s_tests)
    parts = []
    for c in ex.chunks(chunk):
        parts.append((-(stacked @ obj.train_grads(c).T)).numpy())
    full = np.concatenate(parts, axis=1)
    return np.split(full, np.cumsum([len(s) for s in s_tests])[:-1])


def quality(exact: np.ndarray, got: np.ndarray) -> dict:
    p = [st.pearsonr(a, b)[0] for a, b in zip(exact, got, strict=True)]
    s = [st.spearmanr(a, b)[0] for a, b in zip(exact, got, strict=True)]
    top = [len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10])) for a, b in zip(exact, got, strict=True)]
    return {"pearson": float(np.mean(p)), "spearman": float(np.mean(s)), "top10": float(np.mean(top))}


def workload(name: str):
    if name == "digits":
        split = load_digits_split(n_train=1500, n_test=297, seed=0)
        task, sp = digits_task("mlp", split, weight_decay=1e-2)
        exact = ExactConfig()
    elif name == "cnn":
        split = load_digits_split(n_train=1000, n_test=200, seed=0, dtype=np.float32)
        task, sp = digits_task("cnn", split, weight_decay=1e-3, dtype=torch.float32, max_iter=300)
        exact = ExactConfig()
    else:
        task, sp = mixture_task(100_000, 1000, weight_decay=1e-2)
        exact = CGConfig(tol=1e-7, max_iter=2000)
    return task, (sp.x_train, sp.y_train), (sp.x_test[:TEST_POINTS], sp.y_test[:TEST_POINTS]), exact


def solvers(task, train, name: str) -> list[tuple[str, object]]:
    if name == "cnn":
        return [("auto (the default)", AutoConfig()), ("EK-FAC alone", EKFACConfig()),
                ("CG + EK-FAC (CGConfig())", CGConfig()), ("LiSSA() (new defaults)", LissaConfig())]
    old = LissaConfig(depth=1000, batch_size=32, repetitions=4, preconditioner=None, tol=None, tail_average=0.5)
    scale = estimate_scale(Objective(task), as_examples(train), old, seed=0)
    return [
        ("auto (the default)", AutoConfig()),
        ("EK-FAC alone", EKFACConfig()),
        ("K-FAC alone", EKFACConfig(eigen_correction=False)),
        *([("CG, no preconditioner", CGConfig(preconditioner=None))] if name == "digits" else []),
        ("CG + EK-FAC (CGConfig())", CGConfig()),
        ("CG + EK-FAC, tol 1e-2", CGConfig(tol=1e-2)),
        ("CG + EK-FAC, GGN", CGConfig(curvature="ggn")),
        ("LiSSA() (new defaults)", LissaConfig()),
        ("LiSSA, no preconditioner", LissaConfig(preconditioner=None)),
        ("LiSSA, 0.1 defaults", LissaConfig(depth=1000, batch_size=32, repetitions=4, damping=0.01 * scale,
                                             preconditioner=None, tol=None)),
        ("LiSSA, 0.1 shape, damping 1e-3", LissaConfig(depth=1000, batch_size=32, repetitions=4, preconditioner=None,
                                                        tol=None)),
    ]


def run(name: str) -> list[dict]:
    task, train, test, exact_cfg = workload(name)
    rows, s_tests = [], []
    solve(task, train, test, EKFACConfig())  # warm-up: torch.func's first calls in a process cost seconds
    s, secs, stats = solve(task, train, test, exact_cfg)
    rows.append({"workload": name, "solver": "exact", "seconds": secs, **stats})
    s_tests.append(s)
    print(f"{name}: exact in {secs:.1f}s", flush=True)
    for label, cfg in solvers(task, train, name):
        try:
            s, secs, stats = solve(task, train, test, cfg)
        except Exception as e:  # a diverging configuration is a result too
            rows.append({"workload": name, "solver": label, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            print(f"{name}: {label} failed: {e}", flush=True)
            continue
        rows.append({"workload": name, "solver": label, "seconds": secs, **stats})
        s_tests.append(s)
        print(f"{name}: {label} in {secs:.1f}s {stats}", flush=True)
    scored = [r for r in rows if "error" not in r]
    infl = influence(task, train, s_tests)
    for r, i in zip(scored, infl, strict=True):
        r.update(quality(infl[0], i))
    base = next(r["seconds"] for r in rows if r["solver"] == "EK-FAC alone" and "seconds" in r)
    for r in scored:
        r["vs_ekfac"] = r["seconds"] / base
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits only")
    ap.add_argument("--workloads", nargs="+", choices=["digits", "mixture", "cnn"], help="default: digits mixture")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/solvers.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for name in args.workloads or (["digits"] if args.quick else ["digits", "mixture"]):
        rows += run(name)
    print_table(f"s_test solvers vs exact influence, {TEST_POINTS} test points, damping 1e-3 + model's weight decay",
                rows, [("workload", "workload", "s"), ("solver", "solver", "s"), ("seconds", "s", ".1f"),
                       ("vs_ekfac", "x EK-FAC", ".2f"), ("iterations", "iters", "d"), ("capped", "capped", "d"),
                       ("pearson", "Pearson", ".4f"), ("spearman", "Spearman", ".4f"), ("top10", "top-10", ".1f"),
                       ("error", "error", "s")])
    name = "solvers" if args.workloads is None else "solvers_" + "_".join(args.workloads)
    write_json(name, {"test_points": TEST_POINTS, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
