"""Write the digits split as parquet, the shape `rayif explain` reads: ``id`` (int64), ``x`` (64 floats),
``y`` (label).

    .venv/bin/python examples/digits_parquet.py data/
    .venv/bin/rayif explain --task rayif.digits:example_task --train data/train.parquet \\
        --test data/test.parquet --top 5 --k 300 --index-dir data/index
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayif.digits import load_digits_split


def write(out: Path) -> None:
    split = load_digits_split(dtype=np.float32)  # the split example_task is trained on
    out.mkdir(parents=True, exist_ok=True)
    for name, x, y in (("train", split.x_train, split.y_train), ("test", split.x_test, split.y_test)):
        table = pa.table({"id": np.arange(len(x), dtype=np.int64),
                          "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]), "y": y})
        pq.write_table(table, out / f"{name}.parquet")
        print(f"wrote {out / f'{name}.parquet'}: {len(x)} rows")


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "data"))
