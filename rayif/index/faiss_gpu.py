"""FAISS on GPU when the installed FAISS sees one (faiss-gpu), else on CPU, saying which in the log."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("rayif")


def faiss_gpus() -> int:
    """GPUs FAISS can use here: 0 with faiss-cpu or without a CUDA device."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def faiss_where() -> str:
    """Where this process's FAISS searches run, for the build log."""
    n = faiss_gpus()
    return f"FAISS searches on {n} GPU(s)" if n else "FAISS on CPU (no GPU visible to FAISS)"


def to_gpu(index: Any) -> Any:
    """A GPU copy of ``index`` when FAISS sees GPUs, else ``None``; logs which."""
    import faiss

    n = faiss_gpus()
    if n == 0:
        log.info("FAISS on CPU: no GPU visible to FAISS (faiss-cpu, or no CUDA device)")
        return None
    try:
        gpu = faiss.index_cpu_to_all_gpus(index)
    except Exception as e:  # an index type without a GPU implementation (e.g. some PQ sizes)
        log.warning("FAISS index stays on CPU: copying it to GPU failed: %s", e)
        return None
    log.info("FAISS on %d GPU(s)", n)
    return gpu
