"""A synthetic token-classification task and a small ``nn.TransformerEncoder`` classifier.

The dict-batch case a real transformer user has (``input_ids`` / ``attention_mask`` / ``labels``, padded
sequences, frozen lower layers, influence on the top layers), small enough to train in seconds on a CPU and
to check against the exact Hessian. Used by the example, the tests and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .task import Task

VOCAB, MAX_LEN, PAD = 24, 12, 0
_POSITIVE, _NEGATIVE = np.arange(1, 7), np.arange(7, 13)  # tokens 13.. are neutral


@dataclass(frozen=True)
class TokenData:
    """``input_ids [n, MAX_LEN]`` int64 (0 = padding), ``attention_mask [n, MAX_LEN]`` (1 = token),
    ``labels [n]``: 1 when the sequence holds more positive than negative tokens."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: slice | np.ndarray = slice(None)) -> dict[str, np.ndarray]:
        """The dict batch a ``batch_loss`` task takes (rows ``rows``)."""
        return {"input_ids": self.input_ids[rows], "attention_mask": self.attention_mask[rows],
                "labels": self.labels[rows]}


def make_tokens(n: int, seed: int = 0, label_noise: float = 0.05) -> TokenData:
    """``n`` sequences of 4 to ``MAX_LEN`` tokens, right-padded; a fraction ``label_noise`` of labels flipped."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, MAX_LEN + 1, size=n)
    ids = rng.integers(1, VOCAB, size=(n, MAX_LEN))
    mask = (np.arange(MAX_LEN)[None] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, PAD)
    score = np.isin(ids, _POSITIVE).sum(1) - np.isin(ids, _NEGATIVE).sum(1)
    labels = (score > 0).astype(np.int64)
    ties = score == 0
    labels[ties] = rng.integers(0, 2, size=int(ties.sum()))
    flip = rng.random(n) < label_noise
    labels[flip] = 1 - labels[flip]
    return TokenData(ids.astype(np.int64), mask, labels)


class TokenClassifier(nn.Module):
    """Embeddings + learned positions -> ``nn.TransformerEncoder`` (padding masked) -> masked mean pool ->
    linear head. The head's input is the pooled representation, the default kNN feature."""

    def __init__(self, d_model: int = 16, heads: int = 2, layers: int = 2, ff: int = 32, classes: int = 2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model, padding_idx=PAD)
        self.position = nn.Parameter(torch.zeros(MAX_LEN, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids) + self.position[: input_ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=attention_mask == 0)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def token_loss(model: Callable, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``batch_loss`` of the token task: per-example cross-entropy, ``[b]``."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return F.cross_entropy(logits, batch["labels"], reduction="none")


#: The parameters influence differentiates: the top encoder layer's feed-forward output and norm, and the head
#: (594 parameters: few enough for the exact Hessian; the rest is frozen).
TOP_LAYERS = ("encoder.layers.1.linear2.", "encoder.layers.1.norm2.", "head.")


def _factory(state: dict[str, torch.Tensor]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = TokenClassifier().to(next(iter(state.values())).dtype)
        model.load_state_dict(state)
        for name, p in model.named_parameters():  # the lower layers are frozen, as they were in training
            p.requires_grad_(name.startswith(TOP_LAYERS))
        return model

    return build


def token_task(train: TokenData, *, weight_decay: float = 1e-2, seed: int = 0, dtype: torch.dtype = torch.float64,
               pretrain_steps: int = 300) -> Task:
    """Train the classifier and wrap it in a :class:`~rayif.Task` with ``batch_loss`` and ``params=TOP_LAYERS``.

    Adam trains every layer for ``pretrain_steps``; then the lower layers are frozen and the top layers
    trained to a tight optimum of ``mean loss + weight_decay/2 ||theta_top||^2`` (L-BFGS), the objective the
    influence Hessian belongs to.
    """
    torch.manual_seed(seed)
    model = TokenClassifier().to(dtype)
    batch = {k: torch.as_tensor(v) for k, v in train.batch().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same weights in any process (see digits.train)
    try:
        for _ in range(pretrain_steps):
            opt.zero_grad()
            token_loss(model, batch).mean().backward()
            opt.step()
        top = [p for n, p in model.named_parameters() if n.startswith(TOP_LAYERS)]
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(TOP_LAYERS))
        lbfgs = torch.optim.LBFGS(top, lr=1, max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
                                  history_size=50, line_search_fn="strong_wolfe")

        def closure():
            lbfgs.zero_grad()
            loss = token_loss(model, batch).mean() + 0.5 * weight_decay * sum((p * p).sum() for p in top)
            loss.backward()
            return loss

        lbfgs.step(closure)
    finally:
        torch.set_num_threads(threads)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Task(model_factory=_factory(state), batch_loss=token_loss, weight_decay=weight_decay, params=TOP_LAYERS)
