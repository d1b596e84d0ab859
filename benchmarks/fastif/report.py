"""RESULTS.md, its plots and its checks, from the results the sections return."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rayif.plotting import pyplot, save

from .._common import machine  # noqa: F401  (the run's machine, described as every benchmark describes it)

# the thresholds tests/test_ground_truth.py and test_solvers.py hold every change to; the sketch recall bar of
# issue 11 is held here (the quick mode measures it on the digits MLP, as test_sketch.py did)
EXACT_PEARSON = 99.9  # CG / exact against exact, percent
LISSA_PEARSON = 98.0  # FastIF's plain LiSSA against exact at the same damping, percent
LOO_PEARSON = 0.99  # exact influence against leave-one-out retraining, convex model
SKETCH_RECALL = 0.9  # exact top-10 harmful / helpful among k = 10% gradient-sketch candidates
KNN_MARGIN = 0.3  # ... and that far above FastIF's feature kNN on the harmful side


def checks(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Agreement with exact at the ground-truth tests' thresholds, and that every section has its numbers."""
    out: list[dict[str, Any]] = []

    def check(name: str, value: float, needs: str, ok: bool) -> None:
        out.append({"name": name, "value": float(value), "needs": needs, "passed": bool(ok and math.isfinite(value))})

    if "speed" in r:
        sp = r["speed"]
        check("naive loop = rayif (same batches), max relative difference", sp["naive_vs_rayif_max_rel_diff"],
              "<= 1e-6", sp["naive_vs_rayif_max_rel_diff"] <= 1e-6)
        for row in sp["rows"]:  # FastIF's LiSSA on the MLP has no ground-truth threshold: reported only
            if not str(row["solver"]).startswith("LiSSA"):
                check(f"Table 2 Pearson, {row['method']} ({row['where']})", row["pearson"], f">= {EXACT_PEARSON}",
                      row["pearson"] >= EXACT_PEARSON)
    if "recall" in r:
        sk, knn = (min((x for x in r["recall"]["rows"] if x["index"] == name), key=lambda x: abs(x["fraction"] - 0.1))
                   for name in ("gradient sketch", "feature kNN"))
        for side in ("harmful", "helpful"):
            check(f"sketch recall of the exact top-10 {side} at k = {sk['k']}", sk[f"{side}_mean"],
                  f">= {SKETCH_RECALL}", sk[f"{side}_mean"] >= SKETCH_RECALL)
        check(f"sketch recall above feature kNN's + {KNN_MARGIN} (harmful, k = {sk['k']})",
              sk["harmful_mean"] - knn["harmful_mean"], f"> {KNN_MARGIN}",
              sk["harmful_mean"] - knn["harmful_mean"] > KNN_MARGIN)
    if "s_test" in r:
        for row in r["s_test"]["solvers"]:
            if row["solver"].startswith("CG + EK-FAC, tol 0.001"):
                check(f"Pearson, {row['solver']}", row["pearson"] * 100, f">= {EXACT_PEARSON}",
                      row["pearson"] * 100 >= EXACT_PEARSON)
    if "retrain" in r:
        lo = r["retrain"]["logistic"]
        check(f"logistic: plain LiSSA (J, B, T) = {tuple(lo['plain_lissa'])} against exact, Pearson over every "
              "training row", lo["plain_lissa_pearson"], f">= {LISSA_PEARSON}",
              lo["plain_lissa_pearson"] >= LISSA_PEARSON)
        check(f"logistic leave-one-out (m = 1) Pearson, predicted vs retrained ({lo['leave_one_out_pairs']} pairs)",
              lo["leave_one_out_pearson"], f">= {LOO_PEARSON}", lo["leave_one_out_pearson"] >= LOO_PEARSON)
        for row in lo["rows"]:
            if row["system"] == "full influence (exact)":
                good = row["mean"] < 0 if row["side"] == "harmful" else row["mean"] > 0
                check(f"logistic: removing the {row['m']} most {row['side']} moves the loss the right way",
                      row["mean"], "< 0" if row["side"] == "harmful" else "> 0", good)
    if "scale" in r:
        check("scale: the same table on 1 and 2 workers", float(r["scale"]["same_table_on_1_and_2_workers"]), "1",
              r["scale"]["same_table_on_1_and_2_workers"])
    asked = r.get("sections", ("speed", "recall", "s_test", "retrain", "scale"))
    missing = [s for s in asked if s not in r]
    check("every section ran" + (f" (missing: {', '.join(missing)})" if missing else ""), len(missing), "0",
          not missing)
    return out


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " if i == 0 else " ---: " for i in
                                                             range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pm(mean: float, std: float) -> str:
    return f"{mean:.1f} ± {std:.1f}"


def speed_md(sp: dict[str, Any]) -> tuple[str, str]:
    rows = [[r["method"], r["where"], r["solver"], f"{r['s_per_point']:.4f}", f"**{r['speedup']:.1f}**",
             f"{r['one_off_s']:.1f}", f"{r['speedup_with_one_offs']:.1f}", f"{r['recall_top10_harmful']:.2f}",
             f"{r['top10_harmful']:.2f}"] for r in sp["rows"]]
    t1 = _table(["method", "where", "s_test", "s / test point", "x full", "one-off s", "x full, one-offs in",
                 "recall", "top-10 = exact"], rows)
    t2 = _table(["method", "where", "Pearson", "Spearman", "Kendall"],
                [[r["method"], r["where"], _pm(r["pearson"], r["pearson_std"]), _pm(r["spearman"], r["spearman_std"]),
                  _pm(r["kendall"], r["kendall_std"])] for r in sp["rows"]])
    return t1, t2


def recall_md(rc: dict[str, Any]) -> str:
    by = {}
    for r in rc["rows"]:
        by.setdefault(r["k"], {})[r["index"]] = r
    rows = [[k, f"{100 * k / rc['num_train']:.1f}%", f"{v['feature kNN']['harmful_mean']:.2f}",
             f"{v['feature kNN']['helpful_mean']:.2f}", f"{v['gradient sketch']['harmful_mean']:.2f}",
             f"{v['gradient sketch']['helpful_mean']:.2f}", f"{min(1.0, k / rc['num_train']):.3f}"]
            for k, v in sorted(by.items())]
    return _table(["k", "k / n", "kNN harmful", "kNN helpful", "sketch harmful", "sketch helpful", "random"], rows)


def s_test_md(st: dict[str, Any]) -> tuple[str, str]:
    grid = _table(["J", "B", "T", "s", "‖s - s*‖ / ‖s*‖", "Pearson", "Spearman"],
                  [[g["J"], g["B"], g["T"], f"{g['seconds']:.2f}", f"{g['rel_error']:.3f}", f"{g['pearson']:.4f}",
                    f"{g['spearman']:.4f}"] for g in st["grid"]])
    solvers = _table(["solver", "s", "‖s - s*‖ / ‖s*‖", "Pearson", "Spearman"],
                     [[g["solver"], f"{g['seconds']:.2f}", f"{g['rel_error']:.3f}", f"{g['pearson']:.4f}",
                       f"{g['spearman']:.4f}"] for g in st["solvers"]])
    return grid, solvers


def retrain_md(rt: dict[str, Any]) -> str:
    rows = []
    for model, res in rt.items():
        for r in res["rows"]:
            rows.append([model, r["system"], r["side"], r["m"], f"{r['mean']:+.4f}", f"{r['std']:.4f}",
                         len(r["changes"])])
    return _table(["model", "system", "removed", "m", "mean change of test loss", "std", "retrains x points"], rows)


def scale_md(sc: dict[str, Any]) -> str:
    rows = [["index build (features, flat L2, Ray Data)", "", f"{sc['index_build_s']:.1f}",
             f"{sc['index_rows_per_s']:,.0f} rows/s", f"{sc['index_memory']['driver_peak_mib']:.0f}",
             _workers(sc["index_memory"]["worker_peak_mib"])]]
    for run in sc["runs"]:
        rows.append([f"explain, {sc['test_points']} test points, k = {sc['k']}, {sc['solver']}", run["workers"],
                     f"{run['wall_s']:.1f}", f"{run['s_per_point']:.4f} s / test point",
                     f"{run['memory']['driver_peak_mib']:.0f}",
                     _workers(run["memory"]["worker_peak_mib"])])
    return _table(["step", "workers", "wall s", "rate", "driver peak MiB", "worker peaks MiB"], rows)


def _workers(peaks: dict[str, list[float]]) -> str:
    """rayif's own workers by name, the rest (Ray Data tasks, Ray's agents and actors) as their largest."""
    names = {"_Worker": "replicas", "MapWorker": "feature actors"}
    out = [f"{names[w]}: {', '.join(f'{x:.0f}' for x in v)}" for w, v in peaks.items() if w in names]
    rest = [x for w, v in peaks.items() if w not in names for x in v]
    return "; ".join(out + ([f"other Ray processes: <= {max(rest):.0f}"] if rest else []))


def headline(r: dict[str, Any]) -> list[str]:
    out = []
    if "speed" in r:
        rows = r["speed"]["rows"]
        for row in rows[1:]:
            out.append(f"{row['method']} ({row['where']}): **{row['speedup']:.1f}x** full influence per test point "
                       f"({row['speedup_with_one_offs']:.1f}x with index build and scale counted), Pearson "
                       f"{row['pearson']:.1f}%, Spearman {row['spearman']:.1f}%, exact top-10 harmful found "
                       f"{row['top10_harmful']:.2f}")
    return out


def write(r: dict[str, Any], out: Path) -> Path:
    img = out / "img"
    figures = plot(r, img)
    m = r["machine"]
    md = [f"# rayif against FastIF, measured on {m['date']}", "",
          f"`{r['command']}` ({r['seconds']['total'] / 60:.1f} min). Machine: {m['cpu']}, {m['cpus']} cores, "
          f"{m['memory_gib']} GiB, GPU: {m['gpu']}; {m['platform']}; Python {m['python']}, rayif {m['rayif']}, "
          f"torch {m['torch']} ({m['torch_threads']} threads), Ray {m['ray']}, FAISS {m['faiss']}. The numbers are "
          "this run's; RESULTS.json holds every one of them.", ""]
    if "problems" in r and "mlp" in r["problems"]:
        pm = r["problems"]["mlp"]
        md += ["Workload of Tables 1-2 and Figs. 3a-3b: the digits MLP (64-32-10 tanh, p = 2410, float64, weight "
               f"decay 1e-3), 1000 training images, {r['settings']['test_points']} test points (half of them "
               f"mispredicted), damping 1e-3 for every solver, k = {pm['k']} candidates (10%). Truth: exact "
               f"influence (explicit Hessian). LiSSA shapes are (J, B, T): depth, rows per "
               "sampled batch, repetitions; plain last iterate, no preconditioner, as FastIF ran it. Its scale "
               "is estimated once per B by power iteration (as `LissaConfig(scale=None)` does) and shared: "
               + ", ".join(f"B={b}: {v:.3g}" for b, v in sorted(pm["scales"].items(), key=lambda kv: int(kv[0])))
               + ".", ""]
    if r.get("speed"):
        t1, t2 = speed_md(r["speed"])
        md += ["## Table 1: time per test point", "",
               "x full: the baseline is the first row, measured in this run. One-off: the kNN / sketch index build "
               "and LiSSA's scale, paid once for all test points (\"one-offs in\" spreads them over "
               f"{r['speed']['num_test']} test points). Recall: the share of the exact top-10 harmful among the "
               "candidates; top-10 = exact: the share of the exact top-10 harmful in the method's top-10. "
               "The naive loop equals rayif on the same batches to "
               f"{r['speed']['naive_vs_rayif_max_rel_diff']:.1e} (relative).", "", t1, "",
               "## Table 2: agreement with full (exact) influence", "",
               "Per test point over the training rows the method scores (its candidates), percent, mean ± std over "
               "the test points, as FastIF's Table 2.", "", t2, ""]
        md += ["Headline:", ""] + [f"* {h}" for h in headline(r)] + [""]
    if r.get("recall"):
        md += ["## Fig. 3a: recall of the exact top-10 among k candidates", "",
               f"![recall]({figures['recall'].relative_to(out)})", "", recall_md(r["recall"]), ""]
    if r.get("s_test"):
        grid, solvers = s_test_md(r["s_test"])
        md += ["## Fig. 3b: s_test, speed against quality", "",
               f"{r['s_test']['num_test']} test points solved together in this process. s*: the exact s_test. "
               "Pearson / Spearman: of the influence over every training row against exact, mean over the test "
               "points. T repetitions run one after another here; on T Ray workers they run at once.", "",
               f"![s_test]({figures['s_test'].relative_to(out)})", "", grid, "", solvers, ""]
    if r.get("retrain"):
        md += ["## Fig. 3c: retraining without the top-m", "",
               "For each test point, retrain without its m most harmful or most helpful training points (by each "
               "system) or m random ones, and measure the change of its test loss. Logistic regression (convex, "
               "weight decay 1e-2) retrains to its optimum; the MLP by warm-started L-BFGS "
               f"({r['settings']['mlp_retrain_iters']} steps; the base model is retrained the same way). "
               f"Leave-one-out (m = 1) Pearson of -I/n against the retrained change: logistic "
               f"{r['retrain']['logistic']['leave_one_out_pearson']:.4f}, MLP "
               f"{r['retrain']['mlp']['leave_one_out_pearson']:.4f}.", "",
               f"![retrain]({figures['retrain'].relative_to(out)})", "", retrain_md(r["retrain"]), ""]
    if r.get("scale"):
        sc = r["scale"]
        md += [f"## Scale: {sc['rows']:,} synthetic training rows", "",
               f"{sc['model']}, trained in {sc['train_s']:.0f} s; LiSSA scale in {sc['scale_s']:.1f} s. Peak "
               "resident memory sampled every 50 ms (workers: every Ray worker process busy during the step). The "
               "two runs give the same table.", "", scale_md(sc), ""]
    md += ["## Checks", "", "What `--quick` (CI) asserts; thresholds are the ground-truth tests'.", ""]
    md += [f"* {'pass' if c['passed'] else '**FAIL**'}: {c['name']}: {c['value']:.4g} (needs {c['needs']})"
           for c in r["checks"]]
    path = out / "RESULTS.md"
    path.write_text("\n".join(md) + "\n")
    return path


def plot(r: dict[str, Any], img: Path) -> dict[str, Path]:
    plt = pyplot("the FastIF plots")
    out: dict[str, Path] = {}
    if r.get("recall"):
        fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=110)
        rows = r["recall"]["rows"]
        for name, color in (("feature kNN", "C0"), ("gradient sketch", "C1")):
            mine = [x for x in rows if x["index"] == name]
            x = np.array([q["fraction"] for q in mine]) * 100
            for side, style in (("harmful", "-"), ("helpful", "--")):
                ax.plot(x, [q[f"{side}_mean"] for q in mine], style, color=color, marker="o", ms=3,
                        label=f"{name}: {side}")
        x = np.array(sorted({q["fraction"] for q in rows}))
        ax.plot(x * 100, x, ":", color="grey", label="random")
        ax.set_xscale("log")
        ax.set(xlabel="k, % of the training set (log)", ylabel="recall of the exact top-10", ylim=(0, 1.02))
        ax.set_title("Fig. 3a analog: digits MLP", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out["recall"] = save(fig, img / "fig3a_recall.png")
    if r.get("s_test"):
        st = r["s_test"]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=110)
        for (b, t), style in zip(sorted({(g["B"], g["T"]) for g in st["grid"]}),
                                 ["-o", "--o", "-s", "--s", "-^", "--^", "-v", "--v"], strict=False):
            mine = sorted((g for g in st["grid"] if g["B"] == b and g["T"] == t), key=lambda g: g["J"])
            js = [g["J"] for g in mine]
            axes[0].plot(js, [g["seconds"] for g in mine], style, ms=3, label=f"B={b} T={t}")
            axes[1].plot(js, [g["rel_error"] for g in mine], style, ms=3, label=f"B={b} T={t}")
        for ax, ylabel in ((axes[0], "seconds"), (axes[1], "‖s - s*‖ / ‖s*‖")):
            ax.set(xscale="log", yscale="log", xlabel="LiSSA depth J", ylabel=ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ax = axes[2]
        ax.scatter([g["seconds"] for g in st["grid"]], [g["rel_error"] for g in st["grid"]], s=12, c="grey",
                   label="plain LiSSA grid")
        for i, g in enumerate(st["solvers"]):
            ax.scatter([g["seconds"]], [g["rel_error"]], s=25, marker="D", color=f"C{i}",
                       label=g["solver"].split(" (")[0])
        ax.set(xscale="log", yscale="log", xlabel="seconds", ylabel="‖s - s*‖ / ‖s*‖")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        fig.suptitle(f"Fig. 3b analog: s_test of {st['num_test']} test points, digits MLP", fontsize=10)
        out["s_test"] = save(fig, img / "fig3b_s_test.png")
    if r.get("retrain"):
        models = list(r["retrain"])
        fig, axes = plt.subplots(1, len(models), figsize=(5.6 * len(models), 3.9), dpi=110, squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            rows = r["retrain"][model]["rows"]
            keys = list(dict.fromkeys((x["system"], x["side"]) for x in rows))
            for i, (system, side) in enumerate(keys):
                mine = [x for x in rows if x["system"] == system and x["side"] == side]
                ms = np.array([x["m"] for x in mine], dtype=float) * (1 + 0.04 * (i - len(keys) / 2))
                color = "grey" if system == "random" else f"C{list(dict.fromkeys(k[0] for k in keys)).index(system)}"
                ax.errorbar(ms, [x["mean"] for x in mine], yerr=[x["std"] for x in mine], capsize=2, ms=3,
                            fmt=("-o" if side == "helpful" else "--s" if side == "harmful" else ":^"), color=color,
                            label=f"{system}: {side}" if system != "random" else "random")
            ax.axhline(0, color="black", lw=0.6)
            ax.set(xscale="log", xlabel="m removed (log)", ylabel="change of the test point's loss")
            ax.set_title(f"Fig. 3c analog: digits {'MLP' if model == 'mlp' else model}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        out["retrain"] = save(fig, img / "fig3c_retrain.png")
    return out
