"""rayif: which training examples caused this prediction? FastIF influence functions on Ray.

Convention: ``influence = -grad L(z_test)^T H^-1 grad L(z)``; positive = harmful, negative = helpful.
"""

from .api import compute_s_test, explain, influence_matrix, self_influence
from .config import AutoConfig, CGConfig, EKFACConfig, ExactConfig, LissaConfig, RunConfig, SolverConfig
from .data import Examples, as_examples
from .errors import ConvergenceError, IndefiniteError, LissaDivergenceError, NonFiniteError, RayifError, SolverError
from .index import FeatureIndex, IndexConfig, build_index
from .job_folder import read_results
from .results import SCHEMA, write_parquet
from .scaling import ScalingConfig
from .task import Task

__version__ = "0.9.6"

__all__ = [
    "SCHEMA",
    "AutoConfig",
    "CGConfig",
    "ConvergenceError",
    "EKFACConfig",
    "Examples",
    "ExactConfig",
    "FeatureIndex",
    "IndefiniteError",
    "IndexConfig",
    "LissaConfig",
    "LissaDivergenceError",
    "NonFiniteError",
    "RayifError",
    "RunConfig",
    "ScalingConfig",
    "SolverConfig",
    "SolverError",
    "Task",
    "as_examples",
    "build_index",
    "compute_s_test",
    "explain",
    "influence_matrix",
    "read_results",
    "self_influence",
    "write_parquet",
]
