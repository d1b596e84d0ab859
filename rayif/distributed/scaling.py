"""ScalingConfig (as Ray Train's) and connecting to Ray."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger("rayif")


@dataclass(frozen=True)
class ScalingConfig:
    """How many model replicas run and on what, named as in Ray Train's ``ScalingConfig``.

    Attributes:
        num_workers: Ray actors, each holding one model replica for the whole job.
        use_gpu: one GPU per worker (``num_gpus=1``); a worker whose process sees no CUDA device falls back
            to CPU and logs it.
        resources_per_worker: Ray resources each worker reserves, e.g. ``{"CPU": 2}``; default
            ``{"CPU": 1}`` (plus ``{"GPU": 1}`` with ``use_gpu``).
        max_restarts: times Ray restarts a worker that died; its unfinished calls are retried on the
            replacement, so a job survives that many deaths per worker with an identical result.
        placement_strategy: Ray scheduling strategy of the workers; "SPREAD" puts them on different nodes.
    """

    num_workers: int = 2
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    max_restarts: int = 3
    placement_strategy: str = "SPREAD"

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError(f"ScalingConfig.num_workers must be >= 1, got {self.num_workers}")
        if self.max_restarts < 0:
            raise ValueError(f"ScalingConfig.max_restarts must be >= 0, got {self.max_restarts}")

    def actor_options(self) -> dict:
        """``ray.remote(...).options`` for one worker."""
        res = dict(self.resources_per_worker or {})
        num_cpus = res.pop("CPU", 1)
        num_gpus = res.pop("GPU", 1 if self.use_gpu else 0)
        # max_task_retries=0: the driver resubmits a dead worker's unfinished calls itself (driver._gather)
        opts = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": self.max_restarts,
                "max_task_retries": 0, "scheduling_strategy": self.placement_strategy}
        if res:
            opts["resources"] = res
        return opts


def ensure_ray(address: str | None = None) -> None:
    """Connect to the cluster at ``address`` / ``RAY_ADDRESS``, or start a local Ray, once per process."""
    import ray

    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=target, log_to_driver=True)
    where = f"cluster at {target}" if target else "a local Ray started by rayif"
    log.info("connected to %s: %s", where, ray.cluster_resources())
