"""Executors run a job's work units on replicas: in this process, or on Ray actors (one replica each).

The runner knows them only through :class:`Executor`: ``map`` a list of :class:`Call` to their results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import RunConfig
from ..data import Examples
from ..scaling import ScalingConfig
from ..task import Task


@dataclass(frozen=True)
class Call:
    """One work unit: ``Replica.<method>(*args)``; ``worker`` pins it to one worker (its cache), else any."""

    method: str
    args: tuple = ()
    worker: int | None = None


@dataclass
class Busy:
    """Seconds each worker spent inside units, by unit kind."""

    seconds: list[dict[str, float]] = field(default_factory=list)

    def add(self, worker: int, method: str, seconds: float) -> None:
        while len(self.seconds) <= worker:
            self.seconds.append({})
        self.seconds[worker][method] = self.seconds[worker].get(method, 0.0) + seconds


class Executor(Protocol):
    num_workers: int
    infos: list[dict]
    busy: Busy
    failures: int

    def put(self, value: Any) -> Any:
        """A handle to ``value`` that calls can take as an argument (sent to workers once)."""
        ...

    def map(self, calls: list[Call], *, done: Callable[[int], None] | None = None) -> list[Any]:
        """Run every call; results in the order of ``calls``; ``done(k)`` as call ``k`` finishes."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


def make_executor(task: Task, train: Examples, test: Examples | None, scaling: ScalingConfig | None,
                  run: RunConfig, address: str | None = None) -> Executor:
    """In this process when ``scaling`` is ``None`` or has ``num_workers=0``; else on Ray actors."""
    if scaling is None or scaling.num_workers == 0:
        from .local import LocalExecutor

        return LocalExecutor(task, train, test, use_gpu=bool(scaling and scaling.use_gpu), run=run)
    from .ray import RayExecutor

    return RayExecutor(task, train, test, scaling, run, address)


__all__ = ["Busy", "Call", "Executor", "make_executor"]
