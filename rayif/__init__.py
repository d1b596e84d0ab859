"""rayif: which training examples caused this prediction? FastIF influence functions on Ray.

Convention: ``influence = -grad L(z_test)^T H^-1 grad L(z)``; positive = harmful, negative = helpful.
"""

from .config import CGConfig, ExactConfig, LissaConfig, SolverConfig
from .data import Examples, as_examples
from .distributed import ScalingConfig, read_results
from .errors import LissaDivergenceError, NonFiniteError, RayifError, SolverError
from .index import FeatureIndex, IndexConfig, build_index
from .influence import compute_s_test, explain, influence_matrix, self_influence
from .results import SCHEMA, write_parquet
from .task import Task

__version__ = "0.1.0"

__all__ = [
    "SCHEMA",
    "ScalingConfig",
    "read_results",
    "CGConfig",
    "Examples",
    "ExactConfig",
    "FeatureIndex",
    "IndexConfig",
    "LissaConfig",
    "LissaDivergenceError",
    "NonFiniteError",
    "RayifError",
    "SolverConfig",
    "SolverError",
    "Task",
    "as_examples",
    "build_index",
    "compute_s_test",
    "explain",
    "influence_matrix",
    "self_influence",
    "write_parquet",
]
