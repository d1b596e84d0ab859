"""The FAISS index of the training set (features or gradient sketches): build from the Ray Data stream,
persist, reload, query."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Examples, as_examples
from ..errors import RayifError
from ..progress import Progress
from ..scaling import ensure_ray
from ..task import Task, model_fingerprint
from .config import IndexConfig
from .faiss_gpu import faiss_where, to_gpu
from .features import feature_batches, parquet_files, parquet_paths
from .sketch_setup import sketch_stage

log = logging.getLogger("rayif")

INDEX_FILE, META_FILE, BASIS_FILE = "index.faiss", "meta.json", "sketch_basis.pt"
FORMAT = 1


def feature_name(task: Task, source: str = "features") -> str:
    if source == "sketch":
        return "gradient_sketch"
    f = task.features
    return "last_linear_input" if f is None else f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', f)}"


@dataclass
class FeatureIndex:
    """Training features, or training-gradient sketches (``meta["source"]``), in a FAISS index whose ids are
    the training ids.

    ``index`` is a plain FAISS index (``IndexIDMap2`` over flat, or IVF with ids): ``faiss.read_index`` of
    the saved file returns training ids from ``search`` without rayif. A sketch index keeps its second-stage
    basis in ``basis`` (saved as ``sketch_basis.pt``).
    """

    index: Any
    meta: dict
    basis: Any = None
    _gpu: Any = field(default=None, init=False, repr=False)  # the GPU copy searches use, made on first search
    _sketch: Any = field(default=None, init=False, repr=False)  # the driver's GradientSketch, made on first query

    @property
    def fingerprint(self) -> str:
        """sha256 of what the index holds (model, feature function, kind, config, rows): a job's candidate
        source in its manifest."""
        keep = {k: self.meta.get(k) for k in ("kind", "metric", "dim", "rows", "nlist", "nprobe", "model_fingerprint",
                                                "feature_fn", "sketch")}
        keep["config"] = {k: v for k, v in self.meta.get("config", {}).items() if k not in _RUNTIME}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def source(self) -> str:
        """``"features"`` or ``"sketch"``."""
        return self.meta.get("source", "features")

    def __len__(self) -> int:
        return int(self.index.ntotal)

    # --- queries ----------------------------------------------------------------------------------

    def search(self, features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [m, k], distances [m, k])`` of the ``k`` nearest training rows of each feature row.

        Distances are squared L2 (ascending) or inner products (descending), as ``meta["metric"]`` says.
        """
        f = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise RayifError(f"query features must be [m, {self.dim}] (the index's dimension), got {f.shape}")
        if not np.isfinite(f).all():
            raise RayifError("query features hold NaN/inf")
        if not 1 <= k <= len(self):
            raise RayifError(f"k={k} nearest neighbours asked of an index of {len(self)} training rows; "
                             f"k must be in [1, {len(self)}]")
        dist, ids = self._searcher().search(f, k)
        if (ids < 0).any():  # IVF with too few probed cells returns -1 for missing neighbours
            raise RayifError(f"the index found fewer than k={k} neighbours for some queries; raise "
                             f"IndexConfig.nprobe (now {self.meta.get('nprobe')}) or lower k")
        return ids, dist

    def candidates(self, task: Task, test: Any, k: int, *, group: bool = False) -> np.ndarray:
        """``[m, k]`` training ids nearest each test point in feature space (FastIF's kNN preselection).

        ``group=True``: one row, the neighbours of the mean feature of all test points (FastIF's query for
        a group of test points). A sketch index ranks by ``s_test`` instead: :meth:`sketch_candidates`.
        """
        if self.source == "sketch":
            raise RayifError("a gradient-sketch index finds candidates from s_test, not from the test points' "
                             "features: pass it to explain(index=..., k=...), or call "
                             "sketch_candidates(task, s_test, k)")
        ex = test if isinstance(test, Examples) else as_examples(test, name="test data", dict_batch=task.dict_batches)
        f = self.features_of(task, ex)
        if group:
            f = f.mean(0, keepdims=True)
        return self.search(f, k)[0]

    def sketch_candidates(self, task: Task, s_test: torch.Tensor, k: int) -> np.ndarray:
        """``[m, k]`` training ids for ``s_test [m, p]``: the ``ceil(k/2)`` largest sketched influence
        ``-sketch(s_test) . sketch(grad L(z))`` (harmful side), then the ``floor(k/2)`` smallest (helpful side).
        The two halves can share ids only when ``k`` is close to the training set's size."""
        if self.source != "sketch":
            raise RayifError("sketch_candidates needs an index built with IndexConfig(source='sketch')")
        if not 2 <= k <= 2 * len(self):
            raise RayifError(f"k={k} candidates asked of a sketch index of {len(self)} rows: k must be in "
                             f"[2, {2 * len(self)}] (half harmful, half helpful, each at most the training size)")
        if self._sketch is None:
            from ..grads import Objective
            from .sketch import GradientSketch

            obj = Objective(task)
            self.check_task(task, obj.model)
            self._sketch = GradientSketch(obj, self.meta["sketch"]["width"], self.meta["sketch"]["seed"], self.basis)
        return self.sketch_halves(self._sketch.query(s_test), k)

    def sketch_halves(self, q: np.ndarray, k: int) -> np.ndarray:
        """``[m, k]`` training ids for sketched queries ``q [m, d]``: the ``ceil(k/2)`` of largest ``-q . v``
        (the harmful side), then the ``floor(k/2)`` of largest ``q . v`` (the helpful side)."""
        harmful = self.search(-q, k - k // 2)[0]
        if k // 2 == 0:
            return harmful
        return np.concatenate([harmful, self.search(q, k // 2)[0]], axis=1)

    @classmethod
    def from_arrays(cls, ids: np.ndarray, vectors: np.ndarray, config: IndexConfig | None = None) -> FeatureIndex:
        """An index of vectors already in memory, ``vectors [n, d]`` with their training ``ids [n]``: what
        :func:`build_index` makes of its pipeline's batches, for vectors computed otherwise (a sweep of sketch
        settings in one process). It knows no model, so it searches but checks no task and is not saved."""
        config = config or IndexConfig()
        builder = _Builder(config, len(ids))
        builder.add(np.asarray(ids, dtype=np.int64), vectors)
        index = builder.finish()
        return cls(index, {"format": FORMAT, "source": config.source, "kind": config.kind, "metric": config.metric,
                           "dim": builder.dim, "rows": int(index.ntotal), "nlist": builder.nlist,
                           "nprobe": builder.nprobe, "config": asdict(config)})

    def features_of(self, task: Task, ex: Examples, chunk_size: int = 4096) -> np.ndarray:
        model = task.build_model()
        self.check_task(task, model)
        parts = [task.compute_features(model, c.batch).float().numpy() for c in ex.chunks(chunk_size)]
        return np.concatenate(parts)

    def check_task(self, task: Task, model: torch.nn.Module | None = None) -> None:
        """Refuse a task whose model or feature function is not the one the index was built with.

        ``model``: the task's replica when the caller has built one already.
        """
        model = model or task.build_model()
        got = {"model_fingerprint": model_fingerprint(model),
               "feature_fn": feature_name(task, self.source)}
        if self.source == "sketch":  # the parameters the sketch covers are the task's selection
            got["sketch_params"] = task.selected_params(model)
        diff = [k for k, v in got.items() if self.meta.get(k) != v]
        if diff:
            raise RayifError(f"this index is stale: it was built with a different {' and '.join(diff)} "
                             f"({', '.join(f'{k} {self.meta.get(k)!s:.16} != {got[k]!s:.16}' for k in diff)}); "
                             "rebuild it (build_index(..., rebuild=True)) or point to another directory")

    def _searcher(self):
        if self._gpu is None:
            self._gpu = to_gpu(self.index) or self.index
        return self._gpu

    # --- persistence ------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``index.faiss`` (plain FAISS) and ``meta.json``; returns the directory."""
        import faiss

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(d / (INDEX_FILE + ".tmp")))
        (d / (INDEX_FILE + ".tmp")).rename(d / INDEX_FILE)
        if self.basis is not None:
            torch.save({"u": self.basis.u, "energy_kept": self.basis.energy_kept, "rows": self.basis.rows},
                       d / (BASIS_FILE + ".tmp"))
            (d / (BASIS_FILE + ".tmp")).rename(d / BASIS_FILE)
        (d / META_FILE).write_text(json.dumps(self.meta, indent=1))
        return d

    @classmethod
    def load(cls, directory: str | Path, task: Task | None = None, *, num_rows: int | None = None) -> FeatureIndex:
        """Read a saved index; with ``task`` (and ``num_rows``) refuse it if it is stale for them."""
        import faiss

        d = Path(directory)
        if not (d / INDEX_FILE).exists() or not (d / META_FILE).exists():
            raise RayifError(f"{d} holds no rayif index ({INDEX_FILE} and {META_FILE})")
        meta = json.loads((d / META_FILE).read_text())
        if meta.get("format") != FORMAT:
            raise RayifError(f"{d}: index format {meta.get('format')} is not this rayif's {FORMAT}; rebuild it")
        basis = None
        if meta.get("sketch", {}).get("basis_sha256"):
            from .sketch import Basis

            if not (d / BASIS_FILE).exists():
                raise RayifError(f"{d} holds a sketch index without its {BASIS_FILE}; rebuild it")
            state = torch.load(d / BASIS_FILE, weights_only=True)
            basis = Basis(state["u"], float(state["energy_kept"]), int(state["rows"]))
            if basis.digest() != meta["sketch"]["basis_sha256"]:
                raise RayifError(f"{d}: {BASIS_FILE} is not the basis this index was built with; rebuild it")
        idx = cls(faiss.read_index(str(d / INDEX_FILE)), meta, basis)
        if idx.index.ntotal != meta["rows"] or idx.index.d != meta["dim"]:
            raise RayifError(f"{d}: {INDEX_FILE} ({idx.index.ntotal} x {idx.index.d}) does not match {META_FILE} "
                             f"({meta['rows']} x {meta['dim']}); rebuild it")
        if task is not None:
            idx.check_task(task)
        if num_rows is not None and num_rows != meta["rows"]:
            raise RayifError(f"this index is stale: it holds {meta['rows']} training rows, the training data has "
                             f"{num_rows}; rebuild it (build_index(..., rebuild=True))")
        return idx


def build_index(task: Task, train: Any, config: IndexConfig | None = None, *, path: str | Path | None = None,
                rebuild: bool = False, input_column: str | Sequence[str] = "x", id_column: str = "id",
                num_rows: int | None = None, address: str | None = None, target_column: str = "y") -> FeatureIndex:
    """Stream the training set through the model (Ray Data actors) into a FAISS index of its features or,
    with ``IndexConfig(source="sketch")``, of sketches of its per-example gradients.

    Args:
        task: its ``features`` (default: the input of the last ``nn.Linear``) map inputs to ``[b, d]``; a
            sketch differentiates its training loss in its selected parameters.
        train: a ``ray.data.Dataset`` or parquet path(s) with ``input_column`` and an integer ``id_column``,
            or in-memory ``(inputs, targets)`` / ``Examples`` (ids: their ids, default row positions).
        config: the index type and the pipeline; default exact L2 (``IndexConfig()``).
        path: a directory to persist to. If it already holds an index built with this task's model,
            feature function and config, that one is loaded instead of building; one built otherwise is
            refused unless ``rebuild=True``.
        num_rows: the training set's row count when known, checked against a reused index.
        address: the Ray cluster to build on; default ``RAY_ADDRESS``, else a local Ray started here.
        target_column: (sketch, ``loss`` tasks, parquet or a Dataset) the targets the loss takes.
    """
    config = config or IndexConfig()
    if path is not None and (Path(path) / META_FILE).exists() and not rebuild:
        idx = FeatureIndex.load(path, task, num_rows=num_rows)
        saved = {**asdict(IndexConfig(source=idx.source)), **idx.meta.get("config", {})}  # fields added later
        if {k: v for k, v in saved.items() if k not in _RUNTIME} != {
                k: v for k, v in asdict(config).items() if k not in _RUNTIME}:
            raise RayifError(f"{path} holds an index built with another IndexConfig ({saved}); pass "
                             "rebuild=True to replace it or use another path")
        log.info("reusing the FAISS index in %s (%d rows, %s)", path, len(idx), idx.meta["kind"])
        return idx
    ensure_ray(address)
    t0 = time.perf_counter()
    sketch, basis, extra = None, None, {}
    if config.source == "sketch":
        sketch, basis, extra = sketch_stage(task, train, config, input_column, id_column, target_column)
    rows_hint = _dataset_rows(train)
    builder = _Builder(config, rows_hint)
    first = None
    stream = feature_batches(task, train, config, input_column=input_column, id_column=id_column,
                             target_column=target_column, sketch=sketch)
    bar = Progress(rows_hint or num_rows, f"rayif index ({config.source})", "row", enabled=config.progress)
    with closing(stream), bar:  # a batch the builder refuses still stops the pipeline (see feature_batches)
        for ids, feats in stream:
            if first is None:
                first = (time.perf_counter() - t0, len(ids))
            builder.add(ids, feats)
            bar.update(len(ids))
    index = builder.finish()
    meta = {"format": FORMAT, "source": config.source, "kind": config.kind, "metric": config.metric,
            "dim": builder.dim, "rows": int(index.ntotal), "nlist": builder.nlist, "nprobe": builder.nprobe,
            "model_fingerprint": model_fingerprint(task.build_model()), "feature_fn": feature_name(task, config.source),
            "config": asdict(config), "build_seconds": round(time.perf_counter() - t0, 3),
            "first_batch_seconds": round(first[0], 3), "first_batch_rows": first[1], **extra}
    idx = FeatureIndex(index, meta, basis)
    log.info("built a %s FAISS index of %d x %d %s in %.1fs (%s)", config.kind, len(idx), builder.dim,
             config.source, meta["build_seconds"], faiss_where())
    if path is not None:
        idx.save(path)
    return idx


_RUNTIME = ("batch_size", "use_gpu", "max_actors", "progress")  # how it was built, not what was built


def _dataset_rows(train: Any) -> int | None:
    """Row count of parquet path(s) from their metadata; ``None`` for anything else (the stream counts)."""
    paths = parquet_paths(train)
    if paths is not None:
        import pyarrow.parquet as pq

        try:
            return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(paths))
        except (OSError, ValueError):  # remote URIs and the like: the stream will tell
            return None
    return None


class _Builder:
    """Adds streamed batches; an IVF index buffers the first ``train_size`` rows to train its quantiser."""

    def __init__(self, config: IndexConfig, rows_hint: int | None):
        self.config, self.rows_hint = config, rows_hint
        self.index, self.dim, self.nlist, self.nprobe = None, None, None, None
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.pending_rows = 0
        self.seen: list[np.ndarray] = []  # every id streamed, to check they are unique whatever the index kind

    def add(self, ids: np.ndarray, feats: np.ndarray) -> None:
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if feats.ndim != 2 or len(feats) != len(ids):
            raise RayifError(f"the feature function must return [b, d] for b rows, got {feats.shape} for {len(ids)}")
        if self.dim is None:
            self.dim = feats.shape[1]
        elif feats.shape[1] != self.dim:
            raise RayifError(f"the feature function returned dimension {feats.shape[1]} after {self.dim}: "
                             "features must have one fixed dimension")
        if not np.isfinite(feats).all():
            bad = ids[~np.isfinite(feats).all(1)][:10]
            raise RayifError(f"features of training ids {bad.tolist()} hold NaN/inf")
        self.seen.append(ids)
        if self.index is None and self.config.kind != "flat":
            self.pending.append((ids, feats))
            self.pending_rows += len(ids)
            if self.pending_rows >= self.config.train_size:
                self._start(self._sample())
            return
        if self.index is None:
            self._start(None)
        self._add(ids, feats)

    def _sample(self) -> np.ndarray:
        """The buffered features sorted by id: k-means then sees the same order however the stream ran."""
        ids = np.concatenate([i for i, _ in self.pending])
        feats = np.concatenate([f for _, f in self.pending])
        return feats[np.argsort(ids, kind="stable")]

    def _start(self, sample: np.ndarray | None) -> None:
        import faiss

        metric = faiss.METRIC_L2 if self.config.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if self.config.kind == "flat":
            self.index = faiss.index_factory(self.dim, "IDMap2,Flat", metric)
            return
        n = max(self.rows_hint or 0, len(sample))
        self.nlist = min(self.config.cells(n), max(1, len(sample) // 39))
        code = "Flat" if self.config.kind == "ivf_flat" else f"PQ{self.config.pq_m}x{self.config.pq_bits}"
        if self.config.kind == "ivf_pq" and self.dim % self.config.pq_m:
            raise RayifError(f"IndexConfig.pq_m={self.config.pq_m} must divide the feature dimension {self.dim}")
        self.index = faiss.index_factory(self.dim, f"IVF{self.nlist},{code}", metric)
        ivf = faiss.extract_index_ivf(self.index)
        ivf.cp.seed = self.config.seed
        self.index.train(np.ascontiguousarray(sample[: self.config.train_size]))
        self.nprobe = self.config.probes(self.nlist)
        ivf.nprobe = self.nprobe
        pending, self.pending = self.pending, []
        for ids, feats in pending:
            self._add(ids, feats)

    def _add(self, ids: np.ndarray, feats: np.ndarray) -> None:
        self.index.add_with_ids(feats, ids.astype(np.int64))

    def finish(self):
        ids = np.concatenate(self.seen) if self.seen else np.zeros(0, np.int64)
        if len(ids) == 0:
            raise RayifError("the training data is empty: no rows to index")
        if len(np.unique(ids)) != len(ids):
            raise RayifError("training ids are not unique: the id column must identify each row")
        if self.index is None:  # fewer rows than train_size: train on all of them
            self._start(self._sample())
        if self.index.ntotal != len(ids):
            raise RayifError(f"{len(ids)} rows streamed but the index holds {self.index.ntotal}")
        return self.index
