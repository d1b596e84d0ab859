"""The Ray executor: one actor per worker, each holding one model replica, placed by a placement group.

Units go to whichever worker is free (or to the worker a unit is pinned to, for its gradient cache). A unit
whose worker died is rerun on the restarted replica: units are pure, so the result does not change.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..config import RunConfig
from ..data import Examples, map_batch
from ..errors import RayifError
from ..replica import Replica, pick_device
from ..scaling import ScalingConfig, ensure_ray
from ..task import Task
from . import Busy, Call

log = logging.getLogger("rayif")

_UNAVAILABLE_WAIT_S, _UNAVAILABLE_LIMIT_S = 0.5, 600.0


# Ray's core worker prints this (an E-level line) for every actor created with object-store arguments and
# max_restarts > 0 (ray-project/ray#53727): a restart would fail if those objects were gone. The executor holds
# them (self._refs) for its lifetime, so for rayif the line only reads as a failure on a run that worked.
_RESTART_NOTICE = b"has constructor arguments in the object store and max_restarts > 0"


@contextmanager
def _stderr_without(notice: bytes) -> Iterator[None]:
    """Drop the lines of this process's stderr (file descriptor 2, where Ray's C++ core worker writes) that
    contain ``notice`` while the context is open; every other line is written out when it closes."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().splitlines(keepends=True):
                if notice not in line:
                    os.write(2, line)


def _shared(data: Examples | None) -> Examples | None:
    """The data as numpy arrays for the object store: Ray writes them into shared memory without a pickled
    copy on the driver, and every worker on a node maps the same pages instead of unpickling its own copy."""
    return None if data is None else Examples(map_batch(lambda t: t.numpy(), data.batch), data.ids)


def _unshared(data: Examples | None) -> Examples | None:
    if data is None:
        return None
    with warnings.catch_warnings():  # read-only shared memory; rayif never writes to its data
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return Examples(map_batch(torch.from_numpy, data.batch), data.ids)


class _Worker:
    """The actor: a :class:`Replica` plus where it runs. ``run`` times each unit."""

    def __init__(self, task: Task, train: Examples, test: Examples | None, use_gpu: bool, grad_cache_mb: float):
        import ray

        ctx = ray.get_runtime_context()
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        device, self.fallback = pick_device(use_gpu, self.gpu_ids)
        if self.fallback:
            log.warning("rayif worker %s: %s", ctx.get_actor_id(), self.fallback)
        self.node_id = ctx.get_node_id()
        # A constructor that raises looks to Ray like a dead process, restarted max_restarts times; a replica
        # that cannot be built fails the same way every time, so keep its error and raise it from each call.
        self.error: BaseException | None = None
        try:
            self.replica = Replica(task, _unshared(train), _unshared(test), device, grad_cache_mb)
        except Exception as e:  # noqa: BLE001 - the user's own error, raised again from info()
            self.error = e
            return
        try:
            self.replica.warm_up()
        except Exception as e:  # noqa: BLE001 - only an optimisation: the job's validation names bad data
            log.debug("rayif worker warm-up failed: %s", e)

    def _built(self) -> Replica:
        if self.error is not None:
            raise self.error
        return self.replica

    def info(self) -> dict:
        return {**self._built().info(), "node_id": self.node_id, "gpu_ids": self.gpu_ids, "fallback": self.fallback}

    def run(self, method: str, *args: Any) -> tuple[Any, float, int]:
        self._built()
        t0 = time.perf_counter()
        out = getattr(self.replica, method)(*args)
        return out, time.perf_counter() - t0, os.getpid()


class RayExecutor:
    """``scaling.num_workers`` actors in one placement group; ``map`` keeps each one busy with a unit."""

    def __init__(self, task: Task, train: Examples, test: Examples | None, scaling: ScalingConfig, run: RunConfig,
                 address: str | None = None, on_submit: Callable[[Call, int], None] | None = None):
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        ensure_ray(address)
        self.num_workers, self.max_failures, self.on_submit = scaling.num_workers, run.max_failures, on_submit
        self.busy, self.failures = Busy(), 0
        self._deaths = [0] * scaling.num_workers
        self._epoch = [0] * scaling.num_workers  # bumped at each counted death of the worker
        self._reported = [0] * scaling.num_workers  # deaths counted since the worker's process last changed
        bundle = scaling.bundle()
        self._pg = placement_group([bundle] * scaling.num_workers, strategy=scaling.placement_strategy)
        if not self._pg.wait(timeout_seconds=scaling.placement_timeout_s):
            remove_placement_group(self._pg)
            raise RayifError(_unplaceable(scaling, bundle, ray.cluster_resources(), ray.available_resources()))
        # the constructor's arguments must outlive the actors: a restarted worker reads them again
        self._refs = (ray.put(task), ray.put(_shared(train)), ray.put(_shared(test)))
        remote = ray.remote(_Worker)
        extra = dict(bundle)
        num_gpus, num_cpus = extra.pop("GPU", 0.0), extra.pop("CPU", 0.0)
        with _stderr_without(_RESTART_NOTICE):
            self.actors = [
                remote.options(
                    num_cpus=num_cpus, num_gpus=num_gpus, resources=extra or None,
                    max_restarts=run.max_failures, max_task_retries=0,  # map() reruns a dead worker's units itself
                    scheduling_strategy=PlacementGroupSchedulingStrategy(self._pg, placement_group_bundle_index=i),
                ).remote(*self._refs, scaling.use_gpu, run.grad_cache_mb)
                for i in range(scaling.num_workers)
            ]
        try:
            self.infos = self.map([Call("info", (), worker=i) for i in range(self.num_workers)], _raw=True)
        except BaseException:
            self.close()
            raise
        self._pids = [info["pid"] for info in self.infos]
        for i, info in enumerate(self.infos):
            log.info("rayif worker %d on node %s (pid %s): device %s, GPU ids %s", i, info["node_id"][:12],
                     info["pid"], info["device"], info["gpu_ids"] or "none")
            if info["fallback"]:
                log.warning("rayif worker %d: %s", i, info["fallback"])

    def put(self, value: Any) -> Any:
        import ray

        return ray.put(value)

    def map(self, calls: list[Call], *, done: Callable[[int], None] | None = None, _raw: bool = False) -> list[Any]:
        """Run ``calls`` on the workers, one unit per worker at a time; results in the order of ``calls``.
        ``done(k)`` is called as unit ``k`` finishes (progress)."""
        import ray

        results: list[Any] = [None] * len(calls)
        shared: deque[int] = deque()
        own: list[deque[int]] = [deque() for _ in range(self.num_workers)]
        for k, c in enumerate(calls):
            (shared if c.worker is None else own[c.worker % self.num_workers]).append(k)
        inflight: dict[Any, tuple[int, int, int]] = {}
        idle = set(range(self.num_workers))
        waited = [0.0] * self.num_workers
        left = len(calls)
        while left:
            for w in sorted(idle):
                queue = own[w] or shared
                if queue:
                    k = queue.popleft()
                    c = calls[k]
                    actor = self.actors[w]
                    ref = getattr(actor, c.method).remote(*c.args) if _raw else actor.run.remote(c.method, *c.args)
                    inflight[ref] = (k, w, self._epoch[w])
                    idle.discard(w)
                    if self.on_submit is not None:  # a hook for tests: the unit is in flight now
                        self.on_submit(c, w)
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            k, w, epoch = inflight.pop(ref)
            idle.add(w)
            requeue = own[w] if calls[k].worker is not None else shared
            try:
                out = ray.get(ref)
            except ray.exceptions.ActorUnavailableError as e:
                if "restarted" in str(e) and epoch == self._epoch[w]:
                    # the unit was on the worker when it died ("the task may or may not have been executed")
                    self._died(w, calls[k].method, e)
                else:
                    # Restarting after a death already counted, or a network blip: wait, then send it again.
                    # Units are pure, so sending one again that may have run is safe.
                    waited[w] += _UNAVAILABLE_WAIT_S
                    if waited[w] > _UNAVAILABLE_LIMIT_S:
                        raise RayifError(f"rayif worker {w} stayed unavailable for {_UNAVAILABLE_LIMIT_S:.0f}s") from e
                    time.sleep(_UNAVAILABLE_WAIT_S)
                requeue.appendleft(k)
                continue
            except ray.exceptions.RayActorError as e:
                if epoch == self._epoch[w]:  # units in flight together die together: one failure
                    self._died(w, calls[k].method, e)
                requeue.appendleft(k)
                continue
            except ray.exceptions.RayTaskError as e:
                # a unit (or a replica's construction) failed deterministically: rerunning cannot help. The
                # user's own exception, once: rayif's as it was raised, any other as Ray's copy that is an
                # instance of the user's class and carries the remote traceback
                if isinstance(getattr(e, "cause", None), RayifError):
                    raise e.cause from None
                raise e.as_instanceof_cause() from None
            if _raw:
                results[k] = out
            else:
                results[k], seconds, pid = out
                self.busy.add(w, calls[k].method, seconds)
                self._check_process(w, pid, calls[k].method)
            left -= 1
            if done is not None:
                done(k)
        return results

    def _check_process(self, w: int, pid: int, method: str) -> None:
        """A new process behind worker ``w`` is a death, even when Ray reported it only as "temporarily
        unavailable" (then no death was counted for it yet)."""
        if pid == self._pids[w]:
            return
        self._pids[w] = pid
        if self._reported[w]:
            self._reported[w] = 0
            return
        self._died(w, method, None)
        self._reported[w] = 0

    def _died(self, w: int, method: str, error: Exception | None) -> None:
        self._reported[w] += 1
        self._deaths[w] += 1
        self._epoch[w] += 1
        self.failures += 1
        if self._deaths[w] > self.max_failures:
            raise RayifError(
                f"rayif worker {w} died {self._deaths[w]} times, more than RunConfig.max_failures="
                f"{self.max_failures}; batches already written are kept: rerun with the same output_dir to resume"
            ) from error
        log.warning("rayif worker %d died during %s; rerunning its unit on the restarted replica (failure %d of "
                    "%d allowed)", w, method, self._deaths[w], self.max_failures)

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for a in getattr(self, "actors", []):
            ray.kill(a)
        remove_placement_group(self._pg)

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _unplaceable(scaling: ScalingConfig, bundle: dict[str, float], total: dict, free: dict) -> str:
    need = {k: v * scaling.num_workers for k, v in bundle.items()}
    missing = {k: f"{v:g} needed, {total.get(k, 0):g} in the cluster" for k, v in need.items() if total.get(k, 0) < v}
    if missing:
        why = "the cluster lacks " + "; ".join(f"{k}: {v}" for k, v in missing.items())
    else:
        busy = {k: f"{v:g} needed, {free.get(k, 0):g} free" for k, v in need.items() if free.get(k, 0) < v}
        why = ("the resources exist but are held by other work (" + "; ".join(f"{k}: {v}" for k, v in busy.items())
               + ")" if busy else f"no node layout satisfies {scaling.placement_strategy} for these bundles")
    return (f"Ray could not place {scaling.num_workers} rayif workers of {bundle} each "
            f"({scaling.placement_strategy}) within {scaling.placement_timeout_s:g}s: {why}. Lower "
            "ScalingConfig.num_workers or resources_per_worker, add nodes, or raise placement_timeout_s")
