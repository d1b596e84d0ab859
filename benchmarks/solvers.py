"""Every s_test solver against exact influence at the same question, with kronfluence beside them, in one run.

    .venv/bin/python -m benchmarks.solvers              # mixture, cnn, transformer + workers + batch (~40 min)
    .venv/bin/python -m benchmarks.solvers --quick      # digits only (about 1 minute)
    .venv/bin/python -m benchmarks.solvers --workloads cnn transformer --no-workers --no-batch

The question is the user's: the model's own weight decay in the curvature plus the default additive damping
(1e-3), the Hessian; 50 test points. Each solver runs as a user calls it (``compute_s_test`` in this process:
validation, factor fitting, auto's checks included); the table gives its time, its passes over the training
data (``iterations``), and the quality of the influence of every training example against exact: mean Pearson
and Spearman over test points, and the mean number of the exact top-10 harmful in the solver's top-10.

* digits (``--quick``): the 64-32-10 tanh MLP (p = 2410, float64) on 1500 images; exact = explicit Hessian.
* mixture: a 64-64-10 tanh MLP (p = 4810, float64) on 100,000 points of a 10-class Gaussian mixture; exact =
  CG to a relative residual of 1e-8 (the explicit Hessian would take 4810 products over 100k rows).
* cnn: the digits CNN (two 3x3 convolutions with ReLU and max-pooling, then 64-32-10 tanh; p = 3658) in
  float32 on 1000 images, weight decay 1e-3; exact = explicit Hessian.
* transformer: ``rayif.tokens``' 2-layer encoder on 2000 padded sequences (dict batches, float64), influence
  on its top layers (p = 594); exact = explicit Hessian.

kronfluence (the ``bench`` extra; EK-FAC of the Fisher over its tracked ``nn.Linear`` / ``nn.Conv2d``) runs
in the same process with the same damping. ``--workers``: one auto solve of the mixture on 1 and on 2 Ray
workers (one CPU each), bit-identical. ``--batch``: 1000 test points of the mixture against the 50-point run,
per test point (and the first 10 points' influence, one run against the other); ``--batch32``: the same in
float32, auto against CG. ``--self-influence``: every row's self-influence of a 20k-row mixture, the explicit
matrix from float64 products against auto's, from float32 products checked in float64.
The frontier (seconds against Spearman) is drawn to ``benchmarks/img/solvers_frontier.png``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import scipy.stats as st
import torch

import rayif
from rayif import AutoConfig, CGConfig, EKFACConfig, ExactConfig, LissaConfig, RunConfig, ScalingConfig
from rayif.api import task_examples, test_job
from rayif.digits import digits_task, load_digits_split
from rayif.executors import make_executor
from rayif.grads import Objective
from rayif.mixture import mixture_task
from rayif.runner import Runner
from rayif.task import model_fingerprint
from rayif.tokens import TOP_LAYERS, make_tokens, token_task

from . import _kronfluence
from ._common import RESULTS, high_water_mib, peak_rss_mib, print_table, write_json

TEST_POINTS = 50
DAMPING = AutoConfig().damping
FRONTIER = Path(__file__).parent / "img" / "solvers_frontier.png"


def solve(task, train, test, solver, scaling=None, run=None) -> tuple[torch.Tensor, float, dict]:
    """``s_test`` as ``compute_s_test`` computes it, its wall time, and the runner's solver stats."""
    t0 = time.perf_counter()
    job = test_job(task, train, test, solver, 0, False, run or RunConfig())
    with make_executor(task, job.train, job.test, scaling, job.run) as ex:
        runner = Runner(job, ex)
        s = runner.s_test_all()
    return s, time.perf_counter() - t0, {**vars(runner.stats), "chosen": runner.choice["chosen"],
                                         "curvature": runner.choice["curvature"], "reason": runner.choice["reason"],
                                         "probe": runner.choice.get("smallest_hessian_eigenvalue")}


def influence(task, train, s_tests: list[torch.Tensor], chunk: int = 2048) -> list[np.ndarray]:
    """``[m, n]`` influence of every training example for each ``s_test``, in one pass of training gradients."""
    obj = Objective(task)
    ex = task_examples(task, train, "training data")
    stacked = torch.cat(s_tests).to(obj.dtype)
    parts = [(-(stacked @ obj.train_grads(c).T)).double().numpy() for c in ex.chunks(chunk)]
    full = np.concatenate(parts, axis=1)
    return np.split(full, np.cumsum([len(s) for s in s_tests])[:-1])


def quality(exact: np.ndarray, got: np.ndarray) -> dict:
    p = [st.pearsonr(a, b)[0] for a, b in zip(exact, got, strict=True)]
    s = [st.spearmanr(a, b)[0] for a, b in zip(exact, got, strict=True)]
    top = [len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10])) for a, b in zip(exact, got, strict=True)]
    return {"pearson": float(np.mean(p)), "spearman": float(np.mean(s)), "top10": float(np.mean(top))}


def workload(name: str, test_points: int = TEST_POINTS):
    """``(task, train, test, exact solver, kronfluence's tracked modules)``."""
    modules = None
    if name == "digits":
        split = load_digits_split(n_train=1500, n_test=297, seed=0)
        task, sp = digits_task("mlp", split, weight_decay=1e-2)
        exact = ExactConfig()
    elif name == "cnn":
        split = load_digits_split(n_train=1000, n_test=200, seed=0, dtype=np.float32)
        task, sp = digits_task("cnn", split, weight_decay=1e-3, dtype=torch.float32, max_iter=300)
        exact = ExactConfig()
    elif name == "transformer":
        train, test = make_tokens(2000, seed=0), make_tokens(test_points, seed=1)
        task = token_task(train)
        modules = [n for n, m in task.model_factory().named_modules()
                   if isinstance(m, torch.nn.Linear) and (n + ".").startswith(TOP_LAYERS)]
        return task, train.batch(), test.batch(), ExactConfig(), modules
    else:
        task, sp = mixture_task(100_000, 1000, weight_decay=1e-2)
        exact = CGConfig(tol=1e-8, max_iter=2000)
    return (task, (sp.x_train, sp.y_train), (sp.x_test[:test_points], sp.y_test[:test_points]), exact, modules)


def solvers(name: str) -> list[tuple[str, object]]:
    """The rows of a workload: the default first, then the frontier's points."""
    rows = [("auto (the default)", AutoConfig()), ("EK-FAC alone", EKFACConfig()),
            ("K-FAC alone", EKFACConfig(eigen_correction=False))]
    if name in ("mixture", "digits"):  # MLPs: auto before the chain's explicit matrix (0.9.6), in the same run
        rows.insert(1, ("auto, chain=False (0.9.5's)", AutoConfig(chain=False)))
    rows += [(f"CG + EK-FAC, tol {t:g}", CGConfig(tol=t)) for t in (1e-1, 1e-2, 1e-3)]
    rows += [("CG, no preconditioner, tol 1e-3", CGConfig(preconditioner=None)),
             ("CG + EK-FAC, float64 products", CGConfig(mixed_precision=False)),
             ("LiSSA() (its defaults)", LissaConfig()),
             ("LiSSA, depth 500", LissaConfig(depth=500, tol=None))]
    return rows


def run(name: str) -> list[dict]:
    task, train, test, exact_cfg, modules = workload(name)
    rows, s_tests = [], []
    solve(task, train, test, EKFACConfig())  # warm-up: torch.func's first calls in a process cost seconds
    s, secs, stats = solve(task, train, test, exact_cfg)
    rows.append({"workload": name, "solver": "exact", "seconds": secs, **stats})
    s_tests.append(s)
    print(f"{name}: exact in {secs:.1f}s {stats}", flush=True)
    for label, cfg in solvers(name):
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
    if _kronfluence.AVAILABLE:
        values, secs = _kronfluence.influence(task.model_factory(), train, test, task.weight_decay + DAMPING, modules)
        rows.append({"workload": name, "solver": "kronfluence 1.0 EK-FAC (peer)", "seconds": secs,
                     **quality(infl[0], values)})
        print(f"{name}: kronfluence in {secs:.1f}s", flush=True)
    else:
        rows.append({"workload": name, "solver": "kronfluence (peer)", "error": _kronfluence.MISSING})
    peer = next((r for r in rows if r["solver"].startswith("kronfluence") and "seconds" in r), None)
    for r in rows:
        if "seconds" in r and peer is not None:
            r["vs_kronfluence"] = r["seconds"] / peer["seconds"]
    return rows


def workers() -> list[dict]:
    """One auto solve of the mixture on 1 and on 2 Ray workers (one CPU and one thread each)."""
    task, train, test, _, _ = workload("mixture")
    out, results = [], {}
    for k in (1, 2):
        scaling = ScalingConfig(num_workers=k, resources_per_worker={"CPU": 1})
        s, secs, stats = solve(task, train, test, AutoConfig(), scaling)
        results[k] = s
        out.append({"workers": k, "seconds": secs, **stats})
        print(f"mixture on {k} Ray worker(s): {secs:.1f}s {stats}", flush=True)
    for r in out:
        r["speedup"] = out[0]["seconds"] / r["seconds"]
        r["bit_identical"] = "yes" if torch.equal(results[r["workers"]], results[1]) else "NO"
    return out


def batch() -> list[dict]:
    """The mixture's 1000 test points against its first 50 (auto, in this process, batches of 256): seconds
    per test point, and the influence of every training row for the first 10 test points, one run against the
    other (50 points: CG; 1000: the explicit matrix since 0.9.3 for float32, 0.9.4 for float64)."""
    out, s_tests = [], []
    for points in (TEST_POINTS, 1000):
        task, train, test, _, _ = workload("mixture", points)
        if not out:
            solve(task, train, test, EKFACConfig())  # warm-up, as in run()
        s, secs, stats = solve(task, train, test, AutoConfig(), run=RunConfig(test_batch_size=256))
        s_tests.append(s[:10])
        out.append({"test_points": points, "test_batch_size": 256, "solver": "auto", "seconds": secs,
                    "per_point": secs / points, **stats})
        print(f"mixture, {points} test points in batches of 256, auto: {secs:.1f}s {stats}", flush=True)
    for r in out:
        r["per_point_vs_50"] = r["per_point"] / out[0]["per_point"]
    out[-1].update(quality(*influence(task, train, s_tests)))
    return out


def batch32(points: int = 1000, checked: int = 10) -> list[dict]:
    """The mixture trained in float32, ``points`` test points in batches of 256: auto (which takes the explicit
    matrix for this many right-hand sides since 0.9.3) against CG with recycling (its choice before), and the
    influence of every training row for the first ``checked`` test points, one against the other."""
    task, sp = mixture_task(100_000, 1000, weight_decay=1e-2, dtype=torch.float32)
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:points], sp.y_test[:points])
    solve(task, train, (test[0][:TEST_POINTS], test[1][:TEST_POINTS]), EKFACConfig())  # warm-up
    out, s_tests = [], []
    for label, cfg in (("CG + EK-FAC, recycled (0.9.2's choice)", CGConfig(tol=1e-5)), ("auto", AutoConfig())):
        s, secs, stats = solve(task, train, test, cfg, run=RunConfig(test_batch_size=256))
        s_tests.append(s[:checked])
        out.append({"solver": label, "test_points": points, "seconds": secs, "per_point": secs / points, **stats})
        print(f"float32 mixture, {points} test points, {label}: {secs:.1f}s {stats}", flush=True)
    cg, auto = influence(task, train, s_tests)
    out[-1].update(quality(cg, auto))
    for r in out:
        r["speedup"] = out[0]["seconds"] / r["seconds"]
    return out


def million(rows: int = 1_000_000, checked: int = 5) -> dict:
    """The default on a ``rows``-row mixture (50 test points), and its quality for the first ``checked`` of
    them against CG to a relative residual of 1e-8, checked in float64 (as the 100k run's exact), with the
    curvature ``auto`` answered with (the Gauss-Newton one where it found the Hessian indefinite). The
    reference takes longer than the default: it is kept in ``benchmarks/results/``, named by the model's
    weights, the curvature and the rows, and reused by a later run that asks the same question."""
    task, sp = mixture_task(rows, 1000, weight_decay=1e-2)
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:TEST_POINTS], sp.y_test[:TEST_POINTS])
    s, secs, stats = solve(task, train, test, AutoConfig())
    print(f"mixture {rows} rows, auto: {secs:.1f}s {stats}", flush=True)
    weights = model_fingerprint(task.model_factory())[:16]
    saved = RESULTS / f"million_reference_{rows}_{checked}_{stats['curvature']}_{weights}.pt"
    if saved.exists():
        kept = torch.load(saved, weights_only=False)
        ref, ref_secs, ref_stats = kept["reference"], kept["seconds"], kept["stats"]
        print(f"mixture {rows} rows, reference for {checked} test points: kept in {saved} ({ref_secs:.1f}s)")
    else:
        reference = CGConfig(curvature=stats["curvature"], tol=1e-8, max_iter=2000, recycle=0)
        ref, ref_secs, ref_stats = solve(task, train, (test[0][:checked], test[1][:checked]), reference)
        print(f"mixture {rows} rows, reference for {checked} test points: {ref_secs:.1f}s {ref_stats}", flush=True)
        saved.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"reference": ref, "seconds": ref_secs, "stats": ref_stats}, saved)
    exact, got = influence(task, train, [ref, s[:checked]])
    return {"rows": rows, "seconds": secs, **stats, "reference_seconds": ref_secs,
            "reference_iterations": ref_stats["iterations"], "checked_test_points": checked, **quality(exact, got)}


def self_influence(rows: int = 20_000) -> list[dict]:
    """Self-influence of every row of a ``rows``-row float64 mixture, in this process: the explicit matrix
    built from float64 products (0.9.3's choice, ``ExactConfig(chain=False)``, the ground truth) against
    ``auto``'s: since 0.9.6 the MLP's matrix from per-row factors (0.9.4-0.9.5: from float32 products, probed
    in float64). 0.9.3 measured its choice on all 100k rows against CG per chunk (958 s against ~34 h)."""
    task, sp = mixture_task(rows, 1000, weight_decay=1e-2)
    train = (sp.x_train, sp.y_train)
    out, values = [], []
    for label, cfg in (("exact, float64 products (0.9.3's choice)", ExactConfig(chain=False)), ("auto", AutoConfig())):
        t0 = time.perf_counter()
        table = rayif.self_influence(task, train, solver=cfg)
        secs = time.perf_counter() - t0
        meta = rayif.results.metadata(table)
        values.append(dict(zip(table["train_id"].to_pylist(), table["self_influence"].to_pylist(), strict=True)))
        out.append({"what": label, "rows": rows, "seconds": secs, "chosen": meta["solver_choice"]["chosen"],
                    "mixed_precision": meta["solver"]["mixed_precision"], "laps": meta["job"]["seconds"]})
        print(f"mixture self-influence, {rows} rows, {label}: {secs:.1f}s {out[-1]}", flush=True)
    want, got = values
    out[-1]["max_rel_diff"] = max(abs(got[i] - want[i]) / abs(want[i]) for i in want)
    out[-1]["spearman"] = float(st.spearmanr([want[i] for i in want], [got[i] for i in want])[0])
    for r in out:
        r["speedup"] = out[0]["seconds"] / r["seconds"]
    return out


def self_influence_cg(rows: int = 20_000, sample: int = 512) -> list[dict]:
    """CG's self-influence of ``sample`` rows of a ``rows``-row float64 mixture (``CGConfig()``, parts of 256
    rows) on 1 and on 2 Ray workers (one CPU each): since 0.9.5 one sharded solve per part, the later part from
    the first's Krylov space, so the two give the same bits (before, each worker solved whole parts with its
    own recycled space, and the bits depended on which worker solved which part)."""
    task, sp = mixture_task(rows, 1000, weight_decay=1e-2)
    out, values = [], []
    for k in (1, 2):
        t0 = time.perf_counter()
        table = rayif.self_influence(task, (sp.x_train, sp.y_train), solver=CGConfig(), train_ids=np.arange(sample),
                                     scaling_config=ScalingConfig(num_workers=k, resources_per_worker={"CPU": 1}))
        secs, job = time.perf_counter() - t0, rayif.results.metadata(table)["job"]
        values.append(table["self_influence"].to_pylist())
        out.append({"workers": k, "rows": rows, "sample": sample, "seconds": secs, **job["solver_stats"]})
        print(f"CG self-influence, {sample} of {rows} mixture rows, {k} worker(s): {secs:.1f}s {out[-1]}", flush=True)
    for r in out:
        r["speedup"] = out[0]["seconds"] / r["seconds"]
        r["bit_identical"] = "yes" if values[r["workers"] - 1] == values[0] else "NO"
    return out


def _peak_rss(which: str, path: str) -> float:
    """Peak RSS (MiB) of a fresh process that loads the 100k mixture's trained task and data from ``path``
    and runs ``which`` on them: ``"rayif"`` (auto, in this process: driver and worker in one) or
    ``"kronfluence"``."""
    import cloudpickle

    with open(path, "rb") as f:
        task, train, test = cloudpickle.load(f)
    if which == "rayif":
        solve(task, train, test, AutoConfig())
    else:
        _kronfluence.influence(task.model_factory(), train, test, task.weight_decay + DAMPING, None)
    return high_water_mib()


def memory() -> list[dict]:
    """rayif's default and kronfluence on the 100k mixture, each in its own fresh process: peak RSS. The
    model is trained here once (full-batch training would set both processes' peak)."""
    import multiprocessing as mp
    import tempfile

    import cloudpickle

    task, train, test, _, _ = workload("mixture")
    out = []
    with tempfile.TemporaryDirectory() as tmp, mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        path = str(Path(tmp) / "mixture.pkl")
        with open(path, "wb") as f:
            cloudpickle.dump((task, train, test), f)
        for which in ("rayif", "kronfluence"):
            if which == "kronfluence" and not _kronfluence.AVAILABLE:
                continue
            out.append({"what": which, "peak_rss_mib": pool.apply(_peak_rss, (which, path))})
            print(f"mixture, peak RSS of {which}: {out[-1]['peak_rss_mib']:.0f} MiB", flush=True)
    for r in out:
        r["vs_kronfluence"] = r["peak_rss_mib"] / out[-1]["peak_rss_mib"]
    return out


def frontier(rows: list[dict], path: Path = FRONTIER) -> None:
    """Seconds against Spearman with exact, one panel per workload; auto's point ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        pts = [r for r in rows if r["workload"] == name and "spearman" in r and r["solver"] != "exact"]
        for r in pts:
            auto, peer = r["solver"].startswith("auto"), r["solver"].startswith("kronfluence")
            ax.scatter(r["seconds"], r["spearman"], s=80 if auto else 30, marker="*" if peer else "o",
                       edgecolors="red" if auto else "none", facecolors="none" if auto else None)
            ax.annotate(r["solver"].split(" (")[0], (r["seconds"], r["spearman"]), fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("seconds (2-core CPU)")
        ax.set_ylabel("Spearman with exact influence")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits only, no Ray and no batch section")
    ap.add_argument("--workloads", nargs="*", choices=["digits", "mixture", "cnn", "transformer"],
                    help="default: mixture cnn transformer (none: only the workers and batch sections)")
    ap.add_argument("--no-workers", action="store_true", help="skip the 1 vs 2 Ray workers section")
    ap.add_argument("--no-batch", action="store_true", help="skip the 1000 test points section")
    ap.add_argument("--million", action="store_true", help="also the 1M-row mixture at the default (~30 min)")
    ap.add_argument("--batch32", action="store_true", help="also 1000 test points of a float32 mixture (~20 min)")
    ap.add_argument("--self-influence", action="store_true",
                    help="also every row's self-influence of a 20k-row mixture: float64 products vs auto (~5 min)")
    ap.add_argument("--self-influence-cg", action="store_true",
                    help="also CG's self-influence of 512 rows of a 20k-row mixture on 1 and 2 Ray workers (~4 min)")
    ap.add_argument("--memory", action="store_true", help="also peak RSS against kronfluence (fresh processes)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/solvers.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    names = args.workloads if args.workloads is not None else (
        ["digits"] if args.quick else ["mixture", "cnn", "transformer"])
    rows = []
    for name in names:
        rows += run(name)
    out = {"test_points": TEST_POINTS, "rows": rows, "peak_rss_mib": peak_rss_mib()}
    if rows:
        _table(rows)
        frontier(rows, FRONTIER if args.workloads is None else FRONTIER.with_name(f"solvers_frontier_{names[0]}.png"))
    if not (args.quick or args.no_workers):
        out["workers"] = workers()
        print_table("one solve of the mixture (auto) on Ray workers", out["workers"],
                    [("workers", "workers", "d"), ("seconds", "s", ".1f"), ("speedup", "speedup", ".2f"),
                     ("iterations", "passes", "d"), ("bit_identical", "bit-identical", "s")])
    if not (args.quick or args.no_batch):
        out["batch"] = batch()
        print_table("batch scoring on the mixture (in-process)", out["batch"],
                    [("test_points", "test points", "d"), ("test_batch_size", "batch", "d"), ("solver", "solver", "s"),
                     ("seconds", "s", ".1f"), ("per_point", "s / point", ".3f"),
                     ("per_point_vs_50", "x 50-point run", ".2f"), ("iterations", "passes", "d"),
                     ("chosen", "chosen", "s"), ("spearman", "Spearman vs 50-point", ".4f")])
    if args.batch32:
        out["batch32"] = batch32()
        print_table("1000 test points of the float32 mixture (in-process)", out["batch32"],
                    [("solver", "solver", "s"), ("chosen", "chosen", "s"), ("seconds", "s", ".1f"),
                     ("speedup", "speedup", ".2f"), ("iterations", "passes", "d"),
                     ("spearman", "Spearman vs CG", ".4f")])
    if args.self_influence:
        out["self_influence"] = self_influence()
        print_table("self-influence of every row of a 20k-row mixture (in-process)", out["self_influence"],
                    [("what", "what", "s"), ("chosen", "chosen", "s"), ("seconds", "s", ".1f"),
                     ("speedup", "speedup", ".2f"), ("max_rel_diff", "max rel diff", ".1e"),
                     ("spearman", "Spearman", ".6f")])
    if args.self_influence_cg:
        out["self_influence_cg"] = self_influence_cg()
        print_table("CG's self-influence of 512 rows of a 20k-row mixture on Ray workers", out["self_influence_cg"],
                    [("workers", "workers", "d"), ("seconds", "s", ".1f"), ("speedup", "speedup", ".2f"),
                     ("iterations", "passes", "d"), ("solves", "solves", "d"), ("bit_identical", "bit-identical", "s")])
    if args.memory:
        out["memory"] = memory()
        print_table("peak RSS on the 100k mixture, each in a fresh process", out["memory"],
                    [("what", "what", "s"), ("peak_rss_mib", "MiB", ".0f"), ("vs_kronfluence", "x kronfluence", ".2f")])
    if args.million:
        out["million"] = [million()]
        print_table("the default on 1M mixture rows", out["million"],
                    [("rows", "rows", "d"), ("seconds", "s", ".1f"), ("iterations", "passes", "d"),
                     ("chosen", "chosen", "s"), ("curvature", "curvature", "s"), ("pearson", "Pearson", ".4f"),
                     ("spearman", "Spearman", ".4f"), ("top10", "top-10", ".1f"),
                     ("reference_seconds", "reference s", ".1f")])
    name = "solvers" if args.workloads is None else "solvers_" + ("_".join(args.workloads) or "sections")
    write_json(name, out, args.out)


def _table(rows: list[dict]) -> None:
    print_table(f"s_test solvers vs exact influence, {TEST_POINTS} test points, damping 1e-3 + model's weight decay",
                rows, [("workload", "workload", "s"), ("solver", "solver", "s"), ("seconds", "s", ".1f"),
                       ("vs_kronfluence", "x kronfluence", ".2f"), ("iterations", "passes", "d"),
                       ("pearson", "Pearson", ".4f"), ("spearman", "Spearman", ".4f"), ("top10", "top-10", ".1f"),
                       ("error", "error", "s")])


if __name__ == "__main__":
    main()
