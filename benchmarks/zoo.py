"""Models rayif does not ship, through the public API as a user calls it: the default against exact.

    .venv/bin/python -m benchmarks.zoo             # every zoo model, about 7 minutes on 2 cores
    .venv/bin/python -m benchmarks.zoo bert resnet # some of them

For each model of ``rayif.zoo`` (trained for a fixed budget with AdamW, so not at a minimum), in one run:

* ``p``, the selected parameters, and the per-example gradient path rayif chose for the model;
* the default (``solver="auto"``, the influence matrix in this process): what it chose (solver, curvature),
  CG's iterations, and its time;
* exact influence (explicit matrix) at the curvature and damping the default chose, and its time: the
  baseline of the ratio and the truth of Pearson / Spearman (worst test point) and top-10 overlap (mean);
* with ``--ray``: ``explain`` on 2 Ray workers against the same call in this process (the largest difference
  of their influence values relative to the largest value), and the recall of the true top-10 harmful among
  the k = 10% candidates of a gradient-sketch index.

Prints the table and writes ``benchmarks/results/zoo.json``.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import scipy.stats as st

import rayif
from rayif import AutoConfig, ExactConfig, IndexConfig, RunConfig, ScalingConfig, zoo
from rayif.api import task_examples
from rayif.executors import make_executor
from rayif.index import build_index
from rayif.recall import candidate_recall
from rayif.runner import Job, Runner

from ._common import print_table, write_json

RUN = RunConfig(chunk_size=64, progress=False)


def measure(name: str, ray: bool) -> dict:
    pr = zoo.problem(name)
    train, test = task_examples(pr.task, pr.train, "training data"), task_examples(pr.task, pr.test, "test data")
    t0 = time.perf_counter()
    with make_executor(pr.task, train, test, None, RUN) as ex:  # influence_matrix, keeping the runner's record
        runner = Runner(Job(train, test, AutoConfig(), run=RUN), ex)
        values = runner.matrix()
    default_s = time.perf_counter() - t0
    solver, choice = runner.solver, runner.choice
    t0 = time.perf_counter()
    exact = rayif.influence_matrix(pr.task, pr.train, pr.test, ExactConfig(solver.damping, solver.curvature),
                                   run_config=RUN)
    exact_s = time.perf_counter() - t0
    row = {"model": name, "p": ex.infos[0]["num_params"], "n": len(train), "m": len(test),
           "grad_path": runner.grad_path["path"], "grad_path_why": runner.grad_path["why"],
           "solver": choice["chosen"], "curvature": solver.curvature, "reason": choice["reason"],
           "smallest_hessian_eigenvalue": choice.get("smallest_hessian_eigenvalue"), "iterations":
           runner.stats.iterations, "default_s": default_s, "exact_s": exact_s, "ratio": default_s / exact_s,
           "pearson": min(st.pearsonr(a, b)[0] for a, b in zip(values, exact, strict=True)),
           "spearman": min(st.spearmanr(a, b)[0] for a, b in zip(values, exact, strict=True)),
           "top10": float(np.mean([len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10]))
                                   for a, b in zip(values, exact, strict=True)]))}
    if ray:
        local = rayif.explain(pr.task, pr.train, pr.test, top=5, run_config=RUN)
        on_ray = rayif.explain(pr.task, pr.train, pr.test, top=5, scaling_config=ScalingConfig(num_workers=2),
                               run_config=RUN)
        row["ray_vs_local"] = float(np.abs(on_ray["influence"].to_numpy() - local["influence"].to_numpy()).max()
                                    / np.abs(local["influence"].to_numpy()).max())
        index = build_index(pr.task, pr.train, IndexConfig(source="sketch", sketch_dim=64, max_actors=1,
                                                           progress=False))
        recall = candidate_recall(pr.task, pr.train, pr.test, index, [len(index) // 10], values=values)
        row["sketch_recall"] = recall.to_pylist()[0]["harmful_mean"]
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(zoo.MODELS), help=f"some of {', '.join(zoo.MODELS)}")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/zoo.json)")
    ap.add_argument("--ray", action="store_true", help="also explain on 2 Ray workers against in-process, and "
                    "a gradient-sketch index's recall (tests/test_zoo.py checks both on every change)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.models) - set(zoo.MODELS))
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(zoo.MODELS)}")
    logging.basicConfig(level=logging.WARNING)
    rows = []
    for name in args.models:  # each model's row is written as soon as it is measured
        rows.append(measure(name, args.ray))
        write_json("zoo", {"rows": rows}, args.out)
    print_table("the default (solver='auto') against exact at its own curvature and damping, 2 cores", rows, [
        ("model", "model", "s"), ("p", "p", "d"), ("grad_path", "gradients", "s"), ("solver", "auto chose", "s"),
        ("curvature", "curvature", "s"), ("pearson", "Pearson", ".4f"), ("spearman", "Spearman", ".4f"),
        ("top10", "top-10", ".1f"), ("default_s", "default s", ".1f"), ("exact_s", "exact s", ".1f"),
        ("ratio", "x exact", ".2f"), ("ray_vs_local", "Ray(2) vs local", ".1e"),
        ("sketch_recall", "sketch recall@10%", ".2f")])


if __name__ == "__main__":
    main()
