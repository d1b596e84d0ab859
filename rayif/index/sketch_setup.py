"""What a sketch index needs before its pipeline starts: the second-stage basis, fitted on the driver from the
stage-1 sketches of the training set's first rows, and the metadata that describes the sketch."""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..data import Examples, as_examples
from ..errors import RayifError
from ..task import Task
from .config import IndexConfig
from .features import parquet_files, parquet_paths

log = logging.getLogger("rayif")


def sketch_stage(task: Task, train: Any, config: IndexConfig, input_column, id_column: str, target_column: str
                 ) -> tuple[dict, Any, dict]:
    """What the sketching actors need (``{"width", "seed", "basis"}``), the fitted second-stage basis and the
    index metadata describing both. The basis is fitted here, on the driver, from the stage-1 sketches of the
    first ``basis_rows`` training rows."""
    import ray.data

    from .features import FeatureActor, training_dataset
    from .sketch import fit_basis

    sketch = {"width": config.sketch_width, "seed": config.seed}
    actor = FeatureActor(task, input_column, id_column, False, {**sketch, "basis": None}, target_column)
    stage1 = actor.sketch.stage1
    basis = None
    if config.sketch_dim < stage1.dim:
        if not isinstance(train, ray.data.Dataset) and parquet_paths(train) is None:  # in memory
            ex = train if isinstance(train, Examples) else as_examples(train, name="training data",
                                                                       dict_batch=task.dict_batches)
            batches = [c.batch for c in ex.take(slice(0, config.basis_rows)).chunks(config.batch_size)]
        else:
            batches = None
            if parquet_paths(train) is not None:  # the first rows of the files in sorted order: a fixed sample
                try:
                    batches = [actor.batch(t)[1] for t in head_of_parquet(parquet_paths(train), config.basis_rows)]
                except (OSError, ValueError):  # a remote URI: through Ray Data, as a Dataset
                    batches = None
        if batches is None:  # a Dataset: its first rows in its own order (Ray Data keeps it with preserve_order)
            cols = {"input_column": None if task.dict_batches else input_column, "id_column": id_column,
                    "target_column": None if task.dict_batches else target_column}
            ctx = ray.data.DataContext.get_current()  # a Dataset copies the context when made: set it first
            saved, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True
            try:
                ds, _ = training_dataset(train, **cols)
                tables = ray.get(ds.limit(config.basis_rows).to_arrow_refs())
            finally:
                ctx.execution_options.preserve_order = saved
            batches = [actor.batch(t)[1] for t in tables if t.num_rows]
        if not batches:
            raise RayifError("the training data is empty: no rows to index")
        sample = torch.cat([stage1.sketch(b).detach().float() for b in batches])
        basis = fit_basis(sample, config.sketch_dim)
        del sample
        log.info("rayif sketch: basis of %d directions from %d training rows keeps %.4f of their gradient energy",
                 basis.dim, basis.rows, basis.energy_kept)
    extra = {"sketch": {**stage1.describe(), "basis_sha256": None if basis is None else basis.digest(),
                        "basis_dim": None if basis is None else basis.dim,
                        "energy_kept": None if basis is None else basis.energy_kept,
                        "basis_rows": None if basis is None else basis.rows},
             "sketch_params": list(stage1.obj.names)}
    return {**sketch, "basis": basis}, basis, extra


def head_of_parquet(paths: list[str], rows: int) -> list:
    """Arrow tables of the first ``rows`` rows of parquet ``paths`` (folders in sorted file order)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out, left = [], rows
    for f in parquet_files(paths):
        for b in pq.ParquetFile(f).iter_batches(batch_size=min(left, 4096)):
            t = pa.Table.from_batches([b]).slice(0, left)
            out.append(t)
            left -= t.num_rows
            if left <= 0:
                return out
    return out
