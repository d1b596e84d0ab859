"""The Arrow schema of influence results, and parquet writing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: ``test_id`` of the row set that scores a whole group of test points with one s_test.
GROUP_TEST_ID = -1

CONVENTION = (
    "influence = -grad L(z_test)^T H^-1 grad L(z); positive = harmful (upweighting z raises the test loss), "
    "negative = helpful; removing z from n training examples changes the test loss by about -influence/n"
)

#: One row per (test point, kind, rank).
SCHEMA = pa.schema(
    [
        pa.field("test_id", pa.int64(), nullable=False),  # -1: the group (see GROUP_TEST_ID)
        pa.field("kind", pa.string(), nullable=False),  # "harmful" or "helpful"
        pa.field("rank", pa.int32(), nullable=False),  # 1 = most harmful / most helpful
        pa.field("train_id", pa.int64(), nullable=False),
        pa.field("influence", pa.float64(), nullable=False),
    ],
    metadata={"rayif.convention": CONVENTION},
)

SELF_INFLUENCE_SCHEMA = pa.schema(
    [
        pa.field("train_id", pa.int64(), nullable=False),
        pa.field("self_influence", pa.float64(), nullable=False),  # grad L(z)^T H^-1 grad L(z)
    ]
)


def ranked_table(
    test_ids: np.ndarray,
    harmful_ids: np.ndarray,
    harmful: np.ndarray,
    helpful_ids: np.ndarray,
    helpful: np.ndarray,
    metadata: dict[str, Any] | None = None,
) -> pa.Table:
    """Rows in :data:`SCHEMA` from ``[m, top]`` arrays of ids and values, best first in each row."""
    m, top = harmful_ids.shape
    cols: dict[str, list[np.ndarray]] = {k: [] for k in SCHEMA.names}
    for kind, ids, vals in (("harmful", harmful_ids, harmful), ("helpful", helpful_ids, helpful)):
        cols["test_id"].append(np.repeat(np.asarray(test_ids, dtype=np.int64), top))
        cols["kind"].append(np.full(m * top, kind, dtype=object))
        cols["rank"].append(np.tile(np.arange(1, top + 1, dtype=np.int32), m))
        cols["train_id"].append(ids.reshape(-1).astype(np.int64))
        cols["influence"].append(vals.reshape(-1).astype(np.float64))
    arrays = [pa.array(np.concatenate(cols[f.name]), type=f.type) for f in SCHEMA]
    table = pa.Table.from_arrays(arrays, schema=SCHEMA)
    table = table.sort_by([("test_id", "ascending"), ("kind", "ascending"), ("rank", "ascending")])
    return with_metadata(table, metadata)


def with_metadata(table: pa.Table, metadata: dict[str, Any] | None) -> pa.Table:
    """``table`` with ``metadata`` added to its schema under ``rayif.*`` keys (values JSON-encoded)."""
    if not metadata:
        return table
    meta = dict(table.schema.metadata or {})
    meta.update({f"rayif.{k}".encode(): json.dumps(v).encode() for k, v in metadata.items()})
    return table.replace_schema_metadata(meta)


def write_parquet(table: pa.Table, path: str | Path) -> Path:
    """Write ``table`` to ``path`` (parent folders made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def metadata(table: pa.Table) -> dict[str, Any]:
    """The ``rayif.*`` schema metadata of a results table, decoded (``{"solver": {...}, "job": {...}, ...}``)."""
    meta = table.schema.metadata or {}
    return {k.decode()[len("rayif."):]: json.loads(v) if k != b"rayif.convention" else v.decode()
            for k, v in meta.items() if k.startswith(b"rayif.")}
