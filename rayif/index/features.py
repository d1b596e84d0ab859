"""The Ray Data pipeline: training rows in, ``(id, feature)`` batches out, computed by model-holding actors."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Examples, as_examples
from ..errors import RayifError
from ..task import Task
from .config import IndexConfig

log = logging.getLogger("rayif")


def training_dataset(data: Any, *, input_column: str | Sequence[str] = "x", id_column: str = "id"):
    """The training set as a ``ray.data.Dataset`` with an integer id column.

    ``data``: a ``ray.data.Dataset`` or parquet path(s), which must carry ``id_column`` (ids of rows read in
    parallel are only stable if they are in the data), or in-memory arrays / ``Examples`` / a mapping,
    whose ids default to row positions.
    """
    import ray.data

    if isinstance(data, ray.data.Dataset):
        ds = data
    elif isinstance(data, (str, Path)) or (isinstance(data, (list, tuple)) and data
                                           and all(isinstance(p, (str, Path)) for p in data)):
        paths = [str(p) for p in ([data] if isinstance(data, (str, Path)) else data)]
        ds = ray.data.read_parquet(paths)
    else:
        ex = data if isinstance(data, Examples) else as_examples(data, name="training data")
        ds = ray.data.from_items([{id_column: int(i), "x": x} for i, x in zip(ex.ids, ex.inputs.numpy(),
                                                                               strict=True)])
        input_column = "x"
        return ds, input_column
    names = ds.schema().names if ds.schema() is not None else []
    wanted = [id_column, *([input_column] if isinstance(input_column, str) else input_column)]
    missing = [c for c in wanted if c not in names]
    if missing:
        hint = (f" (give every row a stable integer id, e.g. its position, as column {id_column!r})"
                if id_column in missing else "")
        raise RayifError(f"training data has no column(s) {missing}{hint}; its columns are {names}")
    return ds, input_column


class FeatureActor:
    """Holds one model replica; ``__call__`` maps a batch of rows to their ids and features ``[b, d]``."""

    def __init__(self, task: Task, input_column: str | Sequence[str], id_column: str, use_gpu: bool):
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        if use_gpu and self.device == "cpu":
            log.warning("rayif feature actor: asked for a GPU but torch sees no CUDA device: features on CPU")
        self.task, self.input_column, self.id_column = task, input_column, id_column
        self.model = task.build_model(self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(_inputs(batch, self.input_column))).to(self.device)
        with torch.no_grad():
            f = self.task.compute_features(self.model, x)
        ids = np.asarray(batch[self.id_column])
        if not np.issubdtype(ids.dtype, np.integer):
            raise RayifError(f"id column {self.id_column!r} must hold integers, got {ids.dtype}")
        return {"id": ids.astype(np.int64), "feature": f.float().cpu().numpy()}


def _inputs(batch: dict[str, np.ndarray], column: str | Sequence[str]) -> np.ndarray:
    if not isinstance(column, str):  # scalar columns side by side: one input vector per row
        return np.stack([np.asarray(batch[c]) for c in column], axis=1)
    x = batch[column]
    if x.dtype == object:  # list<...> columns arrive as arrays of arrays
        x = np.stack([np.asarray(v) for v in x])
    return x


def feature_batches(task: Task, data: Any, config: IndexConfig, *, input_column: str | Sequence[str] = "x",
                    id_column: str = "id") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream ``(ids [b], features [b, d] float32)`` for every training row, through Ray Data actors.

    The rows never gather on the driver: only their features arrive here, a batch at a time.
    """
    import ray
    from ray.data import ActorPoolStrategy

    ds, input_column = training_dataset(data, input_column=input_column, id_column=id_column)
    ds = ds.randomize_block_order(seed=config.seed)  # the first rows out sample the whole set (IVF training)
    size, per_actor = _pool_size(ray.available_resources(), config)
    log.info("rayif features: Ray Data actor pool of 1..%d actors, %s each", size, per_actor)
    feats = ds.map_batches(
        FeatureActor,
        fn_constructor_kwargs={"task": task, "input_column": input_column, "id_column": id_column,
                               "use_gpu": config.use_gpu},
        batch_size=config.batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=size),
        **per_actor,
    )
    yield from ((b["id"], b["feature"]) for b in feats.iter_batches(batch_size=None, batch_format="numpy"))


def _pool_size(free: dict[str, float], config: IndexConfig) -> tuple[int, dict[str, float]]:
    """How many feature actors may run and what each reserves.

    A pool whose actors hold every CPU starves Ray Data's own read tasks and the job hangs (it does on a
    2-CPU machine), so CPU actors leave one CPU free, and GPU actors take only a fraction of one.
    """
    cpus = float(free.get("CPU", 1.0))
    if config.use_gpu and free.get("GPU", 0) >= 1:
        size, per_actor = int(free["GPU"]), {"num_gpus": 1, "num_cpus": min(1.0, cpus / 4)}
    elif cpus >= 2:
        size, per_actor = int(cpus) - 1, {"num_cpus": 1}
    else:  # one CPU (or less) free: share it with the readers
        size, per_actor = 1, {"num_cpus": max(cpus / 2, 0.01)}
    if config.use_gpu and "num_gpus" not in per_actor:
        log.warning("rayif features: IndexConfig.use_gpu but the cluster has no free GPU: features on CPU")
    if config.max_actors is not None:
        size = min(size, config.max_actors)
    return max(1, size), per_actor
