"""FastIF Fig. 3b: LiSSA over a grid of J, B and T (time, error against the exact s_test, agreement of the
influence it gives), and the preconditioned solvers on the same test points."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.stats as st

from rayif import compute_s_test
from rayif.config import CGConfig, EKFACConfig, LissaConfig

from .workload import Problem, Settings, influence_of


def run(p: Problem, s: Settings) -> dict[str, Any]:
    g = min(s.grid_points, len(p.test))
    test = p.test.take(np.arange(g))
    truth, exact = p.s_exact[:g], p.exact[:g]

    def measure(cfg: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        got = compute_s_test(p.task, p.train, test, cfg, seed=s.seed)
        wall = time.perf_counter() - t0
        err = (got.double() - truth).norm(dim=1) / truth.norm(dim=1)
        values = influence_of(p.task, p.train, got)
        return {"seconds": wall, "rel_error": float(err.mean()),
                "pearson": float(np.mean([st.pearsonr(a, b)[0] for a, b in zip(values, exact, strict=True)])),
                "spearman": float(np.mean([st.spearmanr(a, b)[0] for a, b in zip(values, exact, strict=True)]))}

    grid = []
    for t in s.grid_repetitions:
        for b in s.grid_batches:
            for j in s.grid_depths:
                grid.append({"J": j, "B": b, "T": t, **measure(p.lissa((j, b, t)))})
    others = [("EK-FAC alone", EKFACConfig())]
    others += [(f"CG, no preconditioner, tol {tol:g}", CGConfig(preconditioner=None, tol=tol)) for tol in s.cg_tols]
    others += [(f"CG + EK-FAC, tol {tol:g}", CGConfig(tol=tol)) for tol in s.cg_tols]
    if s.preconditioned_lissa:
        others.append(("LissaConfig() (EK-FAC preconditioner, its own scale, early stop)", LissaConfig()))
    return {"num_test": g, "scales": p.scales, "grid": grid,
            "solvers": [{"solver": name, **measure(cfg)} for name, cfg in others]}
