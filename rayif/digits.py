"""scikit-learn's bundled digits (8x8 images, 10 classes): the embedded default data set and models.

Used by the demo, the examples, the tests and the benchmarks, so a fresh machine needs no download.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .task import Task


@dataclass(frozen=True)
class DigitsSplit:
    """Standardised digits features ``x [n, 64]`` and labels ``y [n]``, split into train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(n_train: int = 1000, n_test: int = 200, seed: int = 0,
                      dtype: np.dtype = np.float64) -> DigitsSplit:
    """A shuffled split of the 1797 digits images, standardised with the training statistics."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    if n_train + n_test > len(x):
        raise ValueError(f"digits has {len(x)} images; asked for {n_train} + {n_test}")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    mu, sd = x[:n_train].mean(0), x[:n_train].std(0) + 1.0
    x = ((x - mu) / sd).astype(dtype)
    y = y.astype(np.int64)
    return DigitsSplit(x[:n_train], y[:n_train], x[n_train : n_train + n_test], y[n_train : n_train + n_test])


def load_digits_images(n_train: int = 1000, n_test: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The raw 8x8 images (0-16) of :func:`load_digits_split`'s train and test rows, in the same order (for
    pictures)."""
    from sklearn.datasets import load_digits

    images = load_digits().images[np.random.default_rng(seed).permutation(1797)]
    return images[:n_train], images[n_train : n_train + n_test]


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy, ``[b]``."""
    return F.cross_entropy(outputs, targets, reduction="none")


def make_model(kind: str, hidden: int = 32, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """``"logistic"``: multinomial logistic regression (convex); ``"mlp"``: 64 -> hidden (tanh) -> 10;
    ``"cnn"``: the 8x8 image through two 3x3 convolutions (8 and 16 channels, ReLU, 2x2 max-pooling each),
    then 64 -> hidden (tanh) -> 10 (3658 parameters at hidden=32)."""
    torch.manual_seed(seed)
    if kind == "logistic":
        model = nn.Sequential(nn.Linear(64, 10))
    elif kind == "mlp":
        model = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))
    elif kind == "cnn":
        model = nn.Sequential(nn.Unflatten(1, (1, 8, 8)),
                              nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))
    else:
        raise ValueError(f"unknown model kind {kind!r}; 'logistic', 'mlp' or 'cnn'")
    return model.to(dtype)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, weight_decay: float, *,
          exclude: int | None = None, max_iter: int = 500, tol: float = 1e-10) -> nn.Module:
    """Minimise ``mean CE + weight_decay/2 ||theta||^2`` by full-batch L-BFGS, in place.

    ``exclude``: the position of one training example to leave out (leave-one-out retraining).
    """
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    if exclude is not None:
        keep = torch.ones(len(xt), dtype=torch.bool)
        keep[exclude] = False
        xt, yt = xt[keep], yt[keep]
    params = list(model.parameters())
    opt = torch.optim.LBFGS(params, lr=1, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-14,
                            history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = cross_entropy(model(xt), yt).mean() + 0.5 * weight_decay * sum((p * p).sum() for p in params)
        loss.backward()
        return loss

    # One thread: a sum over 1000 rows splits differently on 1 or 2 threads, which changes float32 weights
    # in the last bits and the influence in the 3rd digit; the demo must give the same table anywhere.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    return model


def model_factory(kind: str, hidden: int, state: dict[str, torch.Tensor]) -> Callable[[], nn.Module]:
    """A ``Task.model_factory``: a ``make_model(kind, hidden)`` with the weights ``state``."""

    def build() -> nn.Module:
        model = make_model(kind, hidden, dtype=next(iter(state.values())).dtype)
        model.load_state_dict(state)
        return model

    return build


def digits_task(kind: str = "mlp", split: DigitsSplit | None = None, *, weight_decay: float = 1e-3,
                hidden: int = 32, seed: int = 0, dtype: torch.dtype = torch.float64, max_iter: int = 500
                ) -> tuple[Task, DigitsSplit]:
    """Train a digits model (``max_iter`` L-BFGS steps) and wrap it in a :class:`~rayif.Task`; returns the task
    and its data."""
    split = split or load_digits_split(seed=seed, dtype=np.float64 if dtype == torch.float64 else np.float32)
    model = train(make_model(kind, hidden, seed, dtype), split.x_train, split.y_train, weight_decay,
                  max_iter=max_iter)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Task(model_factory=model_factory(kind, hidden, state), loss=cross_entropy, weight_decay=weight_decay), split


def example_task() -> Task:
    """The demo's task (64-32-10 tanh MLP, float32, weight decay 1e-3, seed 0), trained on the first 1000
    images of :func:`load_digits_split`: the ``--task rayif.digits:example_task`` of ``rayif explain``."""
    split = load_digits_split(dtype=np.float32)
    return digits_task("mlp", split, weight_decay=1e-3, dtype=torch.float32)[0]


def retrainer(task: Task, split: DigitsSplit, kind: str, *, hidden: int = 32,
              max_iter: int = 500) -> Callable[[np.ndarray], Task]:
    """``retrain(keep_ids) -> Task`` for :func:`rayif.validate.validate`: the same L-BFGS recipe on the kept
    rows (ids are row positions), warm-started at ``task``'s trained weights (the optimum for a convex model;
    the local basin of a non-convex one, as in Koh & Liang's leave-one-out)."""

    def retrain(keep: np.ndarray) -> Task:
        keep = np.asarray(keep)
        model = task.build_model()
        train(model, split.x_train[keep], split.y_train[keep], task.weight_decay, max_iter=max_iter)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return Task(model_factory=model_factory(kind, hidden, state), loss=cross_entropy,
                    weight_decay=task.weight_decay)

    return retrain


def validation_setup(kind: str = "logistic", seed: int = 0) -> tuple[Task, DigitsSplit, Callable[[np.ndarray], Task]]:
    """The embedded problems ``rayif validate --digits KIND`` checks, float64: ``"logistic"`` (convex, weight
    decay 1e-2) or ``"mlp"`` (64-32-10 tanh, weight decay 1e-3), 1000 training and 200 test digits."""
    split = load_digits_split(n_train=1000, n_test=200, seed=seed)
    task, _ = digits_task(kind, split, weight_decay=1e-2 if kind == "logistic" else 1e-3, seed=seed)
    return task, split, retrainer(task, split, kind)
