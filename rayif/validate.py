"""Do the numbers mean something on *this* model? Fast settings against full influence, candidate recall,
leave-one-out retraining and the linear datamodeling score (LDS), as one JSON-able report.

Retraining is the user's: ``retrain(keep_ids) -> Task | nn.Module`` trains the model on the training rows
whose ids are ``keep_ids`` (the same recipe, hyper-parameters and, for a non-convex model, the same start as
the model under study) and returns it. rayif then measures the test losses itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats as st
import torch
from torch import nn

from .api import influence_matrix, renamed_keywords, solver_config, task_examples
from .config import ExactConfig, SolverConfig, solver_to_dict
from .data import Examples
from .errors import RayifError
from .plotting import pyplot, save
from .progress import Progress
from .recall import candidate_recall, true_top
from .task import Task

log = logging.getLogger("rayif")

Retrain = Callable[[np.ndarray], "Task | nn.Module"]


@dataclass(frozen=True)
class ValidateConfig:
    """What :func:`validate` samples and retrains.

    Attributes:
        test_points: test points sampled (seeded) for the comparisons and the LDS.
        top: size of the top sets whose overlap and recall are reported.
        ks: candidates per test point for the recall curve (with an index); empty: ``k/4, k/2, k, 2k``.
        loo_test_points: the sampled test points of highest loss that leave-one-out is measured on.
        loo_train_points: models retrained, each without one training point: the most harmful and most
            helpful (by full influence) of those test points, alternately.
        lds_subsets: models retrained on random subsets for the LDS (0: no LDS).
        lds_fraction: the share of the training set in each subset.
        seed: fixes the samples and subsets.
    """

    test_points: int = 20
    top: int = 10
    ks: tuple[int, ...] = ()
    loo_test_points: int = 3
    loo_train_points: int = 40
    lds_subsets: int = 32
    lds_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("test_points", "top", "loo_test_points"):
            if getattr(self, name) < 1:
                raise RayifError(f"ValidateConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.loo_train_points < 0 or self.lds_subsets < 0:
            raise RayifError("ValidateConfig.loo_train_points and lds_subsets must be >= 0 (0: skip)")
        if self.lds_subsets and not 0 < self.lds_fraction < 1:
            raise RayifError(f"ValidateConfig.lds_fraction must be in (0, 1), got {self.lds_fraction}")


@renamed_keywords
def validate(task: Task, train: Any, test: Any, *, solver: SolverConfig | str | None = None,
             reference: SolverConfig | str | None = None, index: Any = None, k: int | None = None,
             retrain: Retrain | None = None, config: ValidateConfig | None = None,
             scaling_config: Any = None, address: str | None = None) -> dict[str, Any]:
    """Check the configured fast settings on the user's own model and data.

    Args:
        solver: the fast solver (its config or name) the user runs; default ``"auto"``.
        reference: the full influence it is judged against; default ``ExactConfig()`` at the same damping and
            curvature as ``solver`` (feasible up to a few thousand parameters; pass a tight CG otherwise).
        index: the candidate index the user runs with; the report then holds the overlap of the fast
            pipeline's top with the full top and the recall of the full top among the candidates.
        k: candidates per test point with ``index``.
        retrain: ``retrain(keep_ids) -> Task | nn.Module`` for leave-one-out and the LDS (skipped without it).

    Returns:
        a dict (JSON-able): ``fast_vs_full`` (Pearson, Spearman, top overlaps), ``recall`` (with an index),
        ``loo`` (Pearson, Spearman of predicted ``-I/n`` and actual test-loss changes), ``lds`` and ``seconds``.
    """
    from . import explain

    cfg = config or ValidateConfig()
    train_ex, test_ex = task_examples(task, train, "training data"), task_examples(task, test, "test data")
    fast = solver_config(solver)
    full = solver_config(reference) if reference is not None else _reference(fast)
    rng = np.random.default_rng(cfg.seed)
    picks = np.sort(rng.choice(len(test_ex), size=min(cfg.test_points, len(test_ex)), replace=False))
    sample = test_ex.take(picks)
    report: dict[str, Any] = {"test_ids": sample.ids.tolist(), "num_train": len(train_ex), "config": asdict(cfg),
                              "solver": solver_to_dict(fast), "reference": solver_to_dict(full), "seconds": {}}
    lap = _Laps(report["seconds"])
    truth = influence_matrix(task, train_ex, sample, full, seed=cfg.seed, scaling_config=scaling_config,
                             address=address)
    lap("reference")
    approx = influence_matrix(task, train_ex, sample, fast, seed=cfg.seed, scaling_config=scaling_config,
                              address=address)
    lap("fast_solver")
    report["fast_vs_full"] = {"solver": _agreement(approx, truth, train_ex.ids, cfg.top)}
    if index is not None:
        if k is None:
            raise RayifError("validate with an index needs the k you run with")
        table = explain(task, train_ex, sample, top=cfg.top, solver=fast, seed=cfg.seed, index=index, k=k,
                        scaling_config=scaling_config, address=address)
        lap("fast_pipeline")
        report["fast_vs_full"]["pipeline"] = _pipeline_overlap(table, truth, train_ex.ids, sample.ids, cfg.top, k)
        ks = sorted({min(max(int(x), cfg.top), len(train_ex)) for x in (cfg.ks or (k // 4, k // 2, k, 2 * k))})
        recall = candidate_recall(task, train_ex, sample, {index.source: index}, ks, top=cfg.top, solver=fast,
                                  seed=cfg.seed, values=truth)
        report["recall"] = recall.to_pylist()
        lap("recall")
    if retrain is not None:
        losses = RetrainedLosses(task, retrain, train_ex, test_ex)
        if cfg.loo_train_points:
            report["loo"] = _loo(losses, truth, picks, train_ex, cfg)
            lap("leave_one_out")
        if cfg.lds_subsets:
            report["lds"] = _lds(losses, {"reference": truth, "solver": approx}, picks, train_ex, cfg, rng)
            lap("lds")
    return report


class _Laps:
    def __init__(self, out: dict[str, float]):
        self.out, self.t = out, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.out[name] = round(now - self.t, 3)
        self.t = now


def _reference(fast: SolverConfig) -> SolverConfig:
    """Exact at the fast solver's damping and curvature: the same question, answered without approximation."""
    damping, curvature = getattr(fast, "damping", None), getattr(fast, "curvature", None)
    kw = {k: v for k, v in (("damping", damping), ("curvature", curvature)) if v is not None}
    return ExactConfig(**kw)


def _agreement(approx: np.ndarray, truth: np.ndarray, ids: np.ndarray, top: int) -> dict[str, Any]:
    """Per-test-point Pearson / Spearman over every training point, and the top-``top`` overlaps."""
    pearson = [st.pearsonr(a, t)[0] for a, t in zip(approx, truth, strict=True)]
    spearman = [st.spearmanr(a, t)[0] for a, t in zip(approx, truth, strict=True)]
    (ah, al), (th, tl) = true_top(approx, ids, top), true_top(truth, ids, top)
    out = {"pearson": _stats(pearson), "spearman": _stats(spearman)}
    for side, a, t in (("harmful", ah, th), ("helpful", al, tl)):
        out[f"top{top}_{side}_overlap"] = _stats([len(np.intersect1d(x, y)) / top for x, y in zip(a, t, strict=True)])
    return out


def _pipeline_overlap(table, truth: np.ndarray, ids: np.ndarray, test_ids: np.ndarray, top: int,
                      k: int) -> dict[str, Any]:
    """Overlap of the fast pipeline's ranked top (candidates, then the fast solver) with the full top."""
    th, tl = true_top(truth, ids, top)
    rows = table.to_pylist()
    out: dict[str, Any] = {"k": k}
    for side, t in (("harmful", th), ("helpful", tl)):
        got = [{r["train_id"] for r in rows if r["test_id"] == tid and r["kind"] == side} for tid in test_ids]
        out[f"top{top}_{side}_overlap"] = _stats([len(g & set(x.tolist())) / top for g, x in zip(got, t, strict=True)])
    return out


def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(v.mean()), 4), "min": round(float(v.min()), 4), "max": round(float(v.max()), 4)}


class RetrainedLosses:
    """Test losses of models the user's ``retrain`` makes, measured with the task's own test loss: the one
    retrain-and-measure step of leave-one-out, the LDS and the FastIF benchmark's Fig. 3c.

    ``losses(keep_ids, rows) -> [len(rows)]``: the losses of test rows ``rows`` after ``retrain(keep_ids)``."""

    def __init__(self, task: Task, retrain: Retrain, train: Examples, test: Examples):
        self.task, self.retrain, self.train, self.test = task, retrain, train, test
        self.calls = 0

    def __call__(self, keep: np.ndarray, rows: np.ndarray) -> np.ndarray:
        got = self.retrain(np.asarray(keep))
        self.calls += 1
        task = got if isinstance(got, Task) else self.task
        model = got.build_model() if isinstance(got, Task) else got
        if not isinstance(model, nn.Module):
            raise RayifError(f"retrain(keep_ids) must return a rayif.Task or an nn.Module, got {type(got).__name__}")
        model.eval()
        with torch.no_grad():
            out = task.test_losses(model, self.test.take(rows).batch).double().numpy()
        if out.shape != (len(rows),) or not np.isfinite(out).all():
            raise RayifError(f"the retrained model's test losses are {out.shape} with non-finite values "
                             f"{(~np.isfinite(out)).sum()}; expected [{len(rows)}] finite")
        return out


def _loo(losses: RetrainedLosses, truth: np.ndarray, picks: np.ndarray, train: Examples,
         cfg: ValidateConfig) -> dict[str, Any]:
    """Retrain without single training points; compare the test-loss change with ``-influence / n``."""
    n, ids = len(train), train.ids
    base_all = losses(ids, picks)
    worst = np.argsort(-base_all)[: cfg.loo_test_points]  # rows of the sample where an explanation is wanted
    rows = picks[worst]
    order = [np.argsort(-truth[w], kind="stable") for w in worst]
    chosen: list[int] = []
    for rank in range(n):  # most harmful, most helpful, of each test point in turn
        for o in order:
            for pos in (o[rank], o[n - 1 - rank]):
                if pos not in chosen and len(chosen) < cfg.loo_train_points:
                    chosen.append(int(pos))
        if len(chosen) >= cfg.loo_train_points:
            break
    predicted, actual = [], []
    with Progress(len(chosen), "rayif validate: leave-one-out", "model") as bar:
        for pos in chosen:
            got = losses(np.delete(ids, pos), rows)
            actual.append(got - base_all[worst])
            predicted.append(-truth[worst, pos] / n)
            bar.update(1)
    predicted, actual = np.stack(predicted).ravel(), np.stack(actual).ravel()
    return {"pairs": int(len(actual)), "retrained": len(chosen), "test_ids": losses.test.ids[rows].tolist(),
            "pearson": round(float(st.pearsonr(predicted, actual)[0]), 4),
            "spearman": round(float(st.spearmanr(predicted, actual)[0]), 4),
            "sign_agreement": round(float(np.mean(np.sign(predicted) == np.sign(actual))), 4),
            "predicted": predicted.tolist(), "actual": actual.tolist()}


def _lds(losses: RetrainedLosses, scores: dict[str, np.ndarray], picks: np.ndarray, train: Examples,
         cfg: ValidateConfig, rng: np.random.Generator) -> dict[str, Any]:
    """Spearman, per test point over random subsets S, between ``sum_{z in S} influence(z)`` and the test loss
    of the model retrained on S; averaged over the test points (Park et al. 2023's LDS, with loss as output).

    Positive influence raises the loss when upweighted, so a faithful method has a *positive* LDS here.
    """
    n, size = len(train), max(1, round(cfg.lds_fraction * len(train)))
    masks = np.zeros((cfg.lds_subsets, n), dtype=bool)
    out_loss = np.zeros((cfg.lds_subsets, len(picks)))
    with Progress(cfg.lds_subsets, "rayif validate: LDS subsets", "model") as bar:
        for j in range(cfg.lds_subsets):
            masks[j, rng.choice(n, size=size, replace=False)] = True
            out_loss[j] = losses(train.ids[masks[j]], picks)
            bar.update(1)
    report: dict[str, Any] = {"subsets": cfg.lds_subsets, "fraction": cfg.lds_fraction}
    for name, values in scores.items():
        pred = masks.astype(np.float64) @ values.T  # [subsets, tests]
        per = [st.spearmanr(pred[:, i], out_loss[:, i])[0] for i in range(len(picks))]
        report[name] = {**_stats(per), "per_test": [round(float(x), 4) for x in per]}
    report["first_test"] = {"predicted": (masks.astype(np.float64) @ scores["reference"][0]).tolist(),
                            "loss": out_loss[:, 0].tolist()}
    return report


def plot_validation(report: dict[str, Any], path: str | Path) -> Path:
    """One PNG of the report: fast vs full influence, leave-one-out, the LDS of one test point."""
    plt = pyplot("the validation plot")
    panels = [p for p in ("loo", "lds") if p in report]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2.8 + 4.2 * len(panels), 3.8), dpi=110, squeeze=False,
                             gridspec_kw={"width_ratios": [0.6] + [1] * len(panels)})
    ax = axes[0, 0]
    f = report["fast_vs_full"]["solver"]
    lines = [f"fast solver vs full, {len(report['test_ids'])} test points",
             f"Pearson {f['pearson']['mean']:.3f} (min {f['pearson']['min']:.3f})",
             f"Spearman {f['spearman']['mean']:.3f} (min {f['spearman']['min']:.3f})"]
    for part, values in report["fast_vs_full"].items():
        lines += [f"{part}: {k.replace('_', ' ')} {v['mean']:.2f}" for k, v in values.items() if k.startswith("top")]
    for row in report.get("recall", []):
        lines.append(f"recall at k={row['k']}: {row['harmful_mean']:.2f} / {row['helpful_mean']:.2f}")
    ax.text(0.02, 0.98, "\n".join(lines),
            va="top", fontsize=8, transform=ax.transAxes, family="monospace")
    ax.axis("off")
    for ax, name in zip(axes[0, 1:], panels, strict=True):
        if name == "loo":
            lo = report["loo"]
            ax.scatter(lo["predicted"], lo["actual"], s=10)
            lim = [min(lo["predicted"] + lo["actual"]), max(lo["predicted"] + lo["actual"])]
            ax.plot(lim, lim, "k:", lw=0.8)
            ax.set_xlabel("predicted change in test loss (-I/n)")
            ax.set_ylabel("actual change (leave-one-out)")
            ax.set_title(f"leave-one-out: Pearson {lo['pearson']:.3f}", fontsize=9)
        else:
            ld = report["lds"]
            ax.scatter(ld["first_test"]["predicted"], ld["first_test"]["loss"], s=10)
            ax.set_xlabel("sum of influence over the subset")
            ax.set_ylabel("test loss retrained on the subset")
            ax.set_title(f"LDS {ld['reference']['mean']:.3f} (one test point shown)", fontsize=9)
        ax.grid(alpha=0.3)
    return save(fig, path)
