"""The Ray Data pipeline: training rows in, ``(id, vector)`` batches out, computed by model-holding actors; the
vector is the task's features or a sketch of the example's loss gradient (``IndexConfig.source``)."""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Examples, arrow_inputs, arrow_to_numpy, as_examples
from ..errors import RayifError
from ..task import Task
from .config import IndexConfig

log = logging.getLogger("rayif")


def training_dataset(data: Any, *, input_column: str | Sequence[str] = "x", id_column: str = "id",
                     shuffle_files_seed: int | None = None, target_column: str | None = None):
    """The training set as a ``ray.data.Dataset`` with an integer id column.

    ``data``: a ``ray.data.Dataset`` or parquet path(s), which must carry ``id_column`` (ids of rows read in
    parallel are only stable if they are in the data), or in-memory arrays / ``Examples`` / a mapping,
    whose ids default to row positions (their targets, if any, become column ``y``). ``shuffle_files_seed``:
    read parquet files in a seeded random order. ``target_column``: a column the rows must also carry.
    """
    import ray.data

    paths = parquet_paths(data)
    if isinstance(data, ray.data.Dataset):
        ds = data
    elif paths is not None:
        shuffle = None if shuffle_files_seed is None else ray.data.FileShuffleConfig(seed=shuffle_files_seed)
        ds = ray.data.read_parquet(paths, shuffle=shuffle)
    else:
        ex = data if isinstance(data, Examples) else as_examples(data, name="training data")
        return ray.data.from_arrow(_arrow_blocks(ex, id_column)), ("x" if isinstance(ex.batch, tuple) else None)
    _require_columns(ds.schema().names if ds.schema() is not None else [], input_column, id_column, target_column)
    return ds, input_column


def parquet_paths(data: Any) -> list[str] | None:
    """``data`` as a list of parquet paths if it is a path or a list of paths, else ``None``."""
    if isinstance(data, (str, Path)):
        return [str(data)]
    if isinstance(data, (list, tuple)) and data and all(isinstance(p, (str, Path)) for p in data):
        return [str(p) for p in data]
    return None


def parquet_files(paths: list[str]) -> list[Path]:
    """The parquet files of paths: folders expand to their ``*.parquet`` files in sorted order."""
    return [f for p in paths for f in (sorted(Path(p).glob("**/*.parquet")) if Path(p).is_dir() else [Path(p)])]


def _arrow_blocks(ex: Examples, id_column: str, rows: int = 16_384) -> list:
    """In-memory examples as Arrow tables of ``rows`` rows: ``id_column``, and ``x`` and ``y`` (an
    ``(inputs, targets)`` batch) or every column of a dict batch, as nested fixed-size lists."""
    import pyarrow as pa

    columns = {"x": ex.inputs, "y": ex.targets} if isinstance(ex.batch, tuple) else dict(ex.batch)
    blocks = []
    for start in range(0, len(ex), rows):
        table = {id_column: ex.ids[start : start + rows]}
        for name, t in columns.items():
            part = np.ascontiguousarray(t[start : start + rows].numpy())
            col = pa.array(part.reshape(-1))
            for size in reversed(part.shape[1:]):
                col = pa.FixedSizeListArray.from_arrays(col, size)
            table[name] = col
        blocks.append(pa.table(table))
    return blocks


class FeatureActor:
    """Holds one model replica; ``__call__`` maps a batch of rows to their ids and vectors ``[b, d]``: the
    task's features, or (with ``sketch``) sketches of the rows' training-loss gradients."""

    def __init__(self, task: Task, input_column: str | Sequence[str], id_column: str, use_gpu: bool,
                 sketch: dict | None = None, target_column: str = "y"):
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        if use_gpu and self.device == "cpu":
            log.warning("rayif feature actor: asked for a GPU but torch sees no CUDA device: features on CPU")
        self.task, self.input_column, self.id_column = task, input_column, id_column
        self.target_column = target_column
        self.model = task.build_model(self.device)
        self.sketch = None
        if sketch is not None:
            from ..grads import Objective
            from .sketch import GradientSketch

            self.sketch = GradientSketch(Objective(task, self.device, self.model), sketch["width"], sketch["seed"],
                                         sketch.get("basis"))

    def batch(self, table) -> tuple[np.ndarray, Any]:
        """``(ids [b], the model's batch)`` of an Arrow table of rows."""
        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.require(a, requirements=["C", "W"])).to(self.device)

        plain = not self.task.dict_batches
        _require_columns(table.column_names, self.input_column if plain else None, self.id_column,
                         self.target_column if plain and self.sketch is not None else None)
        if self.task.dict_batches:  # every column but the id is part of the model's batch
            x = {c: tensor(arrow_to_numpy(table, c)) for c in table.column_names if c != self.id_column}
        else:
            x = tensor(arrow_inputs(table, self.input_column))
            if self.sketch is not None:  # the loss needs the targets too
                x = (x, tensor(arrow_to_numpy(table, self.target_column)))
        ids = arrow_to_numpy(table, self.id_column)
        if not np.issubdtype(ids.dtype, np.integer):
            raise RayifError(f"id column {self.id_column!r} must hold integers, got {ids.dtype}")
        return ids.astype(np.int64), x

    def __call__(self, table) -> dict[str, np.ndarray]:
        ids, x = self.batch(table)
        if self.sketch is not None:
            return {"id": ids, "feature": self.sketch.train(x)}
        with torch.no_grad():
            f = self.task.compute_features(self.model, x)
        return {"id": ids, "feature": f.float().cpu().numpy()}


class FileFeatureActor(FeatureActor):
    """A :class:`FeatureActor` that reads its own rows: each call gets ``(path, row_group)`` units of local
    parquet files and yields the vectors of their rows, ``batch_size`` at a time. Reading and computing in one
    process spares a read task per file and moving every row through the object store."""

    def __init__(self, *args: Any, batch_size: int, columns: list[str] | None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batch_size, self.columns = batch_size, columns

    def __call__(self, units) -> Iterator[dict[str, np.ndarray]]:  # type: ignore[override]
        import pyarrow as pa
        import pyarrow.parquet as pq

        for path, group in zip(units["path"].to_pylist(), units["row_group"].to_pylist(), strict=True):
            reader = pq.ParquetFile(path)
            for b in reader.iter_batches(batch_size=self.batch_size, row_groups=[group], columns=self.columns):
                yield super().__call__(pa.Table.from_batches([b]))


def _local_units(data: Any, seed: int | None) -> list[dict] | None:
    """``(path, row_group)`` of every row group of local parquet ``data`` (files in sorted order, or shuffled by
    ``seed``); ``None`` when ``data`` is not local parquet (a Dataset, arrays, remote URIs)."""
    import pyarrow.parquet as pq

    paths = parquet_paths(data)
    if paths is None or any("://" in p for p in paths):
        return None
    files = parquet_files(paths)
    if not files or not all(f.is_file() for f in files):
        return None
    units = [{"path": str(f), "row_group": g} for f in files for g in range(pq.ParquetFile(f).num_row_groups)]
    if seed is not None:
        units = [units[i] for i in np.random.default_rng(seed).permutation(len(units))]
    return units


def feature_batches(task: Task, data: Any, config: IndexConfig, *, input_column: str | Sequence[str] = "x",
                    id_column: str = "id", target_column: str = "y", sketch: dict | None = None
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream ``(ids [b], vectors [b, d] float32)`` for every training row, through Ray Data actors: features,
    or with ``sketch`` (``{"width", "seed", "basis"}``) gradient sketches.

    The rows never gather on the driver: only their vectors arrive here, a batch at a time.
    """
    import ray
    from ray.data import ActorPoolStrategy

    ctx = ray.data.DataContext.get_current()
    saved = ctx.target_max_block_size
    # Small blocks keep the stream moving and bound what is in flight: with the default (128 MiB) a 2-CPU
    # node reads a million rows as 3 blocks and the driver holds several hundred MiB of them at once.
    # (A Dataset copies the context when it is made, so this goes first.)
    ctx.target_max_block_size = _BLOCK_BYTES
    try:
        # An IVF quantiser trains on the first rows out: read files in random order so they sample the
        # whole set. (Ray's randomize_block_order would too, but it is all-to-all: it reads everything
        # before the first feature is computed, which breaks streaming.)
        seed = None if config.kind == "flat" else config.seed
        if task.dict_batches:  # the batch is every column but the id
            input_column = None
            if parquet_paths(data) is None and not isinstance(data, ray.data.Dataset):
                data = as_examples(data, name="training data", dict_batch=True)
        wants_target = sketch is not None and not task.dict_batches
        units = _local_units(data, seed)
        kwargs = {"task": task, "input_column": input_column, "id_column": id_column, "use_gpu": config.use_gpu,
                  "sketch": sketch, "target_column": target_column}
        size, per_actor = _pool_size(ray.available_resources(), config)
        log.info("rayif features: Ray Data actor pool of 1..%d actors, %s each%s", size, per_actor,
                 ", reading their own parquet row groups" if units else "")
        if units:
            import pyarrow.parquet as pq

            _require_columns(pq.read_schema(units[0]["path"]).names, input_column, id_column,
                             target_column if wants_target else None)
            cols = None if input_column is None else _columns(input_column, id_column,
                                                              target_column if wants_target else None)
            ds = ray.data.from_items(units)
            feats = ds.map_batches(FileFeatureActor, fn_constructor_kwargs={
                **kwargs, "batch_size": config.batch_size, "columns": cols}, batch_size=1, batch_format="pyarrow",
                compute=ActorPoolStrategy(min_size=1, max_size=size), **per_actor)
        else:
            ds, kwargs["input_column"] = training_dataset(data, input_column=input_column, id_column=id_column,
                                                          shuffle_files_seed=seed,
                                                          target_column=target_column if wants_target else None)
            if wants_target and parquet_paths(data) is None and not isinstance(data, ray.data.Dataset):
                kwargs["target_column"] = "y"  # in-memory examples carry their targets as y
            feats = ds.map_batches(FeatureActor, fn_constructor_kwargs=kwargs, batch_size=config.batch_size,
                                   batch_format="pyarrow", compute=ActorPoolStrategy(min_size=1, max_size=size),
                                   **per_actor)
    finally:
        ctx.target_max_block_size = saved
    batches = iter(feats.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1))
    failure = None
    try:
        for b in batches:
            yield b["id"], b["feature"]
    except Exception as e:  # Ray Data wraps a feature actor's RayifError in its own errors, as text
        found = re.findall(r"RayifError: (.+)", str(e))
        if not found:
            raise
        failure = found[-1].strip()
    finally:
        batches.close()  # a consumer that stops early stops the execution and its actors
        # An execution can sit in a reference cycle (with its error, when it failed) and keep its actors, and
        # their CPUs, until the garbage collector runs, which an idle driver may not do for minutes; the next
        # pipeline's reads, or a placement group of workers, would wait for those CPUs. Drop it now.
        del ds, feats, batches
        gc.collect()
    if failure is not None:
        raise RayifError(failure)  # an error that holds no execution


def _columns(input_column, id_column: str, target_column: str | None) -> list[str]:
    """The columns a row must carry: the id, the input column(s) (``None``: none named) and the target."""
    return [id_column, *([] if input_column is None else [input_column] if isinstance(input_column, str)
                         else input_column), *([] if target_column is None else [target_column])]


def _require_columns(names: list[str], input_column, id_column: str, target_column: str | None) -> None:
    missing = [c for c in _columns(input_column, id_column, target_column) if c not in names]
    if missing:
        hint = (f" (give every row a stable integer id, e.g. its position, as column {id_column!r})"
                if id_column in missing else "")
        raise RayifError(f"training data has no column(s) {missing}{hint}; its columns are {names}")


_BLOCK_BYTES = 16 * 2**20
_TOKEN_CPU = 0.01


def _pool_size(free: dict[str, float], config: IndexConfig) -> tuple[int, dict[str, float]]:
    """How many feature actors may run and what each reserves.

    A pool whose actors hold every CPU starves Ray Data's own read tasks (1 CPU each) and the job hangs (it
    does on a 2-CPU machine), so CPU actors leave one CPU free. On a small node, and for GPU actors, they
    reserve only a token CPU: a fraction sized from the free CPUs went wrong when an earlier pipeline's
    actors were still being released (1.5 free -> an actor of 0.75 -> reads wait for a whole CPU forever).
    The cores are then shared by the operating system, not reserved.
    """
    cpus = float(free.get("CPU", 1.0))
    if config.use_gpu and free.get("GPU", 0) >= 1:
        size, per_actor = int(free["GPU"]), {"num_gpus": 1, "num_cpus": _TOKEN_CPU}
    elif cpus >= 8:
        size, per_actor = int(cpus) - 1, {"num_cpus": 1}
    else:  # a small node: one actor per CPU, on a token reservation that never starves the readers
        size, per_actor = max(1, int(cpus)), {"num_cpus": _TOKEN_CPU}
    if config.use_gpu and "num_gpus" not in per_actor:
        log.warning("rayif features: IndexConfig.use_gpu but the cluster has no free GPU: features on CPU")
    if config.max_actors is not None:
        size = min(size, config.max_actors)
    return max(1, size), per_actor
