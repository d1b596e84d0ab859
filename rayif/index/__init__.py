"""Candidates: training features (FastIF's kNN) or gradient sketches streamed by Ray Data into a persisted FAISS
index."""

from .config import IndexConfig
from .faiss_index import FeatureIndex, build_index
from .features import training_dataset
from .recall import candidate_recall, knn_recall, plot_recall
from .sketch import GradientSketch

__all__ = ["FeatureIndex", "GradientSketch", "IndexConfig", "build_index", "candidate_recall", "knn_recall",
           "plot_recall", "training_dataset"]
