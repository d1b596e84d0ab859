"""Influence on a transformer classifier with dict batches: input_ids / attention_mask / labels.

    .venv/bin/python examples/transformer_influence.py              # this process
    .venv/bin/python examples/transformer_influence.py --workers 2  # 2 Ray workers, same answer
    .venv/bin/python examples/transformer_influence.py --small      # 150 training sequences: what CI runs

A small ``nn.TransformerEncoder`` classifier (``rayif.tokens``) is trained on a synthetic token task
(label 1 when a sequence holds more tokens from 1-6 than from 7-12), its lower layers frozen. Influence is
taken on its top layers only (``Task(params=...)``), through ``Task(batch_loss=...)``, which calls the model
on the whole dict batch, padding mask included. The script checks CG against the exact Hessian on the
selected parameters and prints the most harmful and helpful training sequences of a misclassified one.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.stats as st
import torch

import rayif
from rayif import CGConfig, ExactConfig, ScalingConfig, tokens


def show(data: tokens.TokenData, i: int) -> str:
    ids = data.input_ids[i][data.attention_mask[i] == 1]
    return f"label {data.labels[i]} tokens {' '.join(map(str, ids))}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=0, help="Ray workers (0: this process)")
    ap.add_argument("--train-size", type=int, default=300)
    ap.add_argument("--small", action="store_true", help="150 training sequences, this process (CI)")
    args = ap.parse_args()
    if args.small:
        args.train_size, args.workers = 150, 0

    train, test = tokens.make_tokens(args.train_size, seed=0), tokens.make_tokens(200, seed=1, label_noise=0.0)
    task = tokens.token_task(train)
    model = task.build_model()
    with torch.no_grad():
        b = {k: torch.as_tensor(v) for k, v in test.batch().items()}
        pred = model(b["input_ids"], b["attention_mask"]).argmax(1).numpy()
    wrong = np.flatnonzero(pred != test.labels)[:5]
    top = sum(p.numel() for n, p in model.named_parameters() if n.startswith(tokens.TOP_LAYERS))
    print(f"test accuracy {np.mean(pred == test.labels):.3f}; influence on {top} top-layer parameters of "
          f"{sum(p.numel() for p in model.parameters())}")
    scaling = ScalingConfig(num_workers=args.workers)
    cg, exact = CGConfig(), ExactConfig()  # the same damping (1e-3) and curvature by default
    test_batch = {**test.batch(wrong), "id": wrong}
    m_cg = rayif.influence_matrix(task, train.batch(), test_batch, cg, scaling_config=scaling)
    m_exact = rayif.influence_matrix(task, train.batch(), test_batch, exact, scaling_config=scaling)
    pearson = [st.pearsonr(a, c)[0] for a, c in zip(m_exact, m_cg, strict=True)]
    print(f"CG against the exact Hessian, {len(wrong)} misclassified test points: Pearson min {min(pearson):.4f}")
    # the example checks its own result: CG answers the exact question on the frozen-bottom transformer
    assert len(wrong) > 0 and min(pearson) > 0.99, pearson
    table = rayif.explain(task, train.batch(), test_batch, top=3, solver=cg, scaling_config=scaling)
    t = int(wrong[0])
    print(f"\ntest sequence {t}: {show(test, t)}, predicted {pred[t]}")
    for r in table.filter(table["test_id"].to_numpy() == t).to_pylist():
        print(f"  {r['kind']:7s} #{r['rank']} {r['influence']:+.3g}  train {r['train_id']}: "
              f"{show(train, r['train_id'])}")
    print("transformer check passed")


if __name__ == "__main__":
    main()
