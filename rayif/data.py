"""In-memory examples: a batch of tensors (``(inputs, targets)`` or a dict) and a stable integer id per row."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import RayifError


def map_batch(fn: Callable[[Tensor], Any], batch: Any) -> Any:
    """``fn`` applied to every array of a batch (a tensor, or tuples / lists / dicts of them, nested)."""
    if isinstance(batch, Mapping):
        return {k: map_batch(fn, v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return tuple(map_batch(fn, v) for v in batch)
    return fn(batch)


def batch_leaves(batch: Any) -> list[tuple[str, Tensor]]:
    """``(name, tensor)`` for every tensor of a batch; names are dict keys or positions."""
    if isinstance(batch, Tensor):
        return [("0", batch)]
    if isinstance(batch, Mapping):
        return [(str(k), v) for k, v in batch.items()]
    return [(str(i), v) for i, v in enumerate(batch)]


@dataclass(frozen=True)
class Examples:
    """A set of examples held in memory.

    Attributes:
        batch: every example's tensors, examples on the first dimension: ``(inputs [n, ...], targets [n, ...])``
            for ``Task(loss=...)``, or a dict / tuple of tensors for ``Task(batch_loss=...)``.
        ids: ``[n]`` int64, unique; the ids results report.
    """

    batch: Any
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def inputs(self) -> Tensor:
        """The inputs of an ``(inputs, targets)`` batch."""
        return self.batch[0]

    @property
    def targets(self) -> Tensor:
        """The targets of an ``(inputs, targets)`` batch."""
        return self.batch[1]

    def take(self, index: np.ndarray | slice) -> Examples:
        """The rows at ``index`` (positions, not ids)."""
        if isinstance(index, np.ndarray):
            t = torch.tensor(index, dtype=torch.long)  # a copy: index may be a read-only object-store array
            return Examples(map_batch(lambda v: v[t], self.batch), self.ids[index])
        return Examples(map_batch(lambda v: v[index], self.batch), self.ids[index])

    def chunks(self, size: int) -> Iterator[Examples]:
        """Consecutive slices of at most ``size`` rows."""
        for start in range(0, len(self), size):
            yield self.take(slice(start, start + size))

    def to(self, device: str | torch.device) -> Examples:
        return Examples(map_batch(lambda v: v.to(device), self.batch), self.ids)

    def describe(self) -> str:
        """Per-example shapes and dtypes, for error messages."""
        leaves = batch_leaves(self.batch)
        if isinstance(self.batch, tuple) and len(leaves) == 2:
            leaves = [("inputs", leaves[0][1]), ("targets", leaves[1][1])]
        return ", ".join(f"{k} {tuple(v.shape[1:])} {v.dtype}" for k, v in leaves)


def ids_digest(ids: np.ndarray) -> str:
    """sha256 of an id array (its int64 bytes): a job's identity without storing every id."""
    return hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest()


def as_examples(
    data: Any,
    ids: Any = None,
    *,
    name: str = "data",
    input_column: str = "x",
    target_column: str = "y",
    id_column: str = "id",
    dict_batch: bool = False,
) -> Examples:
    """Normalise user data to :class:`Examples`.

    Accepts an ``Examples``; a tuple ``(inputs, targets)`` of arrays or tensors; a mapping of columns
    (``{"x": ..., "y": ..., "id": ...}``), a ``pyarrow.Table`` or a ``ray.data.Dataset`` (gathered here).
    With ``dict_batch`` (tasks with ``batch_loss``) a mapping or table becomes a dict batch of all its columns
    but ``id_column``, and a tuple of any length a tuple batch. Ids default to ``0..n-1``.
    """
    if isinstance(data, Examples):
        return data
    if _is_ray_dataset(data):  # columns straight to Arrow: the driver holds this data set anyway
        import pyarrow as pa

        data = pa.concat_tables([b for b in data.iter_batches(batch_format="pyarrow", batch_size=None)])
    if _is_arrow_table(data):  # columns straight to numpy: to_pydict would make a Python object per value
        cols = list(data.column_names)
        wanted = [c for c in cols if c != id_column] if dict_batch else [input_column, target_column]
        missing = [c for c in wanted if c not in cols]
        if missing or not wanted:
            raise RayifError(f"{name} has no column(s) {missing or wanted}; its columns are {cols}")
        data = {c: arrow_to_numpy(data, c) for c in wanted + ([id_column] if id_column in cols else [])}
    elif hasattr(data, "to_pydict") and not isinstance(data, Mapping):
        data = data.to_pydict()
    if isinstance(data, Mapping):
        if ids is None and id_column in data:
            ids = data[id_column]
        if dict_batch:
            batch: Any = {k: _as_tensor(v, f"{name} column {k!r}") for k, v in data.items() if k != id_column}
        else:
            missing = [c for c in (input_column, target_column) if c not in data]
            if missing:
                raise RayifError(f"{name} has no column(s) {missing}; its columns are {sorted(data)}")
            batch = (_as_tensor(data[input_column], f"{name} inputs"),
                     _as_tensor(data[target_column], f"{name} targets"))
    elif isinstance(data, (tuple, list)) and (len(data) == 2 or (dict_batch and data)):
        what = ("inputs", "targets") if len(data) == 2 else tuple(f"part {i}" for i in range(len(data)))
        batch = tuple(_as_tensor(v, f"{name} {w}") for v, w in zip(data, what, strict=True))
    else:
        form = "a dict / tuple of tensors" if dict_batch else "(inputs, targets)"
        raise RayifError(f"{name} must be {form}, a mapping of columns or Examples; got {type(data).__name__}")
    leaves = batch_leaves(batch)
    if not leaves:
        raise RayifError(f"{name} has no tensors")
    n = len(leaves[0][1])
    if n == 0:
        raise RayifError(f"{name} is empty: no examples to compute influence with")
    if not dict_batch and len(batch[1]) != n:
        raise RayifError(f"{name} has {n} inputs but {len(batch[1])} targets")
    uneven = {k: len(v) for k, v in leaves if len(v) != n}
    if uneven:
        raise RayifError(f"{name}: every tensor needs the examples on its first dimension; "
                         f"{leaves[0][0]} has {n} rows but {uneven}")
    ids_arr = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids)
    if ids_arr.shape != (n,) or not np.issubdtype(ids_arr.dtype, np.integer):
        raise RayifError(f"{name} ids must be {n} integers, got shape {ids_arr.shape} dtype {ids_arr.dtype}")
    ids_arr = ids_arr.astype(np.int64)
    if len(np.unique(ids_arr)) != n:
        raise RayifError(f"{name} ids are not unique")
    return Examples(batch, ids_arr)


def _as_tensor(a: Any, what: str) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach()
    arr = np.asarray(a) if not (isinstance(a, list) and a and isinstance(a[0], np.ndarray)) else np.stack(a)
    if arr.dtype == object:
        try:
            arr = np.stack([np.asarray(v) for v in arr])
        except ValueError as e:
            raise RayifError(f"{what} have rows of different shapes: {e}") from None
    return torch.from_numpy(np.require(arr, requirements=["C", "W"]))  # Arrow memory is read-only


def read_examples(path: str | Path, *, name: str = "data", input_column: str = "x", target_column: str = "y",
                  id_column: str = "id", dict_batch: bool = False) -> Examples:
    """Examples from a parquet file or folder: an input column (fixed-size list / tensor), a target column
    and, if present, an integer id column (else ids are row positions); with ``dict_batch`` every column
    but the id column, as a dict batch."""
    import pyarrow.parquet as pq

    if "://" not in str(path) and not Path(path).exists():  # URIs go to pyarrow's file systems
        raise RayifError(f"{name}: no such parquet file or folder: {path}")
    return as_examples(pq.read_table(path), name=name, input_column=input_column, target_column=target_column,
                       id_column=id_column, dict_batch=dict_batch)


def _is_arrow_table(data: Any) -> bool:
    import pyarrow as pa

    return isinstance(data, (pa.Table, pa.RecordBatch))


def _is_ray_dataset(data: Any) -> bool:
    try:
        from ray.data import Dataset
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return isinstance(data, Dataset)


def arrow_inputs(batch, column: str | Sequence[str]) -> np.ndarray:
    """The model inputs of an Arrow table: one column ``[b, ...]``, or scalar columns side by side."""
    if not isinstance(column, str):  # scalar columns side by side: one input vector per row
        return np.stack([arrow_to_numpy(batch, c) for c in column], axis=1)
    return arrow_to_numpy(batch, column)


def arrow_to_numpy(batch, name: str) -> np.ndarray:
    """Column ``name`` of a pyarrow batch as one numpy array ``[b, ...]``, without per-row copies."""
    import pyarrow as pa

    col = batch.column(name)
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(col, pa.ExtensionArray) and hasattr(col, "to_numpy"):  # Ray's tensor columns
        return np.asarray(col.to_numpy())
    shape = []
    while pa.types.is_fixed_size_list(col.type):  # [b, d1, d2, ...] as nested fixed-size lists
        shape.append(col.type.list_size)
        col = col.flatten()
    arr = col.to_numpy(zero_copy_only=False)
    if shape:
        return arr.reshape(-1, *shape)
    if arr.dtype == object:  # variable-length lists: the rows must still share one shape
        try:
            arr = np.stack([np.asarray(v) for v in arr])
        except ValueError as e:
            raise RayifError(f"column {name!r} holds rows of different shapes: {e}") from None
    return arr
