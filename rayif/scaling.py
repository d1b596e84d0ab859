"""ScalingConfig (as Ray Train's) and connecting to Ray."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .errors import RayifError

log = logging.getLogger("rayif")

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass(frozen=True)
class ScalingConfig:
    """How many model replicas run and on what, named as in Ray Train's ``ScalingConfig``.

    Attributes:
        num_workers: Ray actors, each holding one model replica for the whole job. ``0``: no Ray, one
            replica in this process (as Ray Train runs its controller alone).
        use_gpu: one GPU per worker (``num_gpus=1``; with ``num_workers=0``, this process's GPU); a worker
            whose process sees no CUDA device falls back to CPU and logs it.
        resources_per_worker: Ray resources each worker reserves, e.g. ``{"CPU": 2}``; default
            ``{"CPU": 1}`` (plus ``{"GPU": 1}`` with ``use_gpu``).
        placement_strategy: how the workers' placement group spreads them: ``"SPREAD"`` (one per node first),
            ``"PACK"``, ``"STRICT_SPREAD"``, ``"STRICT_PACK"``.
        placement_timeout_s: seconds to wait for the cluster to place every worker; then a ``RayifError``
            names the resources that are missing (an autoscaling cluster may need minutes to add nodes).
    """

    num_workers: int = 2
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    placement_strategy: str = "SPREAD"
    placement_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise RayifError(f"ScalingConfig.num_workers must be >= 0, got {self.num_workers}")
        if self.placement_strategy not in STRATEGIES:
            raise RayifError(f"ScalingConfig.placement_strategy must be one of {STRATEGIES}, "
                             f"got {self.placement_strategy!r}")
        if self.placement_timeout_s <= 0:
            raise RayifError(f"ScalingConfig.placement_timeout_s must be > 0, got {self.placement_timeout_s}")
        bad = {k: v for k, v in (self.resources_per_worker or {}).items() if not v >= 0}
        if bad:
            raise RayifError(f"ScalingConfig.resources_per_worker must hold amounts >= 0, got {bad}")

    def bundle(self) -> dict[str, float]:
        """The resources one worker reserves: one placement-group bundle."""
        res = {"CPU": 1.0, **({"GPU": 1.0} if self.use_gpu else {}), **(self.resources_per_worker or {})}
        return {k: float(v) for k, v in res.items() if v > 0}


def ensure_ray(address: str | None = None) -> None:
    """Connect to the cluster at ``address`` / ``RAY_ADDRESS``, or start a local Ray, once per process."""
    import ray

    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=target, log_to_driver=True)
    where = f"cluster at {target}" if target else "a local Ray started by rayif"
    log.info("connected to %s: %s", where, ray.cluster_resources())
