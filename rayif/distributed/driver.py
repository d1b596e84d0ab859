"""The driver: test points in batches, s_test over the workers, sharded scoring, parquet per batch, resume."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..config import LissaConfig, SolverConfig, solver_to_dict
from ..data import Examples
from ..errors import RayifError
from ..grads import Objective, require_finite_vectors
from ..ihvp import estimate_scale
from ..influence import DEFAULT_CHUNK, TopInfluence, candidate_mask, grads_at_test_points
from ..results import SCHEMA, ranked_table
from .scaling import ScalingConfig, ensure_ray
from .workers import InfluenceWorker

log = logging.getLogger("rayif")

MANIFEST = "_rayif_job.json"


@dataclass
class WorkerPool:
    """``num_workers`` live replicas; the task and training data travel to them once, by reference."""

    actors: list
    infos: list[dict]
    max_restarts: int
    refs: tuple = ()  # the constructor's arguments: a restarted worker re-reads them, so they must outlive it

    @classmethod
    def start(cls, task, train: Examples, scaling: ScalingConfig, grad_cache_mb: float = 512.0) -> WorkerPool:
        import ray

        remote_cls = ray.remote(InfluenceWorker)
        task_ref, train_ref = ray.put(task), ray.put(train)
        opts = scaling.actor_options()
        actors = [remote_cls.options(**opts).remote(task_ref, train_ref, scaling.use_gpu, grad_cache_mb)
                  for _ in range(scaling.num_workers)]
        pool = cls(actors, [], scaling.max_restarts, (task_ref, train_ref))
        pool.infos = _gather(pool, [(i, "info", ()) for i in range(len(actors))])
        for i, info in enumerate(pool.infos):
            log.info("rayif worker %d on node %s (pid %s): device %s, GPU ids %s", i, info["node_id"][:12],
                     info["pid"], info["device"], info["gpu_ids"] or "none")
            if info["fallback"]:
                log.warning("rayif worker %d: %s", i, info["fallback"])
        return pool

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)


_UNAVAILABLE_WAIT_S, _MAX_UNAVAILABLE_WAITS = 0.5, 1200


def _gather(pool: WorkerPool, calls: list[tuple[int, str, tuple]]) -> list:
    """Run ``(worker, method, args)`` calls and return their results in order.

    A call whose worker died is resubmitted to the same handle, which Ray restarts from its constructor
    (``max_restarts``): the dead worker's share is recomputed, nothing else is, and since every call is a
    pure function of its arguments the result is identical to an undisturbed run.
    """
    import ray

    def submit(k: int):
        worker, method, args = calls[k]
        return getattr(pool.actors[worker], method).remote(*args)

    pending = {submit(k): k for k in range(len(calls))}
    tries, waits = [0] * len(calls), [0] * len(calls)
    results: list = [None] * len(calls)
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        k = pending.pop(ref)
        try:
            results[k] = ray.get(ref)
        except ray.exceptions.ActorUnavailableError as e:
            # Restarting after a death already counted (or a network blip): not a new death. Calls are pure,
            # so resubmitting one that may have run is safe; a replica that never comes back ends up
            # ActorDiedError once Ray gives up on it.
            waits[k] += 1
            if waits[k] > _MAX_UNAVAILABLE_WAITS:
                raise RayifError(f"rayif worker {calls[k][0]} stayed unavailable for "
                                 f"{_MAX_UNAVAILABLE_WAITS * _UNAVAILABLE_WAIT_S:.0f}s") from e
            time.sleep(_UNAVAILABLE_WAIT_S)
            pending[submit(k)] = k
        except ray.exceptions.RayActorError as e:
            tries[k] += 1
            if tries[k] > pool.max_restarts:
                raise RayifError(
                    f"rayif worker {calls[k][0]} died {tries[k]} times, more than ScalingConfig.max_restarts="
                    f"{pool.max_restarts}; batches already written are kept: rerun with the same output_dir "
                    "to resume"
                ) from e
            log.warning("rayif worker %d died during %s; recomputing its share on the restarted replica "
                        "(retry %d of %d)", calls[k][0], calls[k][1], tries[k], pool.max_restarts)
            pending[submit(k)] = k
        except ray.exceptions.RayTaskError as e:
            if isinstance(getattr(e, "cause", None), RayifError):
                raise e.cause from None
            raise
    return results


def distributed_s_test(pool: WorkerPool, vectors: torch.Tensor, solver: SolverConfig, *, scale: float | None,
                       seed: int, chunk_size: int, batch_index: int = 0) -> torch.Tensor:
    """``s_test [m, p]``: LiSSA's T repetitions spread over the workers and averaged here, in order ``t``.

    Repetition ``t`` always has seed ``(seed, t)`` and the sum runs in ``t`` order, so the result does not
    depend on the number of workers. Exact and CG run whole on one worker.
    """
    import ray

    v_ref = ray.put(vectors)
    if isinstance(solver, LissaConfig):
        w = len(pool.actors)
        shares = [list(range(i, solver.repetitions, w)) for i in range(w)]
        parts: dict[int, torch.Tensor] = {}
        for got in _gather(pool, [(i, "lissa", (v_ref, solver, scale, seed, share))
                                  for i, share in enumerate(shares) if share]):
            parts.update(got)
        total = torch.zeros_like(vectors)
        for t in range(solver.repetitions):
            total += parts[t]
        s = total / solver.repetitions
    else:
        (s,) = _gather(pool, [(batch_index % len(pool.actors), "solve", (v_ref, solver, seed, chunk_size))])
    require_finite_vectors(s, "s_test")
    return s


def distributed_score(pool: WorkerPool, s_test: torch.Tensor, n_train: int, *, top: int, chunk_size: int,
                      positions: np.ndarray | None = None, candidates: np.ndarray | None = None) -> TopInfluence:
    """Top influences, the training rows sharded by chunk across workers and merged here.

    ``positions``: the training rows to score (the deduplicated union of the batch's candidates);
    default all. Chunk boundaries are the single-process engine's, so values are bit-identical.
    """
    import ray

    if positions is None:
        chunks = [(s, min(s + chunk_size, n_train)) for s in range(0, n_train, chunk_size)]
    else:
        chunks = _runs(np.unique(positions), chunk_size)
    s_ref = ray.put(s_test)
    c_ref = None if candidates is None else ray.put(candidates)
    w = len(pool.actors)
    calls = [(i, "score", (s_ref, chunks[i::w], top, c_ref)) for i in range(w) if chunks[i::w]]
    acc = TopInfluence(s_test.shape[0], top)
    for part in _gather(pool, calls):
        acc.merge(part)
    return acc


def _runs(sorted_positions: np.ndarray, chunk_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` runs covering the positions, each at most ``chunk_size`` long and aligned
    to the global chunk grid (so a chunk's gradients are the same computation whatever else is scored)."""
    out = []
    for c in np.unique(sorted_positions // chunk_size):
        inside = sorted_positions[(sorted_positions >= c * chunk_size) & (sorted_positions < (c + 1) * chunk_size)]
        out.append((int(inside[0]), int(inside[-1]) + 1))
    return out


def run_explain(
    task,
    train: Examples,
    test: Examples,
    *,
    top: int,
    solver: SolverConfig,
    seed: int,
    scaling: ScalingConfig,
    output_dir: str | Path | None = None,
    test_batch_size: int = 256,
    chunk_size: int = DEFAULT_CHUNK,
    candidates: np.ndarray | None = None,
    address: str | None = None,
    progress: bool = True,
    grad_cache_mb: float = 512.0,
    timings: dict[str, float] | None = None,
) -> pa.Table:
    """:func:`rayif.explain` on Ray (see there); ``output_dir`` gets one parquet file per test batch.

    ``timings``: if given, filled with the seconds spent per phase (``setup``, ``workers``, ``test_grads``,
    ``s_test``, ``score``, ``write``), summed over batches; also logged at INFO.
    """
    clock = _Clock()
    ensure_ray(address)
    objective = Objective(task)  # the driver's replica: validation, test gradients, the LiSSA scale
    objective.check(train, "training data")
    objective.check(test, "test data")
    n = len(train)
    meta = {"solver": solver_to_dict(solver), "seed": seed, "num_train": n, "group": False}
    out = _prepare_output(output_dir, {**meta, "top": top, "num_test": len(test), "test_batch_size": test_batch_size,
                                       "test_ids_head": test.ids[:8].tolist(), "knn": candidates is not None})
    scale = None
    if isinstance(solver, LissaConfig):
        scale = solver.scale or estimate_scale(objective, train, solver, seed)
    batches = [(i, slice(s, s + test_batch_size)) for i, s in enumerate(range(0, len(test), test_batch_size))]
    todo = [(i, sl) for i, sl in batches if out is None or not _batch_path(out, i).exists()]
    if len(todo) < len(batches):
        log.info("resuming in %s: %d of %d test batches already done", out, len(batches) - len(todo), len(batches))
    tables: dict[int, pa.Table] = {}
    clock.lap("setup")
    pool = WorkerPool.start(task, train, scaling, grad_cache_mb)
    clock.lap("workers")
    meta["workers"] = [{k: info[k] for k in ("node_id", "device", "gpu_ids")} for info in pool.infos]
    bar = _progress(len(batches), len(batches) - len(todo), progress)
    try:
        for i, sl in todo:
            t0 = time.perf_counter()
            part = test.take(sl)
            cand = None if candidates is None else candidate_mask(candidates[sl], train, top)
            v = grads_at_test_points(objective, part, chunk_size=chunk_size)
            clock.lap("test_grads")
            s = distributed_s_test(pool, v, solver, scale=scale, seed=seed, chunk_size=chunk_size, batch_index=i)
            clock.lap("s_test")
            positions = None if cand is None else np.flatnonzero(cand.any(0))
            acc = distributed_score(pool, s, n, top=top, chunk_size=chunk_size, positions=positions, candidates=cand)
            clock.lap("score")
            table = ranked_table(part.ids, acc.harmful_ids, acc.harmful, acc.helpful_ids, acc.helpful, meta)
            if out is not None:
                tmp = _batch_path(out, i).with_suffix(".tmp")
                pq.write_table(table, tmp)
                tmp.rename(_batch_path(out, i))  # a batch file exists only once complete
            tables[i] = table
            clock.lap("write")
            bar(f"batch {i}: {len(part)} test points in {time.perf_counter() - t0:.2f}s")
    finally:
        pool.shutdown()
    log.info("rayif job seconds by phase: %s", ", ".join(f"{k} {v:.2f}" for k, v in clock.laps.items()))
    if timings is not None:
        timings.update(clock.laps)
    if out is not None:
        return read_results(out)
    return pa.concat_tables([tables[i] for i, _ in batches])


class _Clock:
    """Seconds per named phase, summed: ``lap(name)`` charges the time since the previous lap to ``name``."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now


def read_results(output_dir: str | Path) -> pa.Table:
    """All batch files of a job's output folder as one table, in test order."""
    files = sorted(Path(output_dir).glob("batch-*.parquet"))
    if not files:
        return SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(f) for f in files])


def _batch_path(out: Path, i: int) -> Path:
    return out / f"batch-{i:06d}.parquet"


def _prepare_output(output_dir, job: dict[str, Any]) -> Path | None:
    if output_dir is None:
        return None
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST
    if manifest.exists():
        before = json.loads(manifest.read_text())
        if before != job:
            diff = sorted(k for k in set(before) | set(job) if before.get(k) != job.get(k))
            raise RayifError(f"{out} holds results of a different job (differs in {diff}); "
                             "use a new output_dir or delete that one")
    else:
        manifest.write_text(json.dumps(job, indent=1))
    return out


def _progress(total: int, done: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with ray[data]
        tqdm = None
    if enabled and tqdm is not None:
        bar = tqdm(total=total, initial=done, unit="batch", desc="rayif")

        def step(msg: str) -> None:
            bar.update(1)
            bar.set_postfix_str(msg)
        return step
    return lambda msg: log.info(msg)
