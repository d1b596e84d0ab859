"""The Ray path: a pool of worker actors, each with one model replica; the driver batches, merges, resumes."""

from .driver import WorkerPool, distributed_s_test, distributed_score, read_results, run_explain
from .scaling import ScalingConfig, ensure_ray

__all__ = ["ScalingConfig", "WorkerPool", "distributed_s_test", "distributed_score", "ensure_ray", "read_results",
           "run_explain"]
