"""IndexConfig: which FAISS index holds the training features, and how the Ray Data pipeline fills it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import RayifError

KINDS = ("flat", "ivf_flat", "ivf_pq")
METRICS = ("l2", "ip")


@dataclass(frozen=True)
class IndexConfig:
    """A FAISS index over the training set's features (the task's final representation).

    Attributes:
        kind: ``"flat"``: exact search, FastIF's choice; ``"ivf_flat"``: inverted lists, for large ``n``;
            ``"ivf_pq"``: inverted lists with product-quantised vectors, the smallest in memory.
        metric: ``"l2"`` (squared Euclidean distance, smaller is nearer) or ``"ip"`` (inner product,
            larger is nearer).
        nlist: IVF cells; ``None``: ``round(sqrt(n))`` clamped so every cell has >= 39 training rows.
        nprobe: IVF cells visited per query; recall rises and speed falls with it. ``None``:
            ``max(8, nlist // 16)`` (at most ``nlist``); see the README for the recall it gave.
        train_size: rows whose features train the IVF quantiser: the first ones out of the pipeline. Parquet
            files are read in a seeded random order so they sample the whole set, not the head of the first
            file; a ``ray.data.Dataset`` is taken in its own order (shuffle it if it is sorted).
        pq_m: PQ sub-quantisers (``ivf_pq``); must divide the feature dimension.
        pq_bits: bits per PQ code (``ivf_pq``).
        batch_size: rows per ``map_batches`` call of the feature actors.
        use_gpu: feature actors take one GPU each (``num_gpus=1``) and FAISS searches on GPU when it sees
            one; falls back to CPU with a log line.
        max_actors: upper bound of the autoscaling feature-actor pool; ``None``: as many as the cluster's
            free CPUs (or GPUs) allow while leaving one CPU for Ray Data's read tasks.
        seed: the order parquet files are read in for IVF, and the IVF k-means.
    """

    kind: str = "flat"
    metric: str = "l2"
    nlist: int | None = None
    nprobe: int | None = None
    train_size: int = 100_000
    pq_m: int = 8
    pq_bits: int = 8
    batch_size: int = 4096
    use_gpu: bool = False
    max_actors: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RayifError(f"IndexConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.metric not in METRICS:
            raise RayifError(f"IndexConfig.metric must be one of {METRICS}, got {self.metric!r}")
        for name in ("nlist", "nprobe", "max_actors"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise RayifError(f"IndexConfig.{name} must be >= 1 or None, got {v}")
        for name in ("train_size", "pq_m", "pq_bits", "batch_size"):
            if getattr(self, name) < 1:
                raise RayifError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")

    def cells(self, n: int) -> int:
        """``nlist`` for ``n`` training rows."""
        if self.nlist is not None:
            return self.nlist
        return max(1, min(round(math.sqrt(n)), min(n, self.train_size) // 39))

    def probes(self, nlist: int) -> int:
        """``nprobe`` for ``nlist`` cells."""
        return min(nlist, self.nprobe if self.nprobe is not None else max(8, nlist // 16))
