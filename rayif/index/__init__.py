"""FastIF's kNN preselection: training features streamed by Ray Data into a persisted FAISS index."""

from .config import IndexConfig
from .faiss_index import FeatureIndex, build_index
from .features import training_dataset
from .recall import knn_recall, plot_recall

__all__ = ["FeatureIndex", "IndexConfig", "build_index", "knn_recall", "plot_recall", "training_dataset"]
