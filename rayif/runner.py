"""The influence job, written once: test batches -> s_test units -> scoring units -> ranked table.

The runner owns batching, the order results are summed in, resume, progress and timings; an executor
(``rayif.executors``) only runs its units, in this process or on Ray workers. Every unit is a function of
its arguments and the seed, and the runner's sums run in a fixed order, so 1 or N workers give the same bits.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from .auto import Choice
from .config import AutoConfig, CGConfig, ExactConfig, LissaConfig, RunConfig, SolverConfig, solver_to_dict
from .data import Examples
from .errors import ConvergenceError, IndefiniteError, LissaDivergenceError, RayifError
from .executors import Call, Executor
from .grads import require_finite_vectors
from .ihvp import KroneckerFactors, SolveStats, mean_of_repetitions
from .job_folder import (
    batch_path,
    finished_metadata,
    job_identity,
    open_folder,
    read_results,
    write_batch,
)
from .kernels import TopInfluence, candidate_plan, candidate_positions, chunk_grid, shards
from .progress import Progress
from .replica import check_ranges
from .results import GROUP_TEST_ID, ranked_table, with_metadata
from .self_influence_job import SelfInfluenceJob
from .sharded import ShardedSolve, load_or_fit_factors, smallest_hessian_eigenvalue, test_vectors

log = logging.getLogger("rayif")


@dataclass(frozen=True)
class Job:
    """What to compute. ``candidates [m, k]`` training ids per test point (``[1, k]`` with ``group``), or
    ``candidate_fn``, which maps a batch's ``s_test [b, p]`` to its ``[b, k]`` candidates (a gradient-sketch
    index), and ``candidate_source`` what they came from (an index fingerprint and ``k``), recorded in the
    manifest."""

    train: Examples
    test: Examples | None
    solver: SolverConfig
    seed: int = 0
    group: bool = False
    top: int = 10
    candidates: np.ndarray | None = None
    candidate_source: dict | None = None
    run: RunConfig = RunConfig()
    candidate_fn: Any = None
    self_rows: np.ndarray | None = None  # training positions whose self-influence is wanted (None: all)


class Runner(SelfInfluenceJob):
    """Runs a :class:`Job` on an :class:`~rayif.executors.Executor`."""

    def __init__(self, job: Job, executor: Executor):
        self.job, self.ex, self.run = job, executor, job.run
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()
        fingerprints = {i["model_fingerprint"] for i in executor.infos}
        if len(fingerprints) > 1:
            raise RayifError("the workers built models with different weights: Task.model_factory must return "
                             "the same trained model every time it is called")
        self.fingerprint = fingerprints.pop()
        vectors = self._self_rows() if job.test is None else 1 if job.group else len(job.test)
        info = executor.infos[0]
        self.auto = Choice(job.solver, len(job.train), info["num_params"], vectors, info.get("chain", False))
        self.stats = SolveStats()
        self.grad_path: dict | None = None  # the replicas' per-example gradient path, once validated
        self._settled = False  # auto's curvature check done
        self._written = 0  # batch files this run wrote: past the first, auto may no longer change curvature
        self._factors: Any = None  # an executor handle to the fitted KroneckerFactors
        self._factor_values: KroneckerFactors | None = None  # the same, on the driver
        self._sharded: ShardedSolve | None = None
        self._scale: float | None = None
        ranked = job.candidates is not None or job.candidate_fn is not None
        self._sorter = np.argsort(job.train.ids) if ranked else None  # ids -> positions

    # --- shared steps -----------------------------------------------------------------------------

    def _lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now

    def validate(self) -> None:
        """Every training and test row through the model once (sharded): bad data fails here, by id."""
        calls = [Call("check", ("train", a, b)) for a, b in check_ranges(len(self.job.train))]
        if self.job.test is not None:
            calls += [Call("check", ("test", a, b)) for a, b in check_ranges(len(self.job.test))]
        self.ex.map(calls)
        self._lap("validate")
        self._settle()

    def _settle(self) -> None:
        """Once the data is known good: the gradient path, and for ``solver="auto"`` the curvature check
        (:class:`~rayif.config.AutoConfig`), before anything is solved."""
        if self._settled:
            return
        self._settled = True
        (self.grad_path,) = self.ex.map([Call("grad_path")])
        if isinstance(self.job.solver, AutoConfig):
            steps = self.job.solver.lanczos_steps
            (ggn,) = self.ex.map([Call("ggn_problem")])
            smallest = None  # the exact solve and CG check again as they solve
            if self.solver.curvature == "hessian" and steps:
                smallest = smallest_hessian_eigenvalue(self.ex, len(self.job.train), self.run, steps, self.job.seed)
            self.auto.check({"ggn": ggn, "smallest": smallest})
        self._lap("settle")

    def _fall_back(self, error: RayifError) -> None:
        self.auto.fall_back(error, written=self._written > 0)
        self._scale = None  # LiSSA's scale is the curvature's

    @property
    def solver(self) -> SolverConfig:
        """The solver the job runs (``auto``'s choice, as it stands)."""
        return self.auto.solver

    @property
    def choice(self) -> dict:
        return self.auto.record

    def scale(self) -> float | None:
        """LiSSA's scale, estimated once per job on one worker (``None`` for the other solvers)."""
        if isinstance(self.solver, LissaConfig) and self._scale is None:
            (self._scale,) = self.ex.map([Call("scale", (self.solver, self.job.seed, self.factors()))])
            self._lap("scale")
        return self._scale

    def factors(self) -> Any:
        """The Kronecker factors the solver needs (``None`` if it needs none), fitted once per job as
        (training chunk) units summed in chunk order, or loaded from ``RunConfig.factors_path``."""
        kind = getattr(self.solver, "preconditioner", None)
        if kind is None or self._factors is not None:
            return self._factors
        factors = load_or_fit_factors(self.ex, self.job.train, self.run, kind, self.fingerprint)
        self._factors, self._factor_values = self.ex.put(factors), factors
        self._lap("factors")
        return self._factors

    def _batches(self) -> list[np.ndarray]:
        m = len(self.job.test)
        if self.job.group:
            return [np.arange(m)]
        size = self.run.test_batch_size
        return [np.arange(s, min(s + size, m)) for s in range(0, m, size)]

    def _waves(self, todo: list[int]) -> list[list[int]]:
        """Batches whose units are scheduled together, so no worker idles while a batch has few units."""
        solver = self.solver
        if isinstance(solver, LissaConfig):
            per_batch = solver.repetitions
        else:
            per_batch = 1 if self.job.group else math.ceil(self.run.test_batch_size / self.run.solve_block)
        size = self.run.batches_in_flight
        if size is None:
            info = self.ex.infos[0]
            vector_bytes = info["num_params"] * torch.empty((), dtype=getattr(torch, info["dtype"])).element_size()
            fit = int(self.run.inflight_mb * 2**20 // max(1, vector_bytes * self.run.test_batch_size))
            size = max(1, min(math.ceil(self.ex.num_workers / per_batch), fit))
        return [todo[i : i + size] for i in range(0, len(todo), size)]

    def s_test(self, batches: list[np.ndarray]) -> list[torch.Tensor]:
        """``s_test`` of each batch of test rows, all their units scheduled at once.

        LiSSA: one unit per (batch, repetition), summed here in repetition order. Exact / CG: one solve per
        batch on the driver, its products sharded over every worker (:class:`~rayif.sharded.ShardedSolve`).
        EK-FAC alone: one unit per (batch, block of ``solve_block`` test vectors).
        """
        job = self.job
        while isinstance(self.solver, (CGConfig, ExactConfig)):
            try:
                return self._sharded_s_test(batches)
            except (IndefiniteError, ConvergenceError) as e:
                self._fall_back(e)

        def units(scale, factors):
            calls, owner = [], []
            for b, rows in enumerate(batches):
                if isinstance(self.solver, LissaConfig):
                    parts = [(rows, t) for t in range(self.solver.repetitions)]
                else:
                    block = len(rows) if job.group else self.run.solve_block
                    parts = [(rows[i : i + block], None) for i in range(0, len(rows), block)]
                for r, t in parts:
                    calls.append(Call("s_test", (r, job.group, self.solver, scale, job.seed, t, self.run.chunk_size,
                                                 factors)))
                    owner.append(b)
            return calls, owner

        results, owner = self._solve(units)
        out = []
        for b in range(len(batches)):
            mine = [r for r, o in zip(results, owner, strict=True) if o == b]
            s = mean_of_repetitions(mine) if isinstance(self.solver, LissaConfig) else torch.cat(mine)
            require_finite_vectors(s, "s_test")
            out.append(s)
        self._lap("s_test")
        return out

    def _sharded_solve(self) -> ShardedSolve:
        """The job's CG or exact solve, its products sharded over every worker (rebuilt when auto changes it)."""
        if self._sharded is None or self._sharded.solver != self.solver:
            factors = self._factor_values if self.factors() is not None else None
            dtype = getattr(torch, self.ex.infos[0]["dtype"])
            job = self.job  # later solves recycle the first's Krylov space: test batches or self-influence parts
            later = len(self._batches()) > 1 if job.test is not None else self._self_rows() > self.run.test_batch_size
            self._sharded = ShardedSolve(self.ex, len(job.train), self.run, self.solver, factors, dtype, later)
        return self._sharded

    def _exact_inverse(self) -> Any:
        """For the exact solver: ``(C + damping I)^-1``, its explicit matrix built once with every worker's
        products, as a handle the workers share; ``None`` for the other solvers."""
        while isinstance(self.solver, ExactConfig):
            try:
                inverse = self._sharded_solve().exact().inverse()
            except IndefiniteError as e:
                self._fall_back(e)
                continue
            self._lap("exact")
            return self.ex.put(inverse)
        return None

    def _sharded_s_test(self, batches: list[np.ndarray]) -> list[torch.Tensor]:
        out = []
        for rows in batches:
            s, stats = self._sharded_solve().solve(test_vectors(self.ex, rows, self.job.group, self.run.solve_block))
            self.stats = self.stats + stats
            require_finite_vectors(s, "s_test")
            out.append(s)
        self._lap("s_test")
        return out

    def _solve(self, units, progress=None) -> tuple[list[Any], Any]:
        """Run the solve units ``units(scale, factors) -> (calls, tag)`` builds; where ``auto`` moves to another
        curvature or solver (:meth:`_fall_back`), build them again for it and rerun. ``progress(calls)``: a
        context that yields the executor's per-unit ``done`` callback. Returns the units' results in call
        order, and the tag."""
        while True:
            calls, tag = units(self.scale(), self.factors())
            try:
                with progress(calls) if progress else nullcontext() as done:
                    return self._counted(self.ex.map(calls, done=done)), tag
            except (IndefiniteError, LissaDivergenceError, ConvergenceError) as e:
                self._fall_back(e)

    def _counted(self, results: list[tuple[Any, SolveStats]]) -> list[Any]:
        for _, st in results:
            self.stats = self.stats + st
        if self.stats.capped:
            log.warning("rayif: %d of %d solves stopped at their cap before reaching their tolerance (see the "
                        "warnings above for the knob)", self.stats.capped, self.stats.solves)
        return [r for r, _ in results]

    def _work(self, rows: np.ndarray, s: torch.Tensor):
        """The scoring work of one batch: every chunk, or only the chunks holding its candidates."""
        n, chunk = len(self.job.train), self.run.chunk_size
        if self.job.candidate_fn is not None:
            cand = np.asarray(self.job.candidate_fn(s))
        elif self.job.candidates is None:
            return chunk_grid(n, chunk)
        else:
            cand = self.job.candidates[rows if not self.job.group else slice(None)]
        return candidate_plan(candidate_positions(cand, self.job.train.ids, self._sorter), n, chunk)

    def score(self, batches: list[np.ndarray], s_tests: list[torch.Tensor]) -> list[TopInfluence]:
        """Top influences of each batch: (batch, training shard) units, shard ``i`` on worker ``i``."""
        w = self.ex.num_workers
        calls, owner = [], []
        for b, (rows, s) in enumerate(zip(batches, s_tests, strict=True)):
            s_ref = self.ex.put(s)
            for i, part in enumerate(shards(self._work(rows, s), w)):
                if part:
                    calls.append(Call("score", (s_ref, part, self.job.top), worker=i))
                    owner.append(b)
        accs = [TopInfluence(s.shape[0], self.job.top) for s in s_tests]
        for part, b in zip(self.ex.map(calls), owner, strict=True):
            accs[b].merge(part)
        self._lap("score")
        return accs

    def metadata(self) -> dict[str, Any]:
        job = self.job
        return {"solver": solver_to_dict(self.solver), "solver_choice": self.choice, "seed": job.seed,
                "grad_path": self.grad_path, "num_train": len(job.train), "group": job.group,
                "candidates": job.candidate_source, "model_fingerprint": self.fingerprint,
                "workers": [{k: i[k] for k in ("node_id", "device", "gpu_ids")} for i in self.ex.infos]}

    def report(self) -> dict[str, Any]:
        """Seconds by phase on the driver and busy seconds by unit kind on each worker."""
        return {"seconds": {k: round(v, 4) for k, v in self.laps.items()},
                "worker_busy": [{k: round(v, 4) for k, v in b.items()} for b in self.ex.busy.seconds],
                "worker_failures": self.ex.failures, "solver_stats": vars(self.stats)}

    # --- jobs -------------------------------------------------------------------------------------

    def explain(self) -> pa.Table:
        """The ranked table; with ``RunConfig.output_dir`` one parquet file per batch, resumable."""
        job = self.job
        batches = self._batches()
        folder = self.run.output_dir
        out = None if folder is None else open_folder(folder, job_identity(job, self.run, self.fingerprint))
        todo = [i for i in range(len(batches)) if out is None or not batch_path(out, i).exists()]
        if len(todo) < len(batches):
            log.info("resuming in %s: %d of %d test batches already done", out, len(batches) - len(todo),
                     len(batches))
        if todo:
            self.validate()
        else:  # nothing left: what the batches were computed with, without checking the curvature again
            meta = finished_metadata(out)
        tables: dict[int, pa.Table] = {}
        bar = Progress(len(batches), "rayif explain", "batch", enabled=self.run.progress,
                       initial=len(batches) - len(todo))
        for wave in self._waves(todo):
            t0 = time.perf_counter()
            rows = [batches[i] for i in wave]
            accs = self.score(rows, self.s_test(rows))
            meta = self.metadata()  # after the solve: the solver that answered, where auto changed it
            for i, r, acc in zip(wave, rows, accs, strict=True):
                test_ids = np.array([GROUP_TEST_ID]) if job.group else job.test.ids[r]
                table = ranked_table(test_ids, acc.harmful_ids, acc.harmful, acc.helpful_ids, acc.helpful, meta)
                if out is not None:
                    write_batch(out, i, table)
                    self._written += 1
                tables[i] = table
                bar.update(1, f"batch {i}: {len(r)} test points ({time.perf_counter() - t0:.2f}s for the wave)")
            self._lap("write")
        bar.close()
        report = self.report()
        log.info("rayif job seconds by phase: %s; worker busy seconds: %s", report["seconds"], report["worker_busy"])
        table = read_results(out) if out is not None else pa.concat_tables([tables[i] for i in range(len(batches))])
        return with_metadata(table, {**meta, "job": report})

    def s_test_all(self) -> torch.Tensor:
        """``[m, p]`` s_test of every test point (``[1, p]`` with ``group``)."""
        self.validate()
        batches = self._batches()
        out = []
        for wave in self._waves(list(range(len(batches)))):
            out += self.s_test([batches[i] for i in wave])
        return torch.cat(out)

    def matrix(self) -> np.ndarray:
        """Every influence value ``[m, n]`` (``[1, n]`` with ``group``), columns in training order."""
        self.validate()
        batches, grid = self._batches(), chunk_grid(len(self.job.train), self.run.chunk_size)
        parts = shards(grid, self.ex.num_workers)
        rows_out = []
        for wave in self._waves(list(range(len(batches)))):
            for s in self.s_test([batches[i] for i in wave]):
                s_ref = self.ex.put(s)
                blocks: dict[int, np.ndarray] = {}
                calls = [Call("matrix", (s_ref, p), worker=i) for i, p in enumerate(parts) if p]
                for p, got in zip([p for p in parts if p], self.ex.map(calls), strict=True):
                    blocks.update({w.start: b for w, b in zip(p, got, strict=True)})
                rows_out.append(np.concatenate([blocks[w.start] for w in grid], axis=1))
        self._lap("matrix")
        return np.concatenate(rows_out)
