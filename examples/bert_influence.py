"""FastIF's own setting on a Hugging Face BERT: explanations printed with their tokens, and mislabelled training
examples found by self-influence.

    .venv/bin/python examples/bert_influence.py            # 1000 reviews, 2 Ray workers (about 3 minutes)
    .venv/bin/python examples/bert_influence.py --small    # 300 reviews, this process: what CI runs

The model is ``BertForSequenceClassification`` built from a config in code (2 layers, 16 wide; no download),
trained here with AdamW for a fixed budget on short reviews this script writes (positive and negative words
among neutral ones; 10% of the training labels flipped), with influence on the upper layer, the pooler and
the classifier, as FastIF selects them (FastIF also freezes the lower layers in training, which are
pretrained there; here nothing is pretrained, so everything trains). Batches are dicts with
``attention_mask``; the model returns a ``ModelOutput``. rayif takes both as they come: nothing here is
written for it but the ``Task``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

import rayif
from rayif import ScalingConfig, Task
from rayif.results import metadata
from rayif.zoo import WORDS, reviews, train

TOP_LAYERS = ("bert.encoder.layer.1.", "bert.pooler.", "classifier.")
CONFIG = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=32, num_labels=2)


def loss(model, batch):
    """What a user writes: the model called on the dict batch, per-example cross-entropy of its ``.logits``."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return F.cross_entropy(out.logits, batch["labels"], reduction="none")


class Trained:
    """The trained model for rayif's workers: the architecture from its config and the trained weights."""

    def __init__(self, state: dict):
        self.state = state

    def __call__(self) -> BertForSequenceClassification:
        model = BertForSequenceClassification(CONFIG)
        model.load_state_dict(self.state)
        return model


def words(ids: np.ndarray) -> str:
    return " ".join(WORDS[i] for i in ids if i > 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="300 reviews, this process (CI)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    n, workers = (300, 0) if args.small else (1000, args.workers)

    train_data, flipped = reviews(n, seed=0, label_noise=0.10)
    test_data, _ = reviews(6, seed=1)
    torch.manual_seed(0)
    model = BertForSequenceClassification(CONFIG)
    train(model, loss, train_data, epochs=40, lr=1e-2)
    task = Task(model_factory=Trained(model.state_dict()), batch_loss=loss, params=TOP_LAYERS)
    scaling = ScalingConfig(num_workers=workers)

    table = rayif.explain(task, train_data, test_data, top=3, scaling_config=scaling)
    meta = metadata(table)
    print(f"solver: {meta['solver_choice']['chosen']} on the {meta['solver']['curvature']} "
          f"({meta['solver_choice']['reason']}); per-example gradients by {meta['grad_path']['path']}")
    rows = table.to_pylist()
    for t in range(len(test_data["labels"])):
        print(f"\ntest {t} [label {test_data['labels'][t]}]: {words(test_data['input_ids'][t])}")
        for r in (r for r in rows if r["test_id"] == t):
            i = int(r["train_id"])
            mark = " (label flipped)" if i in set(flipped) else ""
            print(f"  {r['kind']:>7} {r['influence']:+.4f} [label {train_data['labels'][i]}]{mark}: "
                  f"{words(train_data['input_ids'][i])}")

    ranked = rayif.self_influence(task, train_data, scaling_config=scaling)["train_id"].to_numpy()
    inspect = ranked[: n // 10]
    found = len(np.intersect1d(inspect, flipped)) / len(flipped)
    print(f"\nself-influence: the top 10% of the training set holds {found:.0%} of the {len(flipped)} flipped "
          "labels (10% by chance)")
    for i in inspect[:5]:
        print(f"  [label {train_data['labels'][i]}]{' (flipped)' if i in set(flipped) else ''}: "
              f"{words(train_data['input_ids'][i])}")
    assert found >= 0.25, f"self-influence found only {found:.0%} of the flipped labels in the top 10%"
    print("bert check passed")


if __name__ == "__main__":
    main()
