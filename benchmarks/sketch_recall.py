"""Candidate recall: gradient sketches against FastIF's feature kNN, on the exact top-10 harmful and helpful.

    .venv/bin/python -m benchmarks.sketch_recall                      # digits and the 100k mixture: ~8 min,
                                                                      # plus ~45 min once for the mixture's truth
    .venv/bin/python -m benchmarks.sketch_recall --workloads digits   # about a minute

* digits: the `rayif recall` MLP (64-32-10 tanh, p = 2410, float64, weight decay 1e-3), 1000 training rows;
  truth by the exact solver.
* mixture: a 64-64-10 tanh MLP (p = 4810) on 100,000 points of a 10-class Gaussian mixture (weight decay
  1e-2); truth by `CGConfig()` (Spearman 0.9999 against PCG to 1e-7 in benchmarks/solvers.py), cached in
  benchmarks/results/cache after the first run.

50 test points each, damping 1e-3 (every solver's default). A test point's recall at k is the share of its
true top-10 harmful (and, separately, helpful) training points among its k candidates: the k nearest in
feature space (a flat L2 FAISS index of the task's features), or for a sketch the k/2 of largest and k/2 of
smallest sketched influence (flat inner-product FAISS index). Sketches are made in this process
(`GradientSketch`, identical to the Ray Data index: tests/test_sketch.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from rayif import compute_s_test
from rayif.config import CGConfig, ExactConfig
from rayif.data import as_examples
from rayif.digits import digits_task, load_digits_split
from rayif.grads import Objective
from rayif.index import FeatureIndex, IndexConfig
from rayif.index.sketch import GradientSketch, Sketcher, fit_basis
from rayif.mixture import mixture_task
from rayif.recall import true_top

from ._common import RESULTS, print_table, write_json

TEST_POINTS, TOP = 50, 10
CACHE = RESULTS / "cache"


def workload(name: str):
    if name == "digits":
        split = load_digits_split(n_train=1000, n_test=200, seed=0)
        task, sp = digits_task("mlp", split, weight_decay=1e-3, seed=0, dtype=torch.float64)
        solver = ExactConfig()
    else:
        task, sp = mixture_task(100_000, 1000, weight_decay=1e-2)
        solver = CGConfig()
    return task, (sp.x_train, sp.y_train), (sp.x_test[:TEST_POINTS], sp.y_test[:TEST_POINTS]), solver


def truth(name: str, task, train, test, solver) -> tuple[torch.Tensor, np.ndarray]:
    """``(s_test [m, p], influence [m, n])``, cached for the mixture."""
    s_path, v_path = CACHE / f"{name}_s_test.npy", CACHE / f"{name}_influence.npy"
    if s_path.exists() and v_path.exists():
        return torch.from_numpy(np.load(s_path)), np.load(v_path)
    s = compute_s_test(task, train, test, solver)
    obj = Objective(task)
    v = np.concatenate([-(s @ obj.train_grads(c).T).numpy() for c in as_examples(train).chunks(4096)], axis=1)
    if name != "digits":
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(s_path, s.numpy())
        np.save(v_path, v)
    return s, v


def flat_index(base: np.ndarray, source: str) -> FeatureIndex:
    """rayif's own flat index of vectors computed here (L2 for features, inner product for sketches)."""
    return FeatureIndex.from_arrays(np.arange(len(base)), base, IndexConfig(source=source))


def recall(cand: np.ndarray, truth_ids: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(t, c)) / TOP for t, c in zip(truth_ids, cand, strict=True)]))


def sketch_candidates(gs: GradientSketch, train_vecs: np.ndarray, s: torch.Tensor, k: int) -> np.ndarray:
    return flat_index(train_vecs, "sketch").sketch_halves(gs.query(s), k)


def sketch_all(gs: GradientSketch, train, batch: int = 4096) -> np.ndarray:
    return np.concatenate([gs.train(c.batch) for c in as_examples(train).chunks(batch)])


def run(name: str, dims: list[int], widths: list[int]) -> dict:
    t0 = time.perf_counter()
    task, train, test, solver = workload(name)
    n = len(train[0])
    s, values = truth(name, task, train, test, solver)
    harmful, helpful = true_top(values, np.arange(n), TOP)
    print(f"\n{name}: n = {n}, p = {s.shape[1]}, truth ready in {time.perf_counter() - t0:.0f} s")
    k_bar = max(n // 100, 100)
    ks = sorted({max(2, int(f * n)) for f in (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)} | {k_bar})
    obj = Objective(task)
    model = task.build_model()
    feats = np.concatenate([task.compute_features(model, c.batch).numpy() for c in as_examples(train).chunks(8192)])
    qf = task.compute_features(model, torch.as_tensor(test[0])).numpy()
    knn = flat_index(feats, "features").search(qf, max(ks))[0]
    curves = [{"index": "feature kNN", "k": k, "fraction": k / n, "harmful": recall(knn[:, :k], harmful),
               "helpful": recall(knn[:, :k], helpful)} for k in ks]
    sample = as_examples(train).take(slice(0, 2048))
    sweep = []
    for width in widths:
        stage1 = Sketcher(obj, width, 0)
        first = torch.cat([stage1.sketch(c.batch).detach().float() for c in sample.chunks(1024)])
        seen = set()
        for d in dims:
            if d > stage1.dim:
                continue
            t1 = time.perf_counter()
            basis = fit_basis(first, d) if d < stage1.dim else None
            if (basis.dim if basis else stage1.dim) in seen:  # d above the sample's rank: the same sketch
                continue
            seen.add(basis.dim if basis else stage1.dim)
            gs = GradientSketch(obj, width, 0, basis)
            vecs = sketch_all(gs, train)
            build_s = time.perf_counter() - t1
            cand = sketch_candidates(gs, vecs, s, k_bar)
            row = {"width": width, "stage1": "exact" if stage1.exact else "random", "d": gs.dim,
                   "energy_kept": None if basis is None else basis.energy_kept, "harmful": recall(cand, harmful),
                   "helpful": recall(cand, helpful), "sketch_s": build_s}
            sweep.append(row)
            if width == widths[0] and d == 256:
                default = (gs, vecs)
    for d in dims:  # without the second stage: the random stage alone at width d (a plain JL sketch)
        stage1 = Sketcher(obj, d, 0)
        if stage1.exact:
            continue
        gs = GradientSketch(obj, d, 0, None)
        cand = sketch_candidates(gs, sketch_all(gs, train), s, k_bar)
        sweep.append({"width": d, "stage1": "random, no basis", "d": d, "energy_kept": None,
                      "harmful": recall(cand, harmful), "helpful": recall(cand, helpful)})
    gs, vecs = default
    ivf = ivf_check(gs, vecs, s, k_bar, harmful, helpful)
    cand = sketch_candidates(gs, vecs, s, max(ks))
    for k in ks:
        c = np.concatenate([cand[:, : k - k // 2], cand[:, max(ks) - max(ks) // 2 :][:, : k // 2]], axis=1)
        curves.append({"index": "gradient sketch (d=256)", "k": k, "fraction": k / n,
                       "harmful": recall(c, harmful), "helpful": recall(c, helpful)})
    print_table(f"{name}: recall of the exact top-{TOP} among k candidates, {TEST_POINTS} test points "
                f"(k = max(1% n, 100) = {k_bar})", curves,
                [("index", "index", "s"), ("k", "k", "d"), ("fraction", "k/n", ".1%"), ("harmful", "harmful", ".3f"),
                 ("helpful", "helpful", ".3f")])
    print_table(f"{name}: recall at k = {k_bar} against the sketch's dimension d", sweep,
                [("stage1", "stage 1", "s"), ("width", "width", "d"), ("d", "d", "d"),
                 ("energy_kept", "energy kept", ".5f"), ("harmful", "harmful", ".3f"), ("helpful", "helpful", ".3f"),
                 ("sketch_s", "sketch s (1 process)", ".1f")])
    print_table(f"{name}: IVF-Flat on the d = 256 sketches (nlist {ivf[0]['nlist']}), against flat", ivf,
                [("nprobe", "nprobe", "d"), ("agree10", "recall@10 vs flat", ".3f"),
                 ("harmful", f"harmful recall k={k_bar}", ".3f"), ("helpful", "helpful", ".3f"),
                 ("speedup", "search x flat", ".1f")])
    return {"n": n, "p": int(s.shape[1]), "k": k_bar, "curves": curves, "sweep": sweep, "ivf": ivf}


def ivf_check(gs: GradientSketch, vecs: np.ndarray, s: torch.Tensor, k: int, harmful, helpful) -> list[dict]:
    """IVF-Flat (inner product, IndexConfig's default nlist) on the same sketches at several nprobe."""
    import faiss

    cfg = IndexConfig(source="sketch", kind="ivf_flat")
    n, q = len(vecs), gs.query(s)
    nlist = cfg.cells(n)
    flat = faiss.IndexFlatIP(vecs.shape[1])
    flat.add(vecs)
    ivf = faiss.index_factory(vecs.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(ivf).cp.seed = 0
    ivf.train(vecs[np.argsort(np.arange(n))][: cfg.train_size])
    ivf.add(vecs)
    queries = np.concatenate([-q, q])
    t0 = time.perf_counter()
    top_flat = flat.search(queries, 10)[1]
    flat_s = time.perf_counter() - t0
    rows = []
    for nprobe in sorted({cfg.probes(nlist), max(1, nlist // 8), max(1, nlist // 4), max(1, nlist // 2), nlist}):
        ivf.nprobe = nprobe
        t0 = time.perf_counter()
        top_ivf = ivf.search(queries, 10)[1]
        ivf_s = time.perf_counter() - t0
        half = k - k // 2
        h, p = ivf.search(-q, half)[1], ivf.search(q, k // 2)[1]
        rows.append({"nlist": nlist, "nprobe": nprobe, "agree10": recall_sets(top_ivf, top_flat),
                     "harmful": recall(np.concatenate([h, p], 1), harmful),
                     "helpful": recall(np.concatenate([h, p], 1), helpful), "speedup": flat_s / max(ivf_s, 1e-9)})
    return rows


def recall_sets(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(x, y)) / b.shape[1] for x, y in zip(a, b, strict=True)]))


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("no PNG: matplotlib is not installed")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), dpi=120, squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items(), strict=True):
        for index in dict.fromkeys(c["index"] for c in r["curves"]):
            mine = [c for c in r["curves"] if c["index"] == index]
            x = [100 * c["fraction"] for c in mine]
            for side, style in (("harmful", "-"), ("helpful", "--")):
                ax.plot(x, [c[side] for c in mine], style, marker="o", ms=3, label=f"{index}: {side}")
        ax.axvline(100 * r["k"] / r["n"], color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("k, % of the training set (log)")
        ax.set_ylabel(f"recall of the exact top-{TOP}")
        ax.set_title(f"{name} (n = {r['n']:,})", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workloads", nargs="+", choices=["digits", "mixture"], default=["digits", "mixture"])
    ap.add_argument("--dims", default="64,128,256,512,1024,2048,4096")
    ap.add_argument("--widths", default="32768,1024", help="stage-1 widths (the first is the default)")
    ap.add_argument("--out", help="JSON path (default benchmarks/results/sketch_recall.json)")
    args = ap.parse_args(argv)
    dims = [int(d) for d in args.dims.split(",")]
    widths = [int(w) for w in args.widths.split(",")]
    results = {name: run(name, dims, widths) for name in args.workloads}
    plot(results, RESULTS / "sketch_recall.png")
    write_json("sketch_recall", {"test_points": TEST_POINTS, "top": TOP, "results": results}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
