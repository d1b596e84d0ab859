"""The in-process executor: one replica, units one after another."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import RunConfig
from ..data import Examples
from ..replica import Replica, pick_device
from ..task import Task
from . import Busy, Call

log = logging.getLogger("rayif")


class LocalExecutor:
    """Runs every unit on one replica in this process (``ScalingConfig(num_workers=0)`` or no scaling)."""

    num_workers = 1
    failures = 0

    def __init__(self, task: Task, train: Examples, test: Examples | None, *, use_gpu: bool = False,
                 run: RunConfig | None = None):
        device, why = pick_device(use_gpu)
        if why:
            log.warning("rayif: %s", why)
        run = run or RunConfig()
        self.replica = Replica(task, train, test, device, run.grad_cache_mb)
        self.replica.progress = run.progress  # one process: a LiSSA repetition shows its steps
        self.infos = [{**self.replica.info(), "node_id": "local", "gpu_ids": [], "fallback": why}]
        self.busy = Busy()

    def put(self, value: Any) -> Any:
        return value

    def map(self, calls: list[Call], *, done: Callable[[int], None] | None = None) -> list[Any]:
        out = []
        for k, c in enumerate(calls):
            t0 = time.perf_counter()
            out.append(getattr(self.replica, c.method)(*c.args))
            self.busy.add(0, c.method, time.perf_counter() - t0)
            if done is not None:
                done(k)
        return out

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
