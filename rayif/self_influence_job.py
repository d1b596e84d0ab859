"""The self-influence job: ``grad L(z)^T (C + damping I)^-1 grad L(z)`` of every training row (or a sample).

A mixin of :class:`~rayif.runner.Runner`, whose shared steps (validation, auto's choice and fall-backs, factors,
the sharded solve) it uses. CG solves parts of ``RunConfig.test_batch_size`` rows on the driver, each product
sharded over every worker, the later parts starting from the first's Krylov space: one space for the job, so
1 and N workers give the same bits. The exact inverse, LiSSA and EK-FAC run as (row part) units on any worker.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from .config import CGConfig, LissaConfig
from .errors import ConvergenceError, IndefiniteError
from .executors import Call
from .ihvp import mean_of_repetitions
from .progress import Progress
from .replica import chunked
from .results import SELF_INFLUENCE_SCHEMA, with_metadata
from .sharded import self_influence_by_solve

_INVERSE_CHUNKS = 16  # chunks per self-influence unit that applies the exact inverse ([p, p], read once)


class SelfInfluenceJob:
    """``Runner.self_influence`` and its two paths (see the module)."""

    def self_influence(self) -> pa.Table:
        """``(train_id, self_influence)`` of every training example (or of ``Job.self_rows``), largest first."""
        self.validate()
        job, rows = self.job, self.job.self_rows
        ids = job.train.ids if rows is None else job.train.ids[rows]
        wanted = slice(0, len(job.train)) if rows is None else rows
        v = self._self_influence_by_cg(wanted)
        if v is None:
            v = self._self_influence_units(wanted)
        order = np.lexsort((ids, -v))
        self._lap("self_influence")
        table = pa.Table.from_arrays([pa.array(ids[order]), pa.array(v[order])], schema=SELF_INFLUENCE_SCHEMA)
        return with_metadata(table, {**self.metadata(), "job": self.report()})

    def _self_rows(self) -> int:
        return len(self.job.train) if self.job.self_rows is None else len(self.job.self_rows)

    def _self_influence_by_cg(self, wanted: slice | np.ndarray) -> np.ndarray | None:
        """CG's self-influence: parts of ``test_batch_size`` rows, each one sharded solve that recycles the
        first's Krylov space; ``None`` once the solver is not CG (as chosen, or after auto changed it)."""
        while isinstance(self.solver, CGConfig):
            with Progress(self._self_rows(), "rayif self-influence", "example", enabled=self.run.progress) as bar:
                try:
                    v, stats = self_influence_by_solve(self.ex, self._sharded_solve(),
                                                       chunked(wanted, self.run.test_batch_size),
                                                       self.run.chunk_size, bar.update)
                except (IndefiniteError, ConvergenceError) as e:
                    self._fall_back(e)
                    continue
            self.stats = self.stats + stats
            return v
        return None

    def _self_influence_units(self, wanted: slice | np.ndarray) -> np.ndarray:
        """Self-influence as (row part) units on any worker: the exact inverse applied, LiSSA, EK-FAC."""
        job, size = self.job, self.run.chunk_size

        def units(scale, factors):
            # every row's exact solve is one product with the inverse, on any worker; asked here, not before,
            # so a CG that auto replaces by the exact solve gets it too
            exact = self._exact_inverse()
            reps = range(self.solver.repetitions) if isinstance(self.solver, LissaConfig) else [None]
            # a unit reads the [p, p] inverse once, so it gets several chunks (a count set by the rows alone)
            parts = chunked(wanted, size * (_INVERSE_CHUNKS if exact is not None else 1))
            return [Call("self_influence", (p, self.solver, scale, job.seed, t, size, factors, exact))
                    for p in parts for t in reps], parts

        @contextmanager
        def progress(calls):
            with Progress(sum(_rows(c.args[0]) for c in calls), "rayif self-influence", "example",
                          enabled=self.run.progress) as bar:
                yield lambda k: bar.update(_rows(calls[k].args[0]))

        results, parts = self._solve(units, progress)
        reps = len(results) // len(parts)  # in repetition order within each part
        values = [mean_of_repetitions(results[i * reps : (i + 1) * reps]) for i in range(len(parts))]
        return np.concatenate(values)


def _rows(part: slice | np.ndarray) -> int:
    return part.stop - part.start if isinstance(part, slice) else len(part)
