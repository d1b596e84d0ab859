"""IndexConfig: what a FAISS index holds of the training set (features or gradient sketches), which FAISS index
type, and how the Ray Data pipeline fills it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import RayifError

KINDS = ("flat", "ivf_flat", "ivf_pq")
METRICS = ("l2", "ip")
SOURCES = ("features", "sketch")


@dataclass(frozen=True)
class IndexConfig:
    """A FAISS index over the training set: its features (FastIF's kNN) or sketches of its gradients.

    Attributes:
        source: ``"features"``: the task's features (its final representation), searched for each test
            point's nearest neighbours (FastIF). ``"sketch"``: a ``sketch_dim``-dimensional linear sketch of
            each training example's loss gradient (``rayif.index.sketch``), searched by inner product with
            the sketch of ``s_test``: the candidates are the points of largest approximate influence. Needs
            ``metric="ip"`` (its default).
        kind: ``"flat"``: exact search, FastIF's choice; ``"ivf_flat"``: inverted lists, for large ``n``;
            ``"ivf_pq"``: inverted lists with product-quantised vectors, the smallest in memory.
        metric: ``"l2"`` (squared Euclidean distance, smaller is nearer) or ``"ip"`` (inner product,
            larger is nearer); ``None``: ``"l2"`` for features, ``"ip"`` for sketches.
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
        seed: the order parquet files are read in for IVF, the IVF k-means, and the sketch's random stage.
        sketch_dim: ``d``, the dimension of a sketch (``source="sketch"``): the top ``d`` directions of the
            sampled training gradients (fewer if they span fewer). Index memory: ``4 d`` bytes per row.
        sketch_width: the first, random stage's dimension; the identity when the selected parameters number
            no more than this (their gradients then go to the second stage as they are).
        basis_rows: training rows (the first ones out of the pipeline) whose sketches fit the second stage.
        progress: a bar over the rows as they are indexed. ``None``: on when stderr is a terminal and ``CI`` is
            unset. How it is built, not what: not part of the index's identity.
    """

    kind: str = "flat"
    metric: str | None = None
    nlist: int | None = None
    nprobe: int | None = None
    train_size: int = 100_000
    pq_m: int = 8
    pq_bits: int = 8
    batch_size: int = 4096
    use_gpu: bool = False
    max_actors: int | None = None
    seed: int = 0
    source: str = "features"
    sketch_dim: int = 256
    sketch_width: int = 32768
    basis_rows: int = 2048
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise RayifError(f"IndexConfig.source must be one of {SOURCES}, got {self.source!r}")
        if self.metric is None:
            object.__setattr__(self, "metric", "ip" if self.source == "sketch" else "l2")
        if self.source == "sketch" and self.metric != "ip":
            raise RayifError("a gradient sketch is searched by inner product (influence is one): "
                             "IndexConfig(source='sketch') needs metric='ip' (or None)")
        if self.kind not in KINDS:
            raise RayifError(f"IndexConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if self.metric not in METRICS:
            raise RayifError(f"IndexConfig.metric must be one of {METRICS}, got {self.metric!r}")
        for name in ("nlist", "nprobe", "max_actors"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise RayifError(f"IndexConfig.{name} must be >= 1 or None, got {v}")
        for name in ("train_size", "pq_m", "pq_bits", "batch_size", "sketch_dim", "sketch_width", "basis_rows"):
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
