"""One solve on every worker: the driver iterates, the workers compute its curvature products.

CG's iterations and the explicit matrix's factorisation are small dense algebra; their cost is the
full-data curvature products. Here each product is split over fixed row shards (``RunConfig.product_shards``
of them, set by the training set's size alone), any worker computes any shard's share, and the driver sums
the shares in shard order: a solve gets faster with every worker up to the shard count, and 1 and N
workers give the same bits. The Kronecker-factor fit is sharded the same way (:func:`load_or_fit_factors`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .config import CGConfig, ExactConfig, RunConfig
from .data import Examples, ids_digest
from .errors import RayifError
from .executors import Call, Executor
from .ihvp import KroneckerFactors, SolveStats, kfac
from .ihvp.cg import KrylovSpace, low_precision, refined_cg
from .ihvp.chain import ChainLayout, add_sums, chain_matrix
from .ihvp.exact import ExactSolver
from .ihvp.lanczos import smallest_eigenvalue
from .job_folder import FACTORS
from .kernels import chunk_grid
from .replica import dtype_name

log = logging.getLogger("rayif")

_PROBE_CHUNK = 8  # the definiteness probe's chunks, in RunConfig.chunk_size units
_CHAIN_BYTES = 2**28  # a chain's factor sums in flight to the driver at once (its shard count's bound)
_CHAIN_CHECK = {torch.float64: 1e-8, torch.float32: 1e-3}  # a chain's matrix against a product: relative


def product_shards(n: int, chunk_size: int, count: int) -> list[tuple[int, int]]:
    """At most ``count`` contiguous row ranges of whole chunks covering ``[0, n)``."""
    chunks = math.ceil(n / chunk_size)
    rows = math.ceil(chunks / count) * chunk_size
    return [(s, min(s + rows, n)) for s in range(0, n, rows)]


def sharded_product(ex: Executor, shards: list[tuple[int, int]], vectors: Tensor, curvature: str, chunk_size: int,
                    dtype: str | None = None) -> Tensor:
    """The full-data ``curvature`` times each row of ``vectors [m, p]``: each of ``shards``' share on any
    worker (``Replica.product``), summed in shard order."""
    ref = ex.put(vectors)
    parts = ex.map([Call("product", (ref, a, b, curvature, chunk_size, dtype)) for a, b in shards])
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out


def smallest_hessian_eigenvalue(ex: Executor, n: int, run: RunConfig, steps: int, seed: int) -> float:
    """``solver="auto"``'s definiteness probe: ``steps`` Lanczos iterations on the driver
    (:func:`~rayif.ihvp.lanczos.smallest_eigenvalue`), each single-vector Hessian product sharded over every
    worker. The products run on chunks ``_PROBE_CHUNK`` times larger (one vector's per-chunk overhead
    dominates) and in float32 for a float64 model (its rounding, ~1e-7 of the largest eigenvalue, is far below
    any damping)."""
    model = getattr(torch, ex.infos[0]["dtype"])
    low = torch.float32 if model == torch.float64 else model
    chunk = run.chunk_size * _PROBE_CHUNK
    shards = product_shards(n, chunk, run.product_shards)
    name = dtype_name(low) if low != model else None
    return smallest_eigenvalue(lambda v: sharded_product(ex, shards, v, "hessian", chunk, name),
                               ex.infos[0]["num_params"], steps, seed, low)


class ShardedSolve:
    """``s_test`` of test batches by CG or the exact solve, every product sharded over the executor's workers.

    Args:
        ex: the job's executor; ``n``: training rows; ``run``: the job's run config.
        solver: a :class:`CGConfig` or :class:`ExactConfig`.
        factors: the fitted Kronecker factors when ``solver`` asks for a preconditioner (on the driver).
        dtype: the model's dtype.
        later: whether more than one solve follows (a job of several test batches): only then does CG keep
            its first solve's Krylov space (``CGConfig.recycle``) for the others.
    """

    def __init__(self, ex: Executor, n: int, run: RunConfig, solver: CGConfig | ExactConfig,
                 factors: KroneckerFactors | None, dtype: torch.dtype, later: bool = True):
        self.ex, self.run, self.solver, self.dtype, self.n = ex, run, solver, dtype, n
        self.shards = product_shards(n, run.chunk_size, run.product_shards)
        self.precondition = kfac.preconditioner(factors, solver) or (lambda r: r)
        self._exact: ExactSolver | None = None
        # the first batch's search directions, for the later ones
        self.space = KrylovSpace(getattr(solver, "recycle", 0) if later else 0, ex.infos[0]["num_params"])

    def curvature(self, vectors: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``C v`` for each row of ``vectors [m, p]``: one pass over the training data, its shards on any
        worker, summed in shard order. ``dtype``: the products' (e.g. ``torch.float32``; default the model's)."""
        name = None if dtype is None else dtype_name(dtype)
        return sharded_product(self.ex, self.shards, vectors, self.solver.curvature, self.run.chunk_size, name)

    def product(self, vectors: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``(C + damping I) v``, as :meth:`curvature`."""
        return self.curvature(vectors, dtype) + self.solver.damping * vectors

    def solve(self, vectors: Tensor) -> tuple[Tensor, SolveStats]:
        """``(C + damping I)^-1`` applied to each row of ``vectors [m, p]``, and what it cost."""
        if isinstance(self.solver, ExactConfig):
            exact = self.exact()
            return exact.solve(vectors), exact.stats
        low = low_precision(self.solver, vectors.dtype)
        apply_low = None if low is None else (lambda v: self.product(v, low))
        return refined_cg(self.product, apply_low, self.precondition, vectors, self.solver, self.space)

    def exact(self) -> ExactSolver:
        """The explicit curvature, built once and factored on the driver: from a chain's per-row factors
        (:meth:`chain_matrix`), else in column blocks, each block one sharded product (in float32 for a
        float64 model with ``ExactConfig.mixed_precision``)."""
        if self._exact is None:
            p = self.ex.infos[0]["num_params"]
            ExactSolver.check_size(p, self.solver)
            self._exact = ExactSolver.build(self.curvature, p, self.solver, self.dtype, self.chain_matrix())
        return self._exact

    def chain_matrix(self) -> Tensor | None:
        """For a model that is a chain of linear layers (:mod:`rayif.ihvp.chain`) and ``ExactConfig.chain``:
        the ``[p, p]`` curvature from its factor sums, shards on any worker added in shard order, once it
        agrees with a product pass on two seeded vectors; else ``None`` (the products build it)."""
        info = self.ex.infos[0]
        if not (self.solver.chain and info.get("chain")):
            if self.solver.chain:
                log.info("rayif: the explicit %s from %d curvature products, not per-row factors: %s",
                         self.solver.curvature, info["num_params"], info.get("chain_why"))
            return None
        (layout,) = self.ex.map([Call("chain_layout")])
        shards = self._chain_shards(layout)
        sums = add_sums(self.ex.map([Call("chain_sums", (a, b, self.solver.curvature)) for a, b in shards]))
        h = chain_matrix(layout, sums, self.n, self.solver.curvature)
        del sums
        v = torch.randn(2, len(h), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        want = self.curvature(v.to(self.dtype)).double()
        error = float((v @ h - want).norm() / want.norm())
        if error > _CHAIN_CHECK.get(self.dtype, 1e-3):
            log.warning("rayif: the %s built from the model's layers as a chain of linear layers differs from a "
                        "curvature product by %.2g (relative): building it from products instead. Does the model's "
                        "forward run its modules in order?", self.solver.curvature, error)
            return None
        log.info("rayif: the explicit %s from per-row factors (a chain of linear layers; %d shards), %.2g from a "
                 "product", self.solver.curvature, len(shards), error)
        return h

    def _chain_shards(self, layout: ChainLayout) -> list[tuple[int, int]]:
        """Row shards for the chain's factor sums: ``product_shards`` of them, fewer when their sums would
        hold more than ``_CHAIN_BYTES`` at once, a power of two so that 2, 4, 8 workers share them evenly (a
        function of the model and ``n`` alone, so any number of workers adds the same shards)."""
        fit = max(1, _CHAIN_BYTES // max(1, 8 * layout.floats()))
        count = min(self.run.product_shards, 2 ** (fit.bit_length() - 1))
        return product_shards(self.n, self.run.chunk_size, count)


def test_vectors(ex: Executor, rows: np.ndarray, group: bool, block: int) -> Tensor:
    """``[m, p]`` test-loss gradients of test rows ``rows`` in blocks of ``block`` on any worker (``[1, p]``,
    their mean, with ``group``)."""
    if group:
        (v,) = ex.map([Call("test_vectors", (rows, True))])
        return v
    return torch.cat(ex.map([Call("test_vectors", (rows[i : i + block], False)) for i in range(0, len(rows), block)]))


def self_influence_by_solve(ex: Executor, solve: ShardedSolve, parts: list, chunk_size: int,
                            done: Callable[[int], None]) -> tuple[np.ndarray, SolveStats]:
    """``g^T (C + damping I)^-1 g`` of each training row in ``parts`` (ranges or positions), and what it cost:
    one ``solve`` per part, in order, so every worker computes each solve's products and the later solves
    start from the first's Krylov space (``ShardedSolve(later=True)``). The parts' gradients are computed a
    wave at a time, one part per worker. ``done(rows)`` after each part."""
    out, stats, width = [], SolveStats(), ex.num_workers
    for w in range(0, len(parts), width):
        wave = parts[w : w + width]
        for g in ex.map([Call("train_vectors", (part, chunk_size)) for part in wave]):
            s, st = solve.solve(g)
            stats = stats + st
            out.append((g.double() * s.double()).sum(1).numpy())
            done(len(g))
    return np.concatenate(out), stats


def load_or_fit_factors(ex: Executor, train: Examples, run: RunConfig, kind: str, fingerprint: str
                        ) -> KroneckerFactors:
    """The job's Kronecker factors: loaded from ``RunConfig.factors_path`` (or the output folder's) when
    they were fitted for this model, training data and kind, else fitted as (training chunk) units on any
    worker, summed in chunk order, and saved there."""
    path = run.factors_path or (Path(run.output_dir) / FACTORS if run.output_dir else None)
    identity = {"kind": kind, "model_fingerprint": fingerprint, "params_sha256": ex.infos[0]["params_sha256"],
                "num_train": len(train), "train_ids_sha256": ids_digest(train.ids)}
    if path is not None and Path(path).exists():
        factors = KroneckerFactors.load(path)
        if factors.identity != identity:
            diff = sorted(k for k in identity if factors.identity.get(k) != identity[k])
            raise RayifError(f"{path} holds Kronecker factors fitted for something else (differs in {diff}); "
                             "delete it to refit, or give another RunConfig.factors_path")
        log.info("rayif: %s factors loaded from %s", kind, path)
        return factors
    grid = chunk_grid(len(train), run.chunk_size)
    shape, *sums = ex.map([Call("factor_shape")] + [Call("factor_sums", (w.start, w.stop)) for w in grid])
    sums = kfac.add_sums(sums)
    eigen = None
    if kind == "ekfac":
        qa, qs, _ = kfac.eigenbases(sums)
        qa_ref, qs_ref = ex.put(qa), ex.put(qs)
        eigen = kfac.add_sums(ex.map([Call("eigen_sums", (w.start, w.stop, qa_ref, qs_ref)) for w in grid]))
    factors = kfac.assemble(kind, shape, sums, eigen, identity)
    if path is not None:
        factors.save(path)
    log.info("rayif: %s factors fitted over %d training rows in %d chunks", kind, len(train), len(grid))
    return factors
