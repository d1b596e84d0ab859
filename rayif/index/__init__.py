"""Candidates: training features (FastIF's kNN) or gradient sketches streamed by Ray Data into a persisted FAISS
index. Recall of an index's candidates is measured by :mod:`rayif.recall`, which runs solves: it sits above
this package, so ``import rayif.index`` loads neither the runner nor the executors."""

from __future__ import annotations

import importlib
import warnings

from .config import IndexConfig
from .faiss_index import FeatureIndex, build_index
from .features import training_dataset
from .sketch import GradientSketch

__all__ = ["FeatureIndex", "GradientSketch", "IndexConfig", "build_index", "training_dataset"]

_MOVED = ("candidate_recall", "knn_recall", "plot_recall")  # to rayif.recall in 0.8; these names go in 0.10


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(f"rayif.index.{name} moved to rayif.recall.{name}; the old name goes in 0.10",
                      FutureWarning, stacklevel=2)
        # resolved on use only: rayif.recall sits above this package (it runs solves)
        return getattr(importlib.import_module("rayif.recall"), name)
    raise AttributeError(f"module 'rayif.index' has no attribute {name!r}")
