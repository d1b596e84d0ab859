"""In-memory examples: inputs, targets and a stable integer id per row."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import RayifError


@dataclass(frozen=True)
class Examples:
    """A set of examples held in memory.

    Attributes:
        inputs: ``[n, ...]`` model inputs.
        targets: ``[n, ...]`` what the loss compares the outputs with.
        ids: ``[n]`` int64, unique; the ids results report.
    """

    inputs: Tensor
    targets: Tensor
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray | slice) -> Examples:
        """The rows at ``index`` (positions, not ids)."""
        if isinstance(index, np.ndarray):
            t = torch.as_tensor(index, dtype=torch.long)
            return Examples(self.inputs[t], self.targets[t], self.ids[index])
        return Examples(self.inputs[index], self.targets[index], self.ids[index])

    def chunks(self, size: int) -> Iterator[Examples]:
        """Consecutive slices of at most ``size`` rows."""
        for start in range(0, len(self), size):
            yield self.take(slice(start, start + size))

    def to(self, device: str | torch.device) -> Examples:
        return Examples(self.inputs.to(device), self.targets.to(device), self.ids)


def as_examples(
    data: Any,
    ids: Any = None,
    *,
    name: str = "data",
    input_column: str = "x",
    target_column: str = "y",
    id_column: str = "id",
) -> Examples:
    """Normalise user data to :class:`Examples`.

    Accepts an ``Examples``, a tuple ``(inputs, targets)`` of arrays or tensors, or a mapping of columns
    (``{"x": ..., "y": ..., "id": ...}``; a ``pyarrow.Table`` or pandas frame works through ``to_pydict``).
    Ids default to ``0..n-1``.
    """
    if isinstance(data, Examples):
        return data
    if _is_arrow_table(data):  # columns straight to numpy: to_pydict would make a Python object per value
        cols = list(data.column_names)
        missing = [c for c in (input_column, target_column) if c not in cols]
        if missing:
            raise RayifError(f"{name} has no column(s) {missing}; its columns are {cols}")
        data = {input_column: arrow_to_numpy(data, input_column), target_column: arrow_to_numpy(data, target_column),
                **({id_column: arrow_to_numpy(data, id_column)} if id_column in cols else {})}
    elif hasattr(data, "to_pydict") and not isinstance(data, Mapping):
        data = data.to_pydict()
    if isinstance(data, Mapping):
        missing = [c for c in (input_column, target_column) if c not in data]
        if missing:
            raise RayifError(f"{name} has no column(s) {missing}; its columns are {sorted(data)}")
        x, y = data[input_column], data[target_column]
        if ids is None and id_column in data:
            ids = data[id_column]
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise RayifError(f"{name} must be (inputs, targets), a mapping of columns or Examples; got {type(data)}")
    x, y = _as_tensor(x, f"{name} inputs"), _as_tensor(y, f"{name} targets")
    n = len(x)
    if n == 0:
        raise RayifError(f"{name} is empty: no examples to compute influence with")
    if len(y) != n:
        raise RayifError(f"{name} has {n} inputs but {len(y)} targets")
    ids_arr = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids)
    if ids_arr.shape != (n,) or not np.issubdtype(ids_arr.dtype, np.integer):
        raise RayifError(f"{name} ids must be {n} integers, got shape {ids_arr.shape} dtype {ids_arr.dtype}")
    ids_arr = ids_arr.astype(np.int64)
    if len(np.unique(ids_arr)) != n:
        raise RayifError(f"{name} ids are not unique")
    return Examples(x, y, ids_arr)


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
                  id_column: str = "id") -> Examples:
    """Examples from a parquet file or folder: an input column (fixed-size list / tensor), a target column
    and, if present, an integer id column (else ids are row positions)."""
    import pyarrow.parquet as pq

    if "://" not in str(path) and not Path(path).exists():  # URIs go to pyarrow's file systems
        raise RayifError(f"{name}: no such parquet file or folder: {path}")
    return as_examples(pq.read_table(path), name=name, input_column=input_column, target_column=target_column,
                       id_column=id_column)


def _is_arrow_table(data: Any) -> bool:
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        return False
    return isinstance(data, (pa.Table, pa.RecordBatch))


def arrow_inputs(batch, column: str | Sequence[str]) -> np.ndarray:
    """The model inputs of an Arrow table: one column ``[b, ...]``, or scalar columns side by side."""
    if not isinstance(column, str):  # scalar columns side by side: one input vector per row
        return np.stack([arrow_to_numpy(batch, c) for c in column], axis=1)
    return arrow_to_numpy(batch, column)


def arrow_to_numpy(batch, name: str) -> np.ndarray:
    """Column ``name`` of a pyarrow batch as one numpy array ``[b, ...]``, without per-row copies."""
    import pyarrow as pa

    col = batch.column(name).combine_chunks()
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
