"""In-memory examples: inputs, targets and a stable integer id per row."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
    if hasattr(data, "to_pydict") and not isinstance(data, Mapping):
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
    return torch.from_numpy(np.ascontiguousarray(arr))
