"""Models people bring, built from code and trained in seconds: what rayif is tested and benchmarked on.

Each entry of :data:`MODELS` is a small model of a family users train (Hugging Face BERT, GPT-2 and ViT, a
BatchNorm ResNet, an LSTM text classifier, an MLP with LayerNorm and Dropout), trained for a fixed budget
with AdamW on data made here (no downloads), so it is *not* at a minimum, as a user's model rarely is. They
are float64 so exact influence is a trustworthy reference. The Hugging Face models need ``transformers``
(``pip install "rayif[hf]"``).

``problem(name)`` returns a :class:`Problem`: the :class:`~rayif.Task` (influence on the top layers, as
FastIF selects them) and training and test data in the form the task takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .task import Task

MODELS = ("bert", "gpt2", "vit", "resnet", "lstm", "mlp_ln")

# A word-level vocabulary for the text tasks: padding, a start token, 10 positive, 10 negative, 18 neutral words.
WORDS = (["[PAD]", "[CLS]", "good", "great", "fine", "superb", "lovely", "nice", "happy", "brilliant", "excellent",
          "fun", "bad", "awful", "poor", "dull", "boring", "sad", "terrible", "ugly", "weak", "worse"]
         + ["the", "a", "movie", "plot", "actor", "scene", "was", "is", "and", "film", "story", "cast", "of", "it",
            "this", "very", "really", "quite"])
_POS, _NEG, _NEUTRAL = range(2, 12), range(12, 22), range(22, 40)


@dataclass
class Problem:
    """A trained model and its data. ``train`` / ``test``: what the task's batches are (an ``(x, y)`` pair or a
    dict of arrays); ``flipped``: training rows whose label was flipped (text tasks; else empty)."""

    name: str
    task: Task
    train: Any
    test: Any
    flipped: np.ndarray


def reviews(n: int, seed: int, length: int = 12, label_noise: float = 0.0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``n`` short reviews (``input_ids`` / ``attention_mask`` / ``labels``, right-padded to ``length``) whose
    label is their sentiment words' majority, and the rows whose label was flipped (``label_noise``)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, length), dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    labels = rng.integers(0, 2, n)
    for i in range(n):
        size = int(rng.integers(6, length + 1))
        own, other = (_POS, _NEG) if labels[i] else (_NEG, _POS)
        pools = rng.choice(3, size=size - 1, p=[0.35, 0.12, 0.53])
        words = [int(rng.choice([own, other, _NEUTRAL][k])) for k in pools]
        ids[i, :size] = [1, *words]
        mask[i, :size] = 1
    flipped = np.flatnonzero(rng.random(n) < label_noise)
    labels[flipped] = 1 - labels[flipped]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}, flipped


def sequences(n: int, seed: int, length: int = 12, vocab: int = 32) -> dict[str, np.ndarray]:
    """``n`` counting sequences for a language model (start anywhere, step 1..3 modulo the vocabulary, token 0
    is padding), right-padded to ``length``."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, length), dtype=np.int64)
    mask = np.zeros((n, length), dtype=np.int64)
    for i in range(n):
        size, start, step = int(rng.integers(5, length + 1)), int(rng.integers(1, vocab)), int(rng.integers(1, 4))
        ids[i, :size] = [1 + (start + step * t) % (vocab - 1) for t in range(size)]
        mask[i, :size] = 1
    return {"input_ids": ids, "attention_mask": mask}


def digits_images(n_train: int, n_test: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8x8 digits as ``[n, 1, 8, 8]`` float64 images in [0, 1] and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float64)[:, None]
    order = np.random.default_rng(0).permutation(len(x))
    tr, te = order[:n_train], order[n_train : n_train + n_test]
    return (x[tr], d.target[tr]), (x[te], d.target[te])


# --- models written here ---------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """A ResNet basic block: conv-BN-ReLU-conv-BN plus the identity, then ReLU (torchvision's layout)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class ResNet(nn.Module):
    """A small ResNet for 8x8 images: stem, two basic blocks, global average pooling, a linear head."""

    def __init__(self, width: int = 4, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(BasicBlock(width), BasicBlock(width))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        x = self.layer1(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class LSTMClassifier(nn.Module):
    """Embedding, LSTM, mean over the real tokens, linear head."""

    def __init__(self, vocab: int = len(WORDS), dim: int = 8, hidden: int = 16, classes: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, input_ids, attention_mask):
        h, _ = self.lstm(self.embed(input_ids))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


class NormMLP(nn.Module):
    """Linear, LayerNorm, GELU, Dropout, Linear: Dropout and LayerNorm behave as in eval."""

    def __init__(self, d_in: int = 64, hidden: int = 32, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(0.2),
                                 nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x.flatten(1))


def hf_model(name: str) -> nn.Module:
    """A small Hugging Face model of family ``name`` ("bert", "gpt2" or "vit"), built from its config (no download)."""
    import transformers as hf

    if name == "bert":
        cfg = hf.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=32, num_labels=2)
        return hf.BertForSequenceClassification(cfg)
    if name == "gpt2":
        cfg = hf.GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=1,
                            eos_token_id=1)
        return hf.GPT2LMHeadModel(cfg)  # input and output embeddings tied, as GPT-2's are
    cfg = hf.ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32, num_labels=10)
    return hf.ViTForImageClassification(cfg)


# --- losses, in the forms users write ------------------------------------------------------------------------

def classify(model, batch):
    """Per-example cross-entropy of a Hugging Face classifier on a dict batch (``.logits`` of its output)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return F.cross_entropy(model(**inputs).logits, batch["labels"], reduction="none")


def next_token(model, batch):
    """Per-sequence mean next-token cross-entropy over the real tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    target, real = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].to(logits.dtype)
    ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    return (ce * real).sum(1) / real.sum(1)


def lstm_loss(model, batch):
    return F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), batch["labels"], reduction="none")


def _cross_entropy(out, y):
    return F.cross_entropy(out, y, reduction="none")


# --- training ---------------------------------------------------------------------------------------------------

def train(model: nn.Module, loss: Callable, data: Any, *, epochs: int, lr: float = 1e-2, batch_size: int = 32,
          seed: int = 0) -> nn.Module:
    """AdamW on the mean of ``loss(model, batch)`` for a fixed number of epochs (no convergence test)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {k: torch.as_tensor(v) for k, v in (data.items() if isinstance(data, dict) else enumerate(data))}
    n = len(next(iter(tensors.values())))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            batch = {k: v[idx] for k, v in tensors.items()}
            batch = batch if isinstance(data, dict) else (batch[0], batch[1])
            opt.zero_grad()
            loss(model, batch).mean().backward()
            opt.step()
    return model.eval()


class _Trained:
    """A picklable model factory: the architecture's builder and the trained weights."""

    def __init__(self, build: Callable[[], nn.Module], state: dict):
        self.build, self.state = build, state

    def __call__(self) -> nn.Module:
        model = self.build().double()
        model.load_state_dict(self.state)
        return model.eval()


def _builder(name: str) -> Callable[[], nn.Module]:
    return {"resnet": ResNet, "lstm": LSTMClassifier, "mlp_ln": NormMLP}.get(name) or _HF(name)


class _HF:
    def __init__(self, name: str):
        self.name = name

    def __call__(self) -> nn.Module:
        return hf_model(self.name)


_SPECS = {  # name: (data, loss in (model, batch) form, selected parameter prefixes, epochs)
    "bert": ("reviews", classify, ("bert.encoder.layer.1.", "bert.pooler.", "classifier."), 6),
    "gpt2": ("sequences", next_token, ("transformer.h.1.",), 8),
    "vit": ("images", classify, ("vit.layers.1.", "vit.encoder.layer.1.", "vit.layernorm.", "classifier."), 8),
    "resnet": ("images", lambda m, b: _cross_entropy(m(b[0]), b[1]), None, 8),
    "lstm": ("reviews", lstm_loss, None, 8),
    "mlp_ln": ("images", lambda m, b: _cross_entropy(m(b[0]), b[1]), None, 10),
}


def problem(name: str, n_train: int = 192, n_test: int = 8, seed: int = 0, label_noise: float = 0.0) -> Problem:
    """Build, train (seconds) and wrap zoo model ``name`` (one of :data:`MODELS`)."""
    if name not in _SPECS:
        raise ValueError(f"unknown zoo model {name!r}; choose one of {MODELS}")
    kind, loss, params, epochs = _SPECS[name]
    flipped = np.zeros(0, dtype=np.int64)
    if kind == "reviews":
        train_data, flipped = reviews(n_train, seed, label_noise=label_noise)
        test_data, _ = reviews(n_test, seed + 1)
    elif kind == "sequences":
        train_data, test_data = sequences(n_train, seed), sequences(n_test, seed + 1)
    else:
        (xtr, ytr), (xte, yte) = digits_images(n_train, n_test)
        if name == "vit":
            train_data, test_data = {"pixel_values": xtr, "labels": ytr}, {"pixel_values": xte, "labels": yte}
        else:
            train_data, test_data = (xtr, ytr), (xte, yte)
    torch.manual_seed(seed)
    build = _builder(name)
    model = train(build().double(), loss, train_data, epochs=epochs, seed=seed)
    factory = _Trained(build, {k: v.detach().clone() for k, v in model.state_dict().items()})
    if isinstance(train_data, dict):
        task = Task(model_factory=factory, batch_loss=loss, params=params)
    else:
        task = Task(model_factory=factory, loss=_cross_entropy, params=params)
    return Problem(name, task, train_data, test_data, flipped)
