"""Models rayif does not ship, through the public API as a user calls it: the default against exact.

    .venv/bin/python -m benchmarks.zoo             # every zoo model, about 10 minutes on 2 cores
    .venv/bin/python -m benchmarks.zoo bert resnet # some of them

For each model of ``rayif.zoo`` (trained for a fixed budget with AdamW, so not at a minimum), in one run:

* ``p``, the selected parameters, and the per-example gradient path rayif chose for the model;
* the default (``solver="auto"``, ``influence_matrix`` in this process): what it chose (solver, curvature) and
  its time;
* exact influence (explicit matrix) at the curvature and damping the default chose, and its time: the
  baseline of the ratio and the truth of Pearson / Spearman (worst test point) and top-10 overlap (mean);
* ``explain`` on 2 Ray workers against the same call in this process: the largest difference of their
  influence values relative to the largest value (0 when the bits agree);
* the recall of the true top-10 harmful among the k = 10% candidates of a gradient-sketch index.

Prints the table and writes ``benchmarks/results/zoo.json``.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import scipy.stats as st

import rayif
from rayif import ExactConfig, IndexConfig, RunConfig, ScalingConfig, zoo
from rayif.index import build_index, candidate_recall
from rayif.results import metadata

from ._common import print_table, write_json

RUN = RunConfig(chunk_size=64, progress=False)


def measure(name: str) -> dict:
    pr = zoo.problem(name)
    t0 = time.perf_counter()
    table = rayif.explain(pr.task, pr.train, pr.test, top=5, run_config=RUN)
    explain_s = time.perf_counter() - t0
    meta = metadata(table)
    solver = rayif.config.solver_from_dict(meta["solver"])
    t0 = time.perf_counter()
    values = rayif.influence_matrix(pr.task, pr.train, pr.test, run_config=RUN)
    default_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact = rayif.influence_matrix(pr.task, pr.train, pr.test, ExactConfig(solver.damping, solver.curvature),
                                   run_config=RUN)
    exact_s = time.perf_counter() - t0
    pearson = min(st.pearsonr(a, b)[0] for a, b in zip(values, exact, strict=True))
    spearman = min(st.spearmanr(a, b)[0] for a, b in zip(values, exact, strict=True))
    top10 = np.mean([len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10])) for a, b in zip(values, exact,
                                                                                            strict=True)])
    on_ray = rayif.explain(pr.task, pr.train, pr.test, top=5, scaling=ScalingConfig(num_workers=2), run_config=RUN)
    same_ids = on_ray["train_id"].to_pylist() == table["train_id"].to_pylist()
    diff = float(np.abs(on_ray["influence"].to_numpy() - table["influence"].to_numpy()).max()
                 / np.abs(table["influence"].to_numpy()).max())
    index = build_index(pr.task, pr.train, IndexConfig(source="sketch", sketch_dim=64, max_actors=1, progress=False))
    recall = candidate_recall(pr.task, pr.train, pr.test, index, [len(index) // 10], values=values).to_pylist()[0]
    return {"model": name, "p": _p(pr), "n": len(values[0]), "m": len(values),
            "grad_path": meta["grad_path"]["path"], "grad_path_why": meta["grad_path"]["why"],
            "solver": meta["solver_choice"]["chosen"], "curvature": solver.curvature,
            "reason": meta["solver_choice"]["reason"], "default_s": default_s, "explain_s": explain_s,
            "exact_s": exact_s, "ratio": default_s / exact_s, "pearson": pearson, "spearman": spearman,
            "top10": top10, "ray_same_ids": same_ids, "ray_vs_local": diff,
            "sketch_recall": recall["harmful_mean"]}


def _p(pr: zoo.Problem) -> int:
    model = pr.task.build_model()
    return sum(model.get_parameter(n).numel() for n in pr.task.selected_params(model))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(zoo.MODELS), help=f"some of {', '.join(zoo.MODELS)}")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/zoo.json)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.models) - set(zoo.MODELS))
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(zoo.MODELS)}")
    logging.basicConfig(level=logging.WARNING)
    rows = [measure(name) for name in args.models]
    print_table("the default (solver='auto') against exact at its own curvature and damping, 2 cores", rows, [
        ("model", "model", "s"), ("p", "p", "d"), ("grad_path", "gradients", "s"), ("solver", "auto chose", "s"),
        ("curvature", "curvature", "s"), ("pearson", "Pearson", ".4f"), ("spearman", "Spearman", ".4f"),
        ("top10", "top-10", ".1f"), ("default_s", "default s", ".1f"), ("exact_s", "exact s", ".1f"),
        ("ratio", "x exact", ".2f"), ("ray_vs_local", "Ray(2) vs local", ".1e"),
        ("sketch_recall", "sketch recall@10%", ".2f")])
    write_json("zoo", {"rows": rows}, args.out)


if __name__ == "__main__":
    main()
