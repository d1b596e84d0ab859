"""FastIF Fig. 3c: retrain without each test point's top-m harmful, its top-m helpful, or m random training
points, and measure the change of that test point's loss, for full influence, FastIF's fast pipeline and
rayif's defaults."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.stats as st

from rayif import compute_s_test
from rayif.validate import RetrainedLosses

from .workload import Problem, Settings, influence_of

SIDES = ("harmful", "helpful")
GROUND_TRUTH_LISSA = (1500, 32, 2)


def run(p: Problem, s: Settings, points: int) -> dict[str, Any]:
    n, ids = len(p.train), p.train.ids
    # the test points: half mispredicted where the sample has them (it is balanced), the rest predicted right
    wrong, right = np.flatnonzero(~p.correct), np.flatnonzero(p.correct)
    w = min(len(wrong), points // 2)
    rows = np.concatenate([wrong[:w], right[: points - w]])
    test = p.test.take(rows)
    exact = p.exact[rows]
    orders = {"full influence (exact)": _order(exact)}
    # FastIF: the k nearest in feature space, ranked by LiSSA at its fast settings
    knn = p.indexes["features"].candidates(p.task, test, p.k)
    fast = influence_of(p.task, p.train, compute_s_test(p.task, p.train, test, p.lissa(s.fast), seed=s.seed))
    # plain LiSSA at the shape tests/test_ground_truth.py holds to Pearson >= 0.98 on the convex model
    plain = influence_of(p.task, p.train, compute_s_test(p.task, p.train, test, p.lissa(GROUND_TRUTH_LISSA),
                                                         seed=s.seed))
    plain_pearson = float(np.mean([st.pearsonr(a, b)[0] for a, b in zip(plain, exact, strict=True)]) * 100)
    orders["FastIF: kNN + fast s_test"] = _order(fast, knn)
    # rayif's defaults: gradient-sketch candidates from the auto solver's s_test, ranked by the same
    s_auto = compute_s_test(p.task, p.train, test, None, seed=s.seed)
    sketch = p.indexes["sketch"].sketch_candidates(p.task, s_auto, p.k)
    orders["rayif defaults: sketch + auto"] = _order(influence_of(p.task, p.train, s_auto), sketch)

    retrained: dict[tuple[int, ...], np.ndarray] = {}

    def losses(drop: np.ndarray) -> np.ndarray:
        """Every sampled test point's loss after retraining without ``drop``; systems that pick the same
        points (rayif's defaults and exact, mostly) share one retrain."""
        key = tuple(sorted(int(d) for d in drop))
        if key not in retrained:
            retrained[key] = _losses(p, np.delete(ids, drop), test)
        return retrained[key]

    base = losses(np.array([], dtype=np.int64))
    results: list[dict[str, Any]] = []
    for m in s.remove:
        for system, order in orders.items():
            for side in SIDES:
                changes, predicted = [], []
                for i in range(len(rows)):
                    drop = order[side][i][:m]
                    changes.append(losses(drop)[i] - base[i])
                    predicted.append(float(-exact[i, drop].sum() / n))
                results.append(_row(system, side, m, changes, predicted))
        changes = []
        for seed in range(s.random_seeds):  # one random set serves every test point
            changes.extend(losses(np.random.default_rng([s.seed, seed, m]).choice(n, m, replace=False)) - base)
        results.append(_row("random", "random", m, changes, None))
    single = [r for r in results if r["m"] == 1 and r["predicted"] is not None]
    pred = np.concatenate([r["predicted"] for r in single])
    act = np.concatenate([r["changes"] for r in single])
    return {"model": p.kind, "test_ids": test.ids.tolist(), "correct": p.correct[rows].tolist(), "k": p.k,
            "rows": results, "leave_one_out_pearson": float(st.pearsonr(pred, act)[0]),
            "leave_one_out_pairs": int(len(pred)),
            "plain_lissa": list(GROUND_TRUTH_LISSA), "plain_lissa_pearson": plain_pearson,
            "models_retrained": len(retrained)}


def _order(values: np.ndarray, candidates: np.ndarray | None = None) -> dict[str, list[np.ndarray]]:
    """Per test point, training rows from most harmful down and from most helpful up (among candidates)."""
    out: dict[str, list[np.ndarray]] = {side: [] for side in SIDES}
    for i, v in enumerate(values):
        rows = np.arange(len(v)) if candidates is None else np.unique(candidates[i])
        by = rows[np.argsort(-v[rows], kind="stable")]
        out["harmful"].append(by)
        out["helpful"].append(by[::-1])
    return out


def _losses(p: Problem, keep: np.ndarray, test) -> np.ndarray:
    """The test losses of ``test`` after retraining on ``keep`` (rayif.validate's own step)."""
    return RetrainedLosses(p.task, p.retrain, p.train, test)(keep, np.arange(len(test)))


def _row(system: str, side: str, m: int, changes: list[float], predicted: list[float] | None) -> dict[str, Any]:
    c = np.asarray(changes, dtype=np.float64)
    return {"system": system, "side": side, "m": m, "mean": float(c.mean()), "std": float(c.std()),
            "changes": c.tolist(), "predicted": predicted}
