"""What every section of the FastIF reproduction shares: its settings, the digits problems with their exact
influence and candidate indexes, and the measures of agreement with exact."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.stats as st
import torch

from rayif import IndexConfig, LissaConfig, build_index, compute_s_test
from rayif.config import ExactConfig
from rayif.data import Examples, as_examples
from rayif.digits import digits_task, load_digits_split, retrainer
from rayif.grads import Objective
from rayif.ihvp import estimate_scale
from rayif.kernels import influence_from_grads


@dataclass(frozen=True)
class Settings:
    """One run's sizes. ``full()`` is what RESULTS.md reports; ``quick_mode()`` is what CI runs in a few minutes.

    LiSSA shapes are ``(J, B, T)``: recursion depth, rows per sampled batch, independent repetitions.
    """

    test_points: int = 50  # digits test points of Tables 1-2 and Fig. 3a (half of them mispredicted when possible)
    naive_points: int = 3  # test points the one-at-a-time loop is timed on (it shares nothing between points)
    k_fraction: float = 0.1  # candidates per test point, share of the training set
    original: tuple[int, int, int] = (3000, 64, 1)  # Koh & Liang's s_test: J to convergence, large B, T = 1
    fast: tuple[int, int, int] = (1000, 8, 2)  # FastIF's: medium J, small B, T repetitions run in parallel
    recall_fractions: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
    grid_points: int = 10
    grid_depths: tuple[int, ...] = (100, 300, 1000, 3000)
    grid_batches: tuple[int, ...] = (1, 8, 64)
    grid_repetitions: tuple[int, ...] = (1, 4)
    cg_tols: tuple[float, ...] = (1e-1, 1e-2, 1e-3)
    preconditioned_lissa: bool = True  # LissaConfig() with EK-FAC (about 15 s)
    retrain_points: int = 10  # per model; half mispredicted when possible
    retrain_points_mlp: int = 6
    remove: tuple[int, ...] = (1, 5, 10, 25, 50)
    random_seeds: int = 3
    mlp_retrain_iters: int = 150  # warm-started L-BFGS steps of a non-convex retrain
    scale_rows: int = 1_000_000
    scale_test_points: int = 1000
    scale_k: int = 1000
    scale_lissa: tuple[int, int, int] = (100, 32, 2)
    quick: bool = False
    seed: int = 0

    @classmethod
    def full(cls) -> Settings:
        return cls()

    @classmethod
    def quick_mode(cls) -> Settings:
        # shallower LiSSA: its agreement on the MLP is reported, not checked (no ground-truth test holds it)
        return cls(test_points=20, naive_points=1, original=(300, 64, 1), fast=(300, 8, 2),
                   recall_fractions=(0.01, 0.05, 0.1, 0.5, 1.0), grid_points=10,
                   grid_depths=(100, 300), grid_batches=(8,), grid_repetitions=(1, 2), cg_tols=(1e-3,),
                   preconditioned_lissa=False, retrain_points=4, retrain_points_mlp=2, remove=(1, 10),
                   random_seeds=1, mlp_retrain_iters=50, scale_rows=10_000, scale_test_points=50, scale_k=100,
                   quick=True)


def lissa(shape: tuple[int, int, int], scale: float, **kw: Any) -> LissaConfig:
    """FastIF's LiSSA: fixed depth, last iterate, no preconditioner, no early stop, a given scale."""
    j, b, t = shape
    return LissaConfig(depth=j, batch_size=b, repetitions=t, scale=scale, tail_average=0.0, tol=None,
                       preconditioner=None, **kw)


class Clock:
    """``with clock("name"):`` adds the block's wall seconds to ``clock.seconds["name"]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> Clock:
        self._name = name
        return self

    def __enter__(self) -> Clock:
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + time.perf_counter() - self._t


@dataclass
class Problem:
    """A digits model (float64, 1000 training and 200 test images) with the exact influence of a sample of
    test points on every training image, the LiSSA scale every LiSSA row shares, and its two indexes."""

    kind: str
    task: Any
    split: Any
    train: Examples
    test: Examples  # the sample, ``[m]``
    correct: np.ndarray  # [m] bool: the model predicts the sample's label
    s_exact: torch.Tensor  # [m, p]
    exact: np.ndarray  # [m, n] exact influence
    indexes: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    retrain: Any = None
    k: int = 0  # candidates per test point
    scales: dict[int, float] = field(default_factory=dict)  # LiSSA's scale for each batch size B
    seed: int = 0

    def lissa(self, shape: tuple[int, int, int]) -> LissaConfig:
        """FastIF's LiSSA of ``shape`` with the scale its batch size needs, estimated once per ``B`` (power
        iteration on sampled batches of ``B`` rows, as ``LissaConfig(scale=None)`` does): every LiSSA of one ``B``
        here shares it, so the naive loop and rayif run the same recursion."""
        b = shape[1]
        if b not in self.scales:
            t0 = time.perf_counter()
            self.scales[b] = estimate_scale(Objective(self.task), self.train, lissa(shape, 1.0), seed=self.seed)
            self.seconds["LiSSA scale (power iteration)"] = (self.seconds.get("LiSSA scale (power iteration)", 0.0)
                                                             + time.perf_counter() - t0)
        return lissa(shape, self.scales[b])

    @classmethod
    def build(cls, kind: str, settings: Settings, *, retrain_iters: int = 500) -> Problem:
        clock = Clock()
        with clock("train the model"):
            split = load_digits_split(n_train=1000, n_test=200, seed=settings.seed)
            task, _ = digits_task(kind, split, weight_decay=1e-2 if kind == "logistic" else 1e-3, seed=settings.seed)
        train = as_examples((split.x_train, split.y_train))
        test_all = as_examples((split.x_test, split.y_test))
        model = task.build_model()
        with torch.no_grad():
            correct_all = (model(torch.as_tensor(split.x_test)).argmax(1).numpy() == split.y_test)
        picks = balanced_sample(correct_all, settings.test_points, settings.seed)
        test = test_all.take(picks)
        with clock("exact s_test (explicit Hessian)"):
            s_exact = compute_s_test(task, train, test, ExactConfig(), seed=settings.seed)
        exact = influence_of(task, train, s_exact)
        p = cls(kind, task, split, train, test, correct_all[picks], s_exact, exact, seed=settings.seed)
        p.k = max(10, round(settings.k_fraction * len(train)))
        p.retrain = retrainer(task, split, kind, max_iter=retrain_iters)
        for source in ("features", "sketch"):
            with clock(f"{source} index (Ray Data -> FAISS)"):
                p.indexes[source] = build_index(task, (split.x_train, split.y_train),
                                                IndexConfig(source=source, progress=False))
        p.seconds = clock.seconds
        for shape in (settings.original, settings.fast):
            p.lissa(shape)
        return p


def balanced_sample(correct: np.ndarray, m: int, seed: int) -> np.ndarray:
    """``m`` test positions, sorted, half of them mispredicted where there are enough (FastIF balances its
    evaluation points between correct and incorrect predictions)."""
    rng = np.random.default_rng(seed)
    wrong, right = np.flatnonzero(~correct), np.flatnonzero(correct)
    w = min(len(wrong), m // 2)
    return np.sort(np.concatenate([rng.choice(wrong, w, replace=False), rng.choice(right, m - w, replace=False)]))


def influence_of(task: Any, train: Examples, s_test: torch.Tensor) -> np.ndarray:
    """``-s_test . grad L(z)`` for every training row: ``[m, n]`` float64."""
    obj = Objective(task)
    return np.concatenate([influence_from_grads(s_test, obj.train_grads(c)) for c in train.chunks(4096)], axis=1)


def agreement(values: list[np.ndarray], exact: list[np.ndarray]) -> dict[str, float]:
    """Pearson, Spearman and Kendall of each test point's values with exact on the same training rows (FastIF
    Table 2): mean and standard deviation over the test points, in percent as the paper prints them."""
    out: dict[str, float] = {}
    for name, fn in (("pearson", st.pearsonr), ("spearman", st.spearmanr), ("kendall", st.kendalltau)):
        r = np.array([fn(a, b)[0] for a, b in zip(values, exact, strict=True)]) * 100
        out[name], out[f"{name}_std"] = float(r.mean()), float(r.std())
    return out


def top_overlap(harmful: list[np.ndarray], exact_top: np.ndarray) -> float:
    """Mean share of each test point's exact top-10 harmful (over the whole training set) in a method's top-10."""
    return float(np.mean([len(np.intersect1d(h[:10], t[:10])) / 10 for h, t in zip(harmful, exact_top, strict=True)]))
