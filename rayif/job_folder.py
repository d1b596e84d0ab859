"""A job's output folder (``RunConfig.output_dir``): what makes a job resumable.

It holds the job's manifest (what makes two runs the same job), one parquet file per finished test batch,
written whole or not at all, and the Kronecker factors the job fitted. Plain Arrow tools read every batch file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .config import solver_to_dict
from .data import ids_digest
from .errors import RayifError
from .results import SCHEMA, metadata

MANIFEST = "_rayif_job.json"
MANIFEST_FORMAT = 4  # 4: the requested solver, not the one auto chose (its choice depends on the model)
FACTORS = "_rayif_factors.pt"


def job_identity(job: Any, run: Any, fingerprint: str) -> dict[str, Any]:
    """What makes two runs of a :class:`~rayif.runner.Job` (with its ``RunConfig`` and model fingerprint) the
    same job: a rerun on the folder must agree on every field."""
    return {"format": MANIFEST_FORMAT, "model_fingerprint": fingerprint, "solver": solver_to_dict(job.solver),
            "seed": job.seed, "top": job.top, "group": job.group, "test_batch_size": run.test_batch_size,
            "chunk_size": run.chunk_size, "num_train": len(job.train), "train_ids_sha256": ids_digest(job.train.ids),
            "num_test": len(job.test), "test_ids_sha256": ids_digest(job.test.ids), "candidates": job.candidate_source}


def open_folder(output_dir: str | Path, identity: dict[str, Any]) -> Path:
    """The folder, made if new. Its manifest must agree with ``identity`` on every field, else a new job is
    refused; a new folder gets ``identity`` as its manifest."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST
    if manifest.exists():
        before = json.loads(manifest.read_text())
        diff = sorted(k for k in set(before) | set(identity) if before.get(k) != identity.get(k))
        if diff:
            detail = "; ".join(f"{k}: {str(before.get(k))[:40]} -> {str(identity.get(k))[:40]}" for k in diff)
            raise RayifError(f"{out} holds results of a different job (differs in {diff}: {detail}); use a new "
                             "output_dir, or delete that one to recompute")
    else:
        manifest.write_text(json.dumps(identity, indent=1))
    return out


def batch_path(out: Path, i: int) -> Path:
    return out / f"batch-{i:06d}.parquet"


def write_batch(out: Path, i: int, table: pa.Table) -> None:
    """Batch ``i``'s file, renamed into place once complete: a file that exists is a finished batch."""
    tmp = batch_path(out, i).with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.rename(batch_path(out, i))


def finished_metadata(out: Path) -> dict[str, Any]:
    """The metadata the finished batches were computed with (batch 0's), convention aside."""
    return {k: v for k, v in metadata(pq.read_table(batch_path(out, 0))).items() if k != "convention"}


def read_results(output_dir: str | Path) -> pa.Table:
    """All batch files of a job's output folder as one table, in test order."""
    files = sorted(Path(output_dir).glob("batch-*.parquet"))
    if not files:
        return SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f) for f in files])
