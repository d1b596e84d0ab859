"""Explain digits predictions on Ray workers with the Python API: the driver script for a laptop or a cluster.

    .venv/bin/python examples/explain_on_ray.py                       # local Ray, 2 workers
    RAY_ADDRESS=auto .venv/bin/python examples/explain_on_ray.py      # on the head node of a running cluster
    ray job submit --address http://HEAD:8265 --working-dir . -- python examples/explain_on_ray.py --workers 4
    ray submit cluster/aws-gpu.yaml examples/explain_on_ray.py -- --address auto --workers 4 --gpu
    .venv/bin/python examples/explain_on_ray.py --small              # 8 test points: what CI runs

It trains the digits MLP, explains the misclassified test points in batches on ``--workers`` replicas and
writes one parquet file per batch to ``--out``; rerun with the same ``--out`` to resume an interrupted job.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import rayif
from rayif import RunConfig, ScalingConfig
from rayif.digits import digits_task, load_digits_split
from rayif.results import metadata


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="one GPU per worker")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--out", default="rayif-out/explain_on_ray")
    ap.add_argument("--address", default=None, help="Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    ap.add_argument("--small", action="store_true", help="only the first 8 misclassified test points")
    args = ap.parse_args()

    split = load_digits_split(n_train=1000, n_test=797, dtype=np.float32)
    task, _ = digits_task("mlp", split, dtype=torch.float32)
    with torch.no_grad():
        wrong = np.flatnonzero(task.build_model()(torch.as_tensor(split.x_test)).argmax(1).numpy() != split.y_test)
    wrong = wrong[:8] if args.small else wrong
    test = {"x": split.x_test[wrong], "y": split.y_test[wrong], "id": wrong}
    table = rayif.explain(task, (split.x_train, split.y_train), test, top=args.top, seed=0,
                          scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.gpu),
                          run_config=RunConfig(output_dir=args.out, test_batch_size=8), address=args.address)
    # the example checks its own result: every test point explained, with its top harmful and top helpful
    assert table.num_rows == len(wrong) * 2 * args.top, table.num_rows
    assert sorted(set(table["test_id"].to_pylist())) == sorted(wrong.tolist())
    choice = rayif.results.metadata(table)["solver_choice"]
    print(f"solver: {choice['chosen']} ({choice['requested']}: {choice['reason']})")
    for w in metadata(table)["workers"]:
        print(f"worker on node {w['node_id'][:12]} ({w['device']})")
    first = table.filter(table["test_id"].to_numpy() == int(wrong[0])).to_pylist()
    print(f"{len(wrong)} misclassified test points explained; test point {wrong[0]}:")
    for r in first[:3] + first[args.top : args.top + 3]:
        print(f"  {r['kind']:8s} #{r['rank']}: train {r['train_id']} (label {split.y_train[r['train_id']]}) "
              f"{r['influence']:+.3g}")
    print(f"results in {args.out} (rayif.read_results reads them back)")


if __name__ == "__main__":
    main()
