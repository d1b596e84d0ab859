"""Quickstart: train on digits, index the training set, explain 20 test points, and draw them.

    .venv/bin/python examples/digits_quickstart.py            # 20 test points, 2 Ray workers
    .venv/bin/python examples/digits_quickstart.py --small    # 4 test points: what CI runs

Writes ``quickstart.png``: each test image beside its 3 most helpful and 3 most harmful training images, with
their influence values (helpful < 0: upweighting it lowers the test loss). The candidates come from a FAISS
index of gradient sketches (``IndexConfig(source="sketch")``): each test point's s_test is searched for its
k = 100 likeliest harmful and helpful rows, and only those are scored exactly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import rayif
from rayif import IndexConfig, RunConfig, ScalingConfig
from rayif.digits import digits_task, load_digits_images, load_digits_split

SHOWN = 3


def draw(table, picks, pred, split, images, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_img, test_img = images
    rows = table.to_pylist()
    fig, axes = plt.subplots(len(picks), 1 + 2 * SHOWN, figsize=(1.35 * (1 + 2 * SHOWN), 1.5 * len(picks)),
                             dpi=100, squeeze=False)
    for i, t in enumerate(picks):
        ax = axes[i, 0]
        ax.imshow(test_img[t], cmap="gray_r")
        ok = pred[t] == split.y_test[t]
        ax.set_title(f"test {t}\nlabel {split.y_test[t]}, pred {pred[t]}", fontsize=7, color="k" if ok else "r")
        for j, kind in enumerate(("helpful", "harmful")):
            mine = sorted((r for r in rows if r["test_id"] == t and r["kind"] == kind), key=lambda r: r["rank"])
            for c, r in enumerate(mine[:SHOWN]):
                ax = axes[i, 1 + j * SHOWN + c]
                ax.imshow(train_img[r["train_id"]], cmap="gray_r")
                ax.set_title(f"{kind} #{r['rank']}\ny={split.y_train[r['train_id']]} {r['influence']:+.2g}",
                             fontsize=7, color="tab:green" if kind == "helpful" else "tab:red")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("each test digit, its most helpful and most harmful training digits (influence)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="4 test points, 1 worker (CI)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="rayif-out/quickstart")
    args = ap.parse_args()
    n_points, workers = (4, 1) if args.small else (20, args.workers)
    out = Path(args.out)

    split = load_digits_split(n_train=1000, n_test=360, dtype=np.float32)
    images = load_digits_images(n_train=1000, n_test=360)
    task, _ = digits_task("mlp", split, dtype=torch.float32)
    with torch.no_grad():
        pred = task.build_model()(torch.as_tensor(split.x_test)).argmax(1).numpy()
    wrong, right = np.flatnonzero(pred != split.y_test), np.flatnonzero(pred == split.y_test)
    picks = np.concatenate([wrong[: n_points // 2], right[: n_points - min(len(wrong), n_points // 2)]])
    print(f"test accuracy {np.mean(pred == split.y_test):.3f}; explaining {len(picks)} test points "
          f"({min(len(wrong), n_points // 2)} misclassified)")

    train = (split.x_train, split.y_train)
    index = rayif.build_index(task, train, IndexConfig(source="sketch"), path=out / "index", num_rows=1000)
    test = {"x": split.x_test[picks], "y": split.y_test[picks], "id": picks}
    table = rayif.explain(task, train, test, top=5, index=index, k=100,
                          scaling_config=ScalingConfig(num_workers=workers), run_config=RunConfig(test_batch_size=8))
    rayif.write_parquet(table, out / "influence.parquet")
    png = draw(table, picks, pred, split, images, out / "quickstart.png")
    # the example checks its own result: 5 harmful and 5 helpful per test point, helpful < 0 < harmful mostly
    assert table.num_rows == len(picks) * 10
    harmful = np.array([r["influence"] for r in table.to_pylist() if r["kind"] == "harmful" and r["rank"] == 1])
    helpful = np.array([r["influence"] for r in table.to_pylist() if r["kind"] == "helpful" and r["rank"] == 1])
    assert (helpful < 0).all() and (harmful > helpful).all(), (harmful, helpful)
    print(f"wrote {out / 'influence.parquet'} and {png}")
    print("quickstart check passed")


if __name__ == "__main__":
    main()
