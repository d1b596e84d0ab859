"""One model replica with the job's data, and the work units it runs.

Both executors hold replicas: one in this process, or one per Ray worker. Every unit is a pure function of
its arguments and the seed, so a unit rerun on a restarted worker, or run on another worker, gives the same
bits.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor

from .config import LissaConfig, SolverConfig
from .curvature import BATCHED_FROM
from .data import Examples
from .errors import RayifError
from .grads import Objective, require_finite_vectors
from .ihvp import KroneckerFactors, SolveStats, estimate_scale, kfac, lissa_repetition, make_solver
from .ihvp.chain import Chain, ChainLayout
from .kernels import ChunkWork, TopInfluence, influence_from_grads
from .task import Task

log = logging.getLogger("rayif")

_CHECK_ROWS = 4096


def dtype_name(dtype: torch.dtype) -> str:
    """How a dtype travels to and from replicas (``"float32"``; back with ``getattr(torch, name)``)."""
    return str(dtype).replace("torch.", "")


def pick_device(want_gpu: bool, gpu_ids: list | None = None) -> tuple[str, str | None]:
    """``(device, why_not_gpu)``: cuda when asked for and visible, else cpu and the reason."""
    if not want_gpu:
        return "cpu", None
    if torch.cuda.is_available():
        return "cuda", None
    return "cpu", (f"GPU(s) {gpu_ids if gpu_ids is not None else '(this process)'} were asked for but torch "
                   f"sees no CUDA device (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): "
                   "falling back to CPU")


class Replica:
    """A model replica, the training data and the test points: the units of an influence job as methods."""

    def __init__(self, task: Task, train: Examples, test: Examples | None, device: str = "cpu",
                 grad_cache_mb: float = 512.0):
        self.device = device
        self.objective = Objective(task, device)
        self.train, self.test = train, test
        self._solvers: dict[tuple, object] = {}
        self._grads: OrderedDict[tuple[int, int], Tensor] = OrderedDict()
        self._cache_bytes = int(grad_cache_mb * 2**20)
        self._cached_bytes = 0
        self.progress: bool | None = False  # a LiSSA bar: the in-process executor turns it on
        try:  # bad rows fail later, in validation, with their ids: here they only rule the chain out
            self._chain, self._chain_why = Chain.of(self.objective, self.train.take(slice(0, 2)).to(device).batch)
        except Exception as e:  # noqa: BLE001
            self._chain, self._chain_why = None, f"its first rows did not run: {type(e).__name__}: {e}"

    def warm_up(self) -> None:
        """The first per-example gradient and HVP in a fresh process pay about a second of torch.func set-up;
        paying it at start overlaps it across workers instead of stalling the first unit. The per-example
        gradient path is chosen here, on the first two rows."""
        self.objective.train_grads(self.train.take(slice(0, 2)))
        one = self.train.take(slice(0, 1))
        # enough vectors for the batched path: its set-up, and its check for operations without a batching rule
        vectors = self.objective.theta[None].expand(BATCHED_FROM, -1).clone()
        self.objective.hvp(vectors, one.to(self.device).batch)

    def info(self) -> dict:
        o = self.objective
        return {"pid": os.getpid(), "device": self.device, "num_params": o.num_params,
                "dtype": dtype_name(o.dtype), "model_fingerprint": o.fingerprint(),
                "params_sha256": hashlib.sha256("\n".join(o.names).encode()).hexdigest(),
                "chain": self._chain is not None, "chain_why": self._chain_why}

    # --- units ------------------------------------------------------------------------------------

    def grad_path(self) -> dict:
        """The per-example gradient path of this model (chosen on the first two training rows) and why."""
        self.objective.grad_path(self.train.take(slice(0, 2)).to(self.device).batch)
        return {"path": self.objective.per_example.path, "why": self.objective.per_example.why}

    def check(self, which: str, start: int, stop: int) -> None:
        """Validate rows ``[start, stop)`` of the training (``which="train"``) or test data."""
        data, name = (self.train, "training data") if which == "train" else (self.test, "test data")
        self.objective.check(data.take(slice(start, stop)), name, head=start == 0)

    def scale(self, config: LissaConfig, seed: int, factors: KroneckerFactors | None = None) -> float:
        """LiSSA's ``scale`` (given, or estimated by power iteration): one per job."""
        return config.scale or estimate_scale(self.objective, self.train, config, seed,
                                              kfac.preconditioner(factors, config))

    def factor_shape(self) -> tuple:
        """The Kronecker layout of the selected parameters (blocks, diagonal indices, weight decay)."""
        return kfac.shape_of(self.objective)

    def factor_sums(self, start: int, stop: int) -> dict:
        """First K-FAC pass over training rows ``[start, stop)``: covariance sums."""
        return kfac.covariance_sums(self.objective, self.train.take(slice(start, stop)))

    def eigen_sums(self, start: int, stop: int, qa: list[Tensor], qs: list[Tensor]) -> list[Tensor]:
        """Second (EK-FAC) pass over training rows ``[start, stop)``: eigenvalue sums in the factors' bases."""
        return kfac.eigen_sums(self.objective, self.train.take(slice(start, stop)), qa, qs)

    def test_vectors(self, rows: np.ndarray, group: bool) -> Tensor:
        """``[m, p]`` test-loss gradients of test rows ``rows`` (``[1, p]``: their mean, when ``group``)."""
        g = torch.cat([self.objective.test_grads(self.test.take(rows[i : i + 1024]))
                       for i in range(0, len(rows), 1024)])
        return g.mean(0, keepdim=True) if group else g

    def train_vectors(self, rows: slice | np.ndarray, chunk_size: int) -> Tensor:
        """``[len(rows), p]`` training-loss gradients of training rows ``rows`` (a range or positions)."""
        return torch.cat([self.objective.train_grads(self.train.take(piece)) for piece in chunked(rows, chunk_size)])

    def s_test(self, rows: np.ndarray, group: bool, solver: SolverConfig, scale: float | None, seed: int,
               repetition: int | None, chunk_size: int, factors: KroneckerFactors | None = None
               ) -> tuple[Tensor, SolveStats]:
        """``s_test`` of test rows ``rows``: LiSSA repetition ``repetition`` alone (the driver averages
        them in order), or the whole solve of the other solvers; and what it cost."""
        v = self.test_vectors(rows, group)
        x, stats = self._inverse(v, solver, scale, seed, repetition, chunk_size, factors)
        return x.cpu(), stats

    def product(self, vectors: Tensor, start: int, stop: int, curvature: str, chunk_size: int,
                dtype: str | None = None) -> Tensor:
        """Training rows ``[start, stop)``'s share of the full-data curvature times each row of ``vectors``
        (their products weighted by ``rows / n``, summed in chunk order): the driver sums the shares of every
        shard in shard order. ``dtype``: compute in this one (``"float32"`` for mixed precision) instead of
        the model's; the result has the vectors' dtype."""
        obj = self._objective_in(dtype)
        v = vectors.to(self.device, obj.dtype)
        hv = obj.full_hvp(v, self.train.take(slice(start, stop)), chunk_size, curvature)
        return (hv * ((stop - start) / len(self.train))).to(vectors.dtype).cpu()

    def chain_layout(self) -> ChainLayout:
        """The shape of the model's chain of linear layers (``info()["chain"]`` says whether it has one)."""
        return self._chain.layout

    def chain_sums(self, start: int, stop: int, curvature: str) -> dict[str, Tensor]:
        """Training rows ``[start, stop)``'s factor sums of the explicit curvature (:mod:`rayif.ihvp.chain`),
        summed in chunk order: the driver adds every shard's in shard order."""
        into: dict[str, Tensor] = {}
        for chunk in self.train.take(slice(start, stop)).chunks(self._chain.rows_per_chunk()):
            self._chain.sums(self.objective, chunk.to(self.device).batch, curvature, into)
        return {k: v.cpu() for k, v in into.items()}

    def _objective_in(self, dtype: str | None) -> Objective:
        """This replica's objective, or its copy in ``dtype`` (``"float32"``)."""
        return self.objective if dtype is None else self.objective.in_dtype(getattr(torch, dtype))

    def _inverse(self, v: Tensor, solver: SolverConfig, scale: float | None, seed: int, repetition: int | None,
                 chunk_size: int, factors: KroneckerFactors | None) -> tuple[Tensor, SolveStats]:
        if isinstance(solver, LissaConfig):
            return lissa_repetition(self.objective, self.train, v, solver, scale=scale, seed=seed,
                                    repetition=repetition, precondition=kfac.preconditioner(factors, solver),
                                    progress=self.progress)
        s = self._solver(solver, chunk_size, factors)
        return s.solve(v), s.stats

    def _solver(self, solver: SolverConfig, chunk_size: int, factors: KroneckerFactors | None):
        key = (repr(solver), chunk_size)  # exact builds its matrix once per replica, whatever the seed
        if key not in self._solvers:
            self._solvers[key] = make_solver(self.objective, self.train, solver, chunk_size=chunk_size,
                                             factors=factors)
        return self._solvers[key]

    def ggn_problem(self) -> str | None:
        """Why the loss cannot be split at one model output (no Gauss-Newton curvature, no Kronecker
        factors), or ``None`` when it can: part of ``solver="auto"``'s check before its first solve."""
        try:
            self.objective.output_spec(self.train.take(slice(0, 2)).to(self.device).batch)
        except RayifError as e:
            return str(e)
        return None

    def score(self, s_test: Tensor, work: list[ChunkWork], top: int) -> TopInfluence:
        """Top influences over the chunks in ``work`` (every row, or only the candidate pairs)."""
        s = s_test.to(self.device)
        acc = TopInfluence(s.shape[0], top)
        for w in work:
            if w.rows is None:
                acc.add(influence_from_grads(s, self._chunk_grads(w.start, w.stop)), self.train.ids[w.start:w.stop])
                continue
            cols, col_of = np.unique(w.cols, return_inverse=True)
            mask = np.zeros((s.shape[0], len(cols)), dtype=bool)
            mask[w.rows, col_of] = True
            g = self.objective.train_grads(self.train.take(cols))
            acc.add(influence_from_grads(s, g), self.train.ids[cols], mask)
        return acc

    def matrix(self, s_test: Tensor, work: list[ChunkWork]) -> list[np.ndarray]:
        """Every influence value of the chunks in ``work``: one ``[m, c]`` block each."""
        s = s_test.to(self.device)
        return [influence_from_grads(s, self._chunk_grads(w.start, w.stop)) for w in work]

    def self_influence(self, rows: slice | np.ndarray, solver: SolverConfig, scale: float | None, seed: int,
                       repetition: int | None, chunk_size: int, factors: KroneckerFactors | None = None,
                       inverse: Tensor | None = None) -> tuple[np.ndarray, SolveStats]:
        """``grad L(z)^T h(z)`` for training rows ``rows`` (a range or positions): ``h`` is LiSSA repetition
        ``repetition`` of ``H^-1 grad L(z)`` (the driver averages them in order), or EK-FAC's (the driver
        solves CG's parts itself: :mod:`rayif.self_influence_job`); with ``inverse`` (``[p, p]`` float64, the
        exact solve's, built once by the driver), ``inverse @ g``."""
        if inverse is not None:  # ``rows`` spans several chunks here: their gradients one chunk at a time
            inv, out = inverse.to(self.device), []
            for piece in chunked(rows, chunk_size):
                g = self.objective.train_grads(self.train.take(piece)).double()
                out.append((g * (g @ inv)).sum(1).cpu().numpy())
            return np.concatenate(out), SolveStats()
        g = self.train_vectors(rows, chunk_size)
        h, stats = self._inverse(g, solver, scale, seed, repetition, chunk_size, factors)
        require_finite_vectors(h, "H^-1 grad L(z)")
        return (g * h).sum(1).double().cpu().numpy(), stats

    # --- the gradient cache -----------------------------------------------------------------------

    def _chunk_grads(self, start: int, stop: int) -> Tensor:
        key = (start, stop)
        if key in self._grads:
            self._grads.move_to_end(key)
            return self._grads[key]
        g = self.objective.train_grads(self.train.take(slice(start, stop)))
        size = g.numel() * g.element_size()
        if size <= self._cache_bytes:  # reused by the next test batch; least recently used goes first
            while self._cached_bytes + size > self._cache_bytes:
                _, old = self._grads.popitem(last=False)
                self._cached_bytes -= old.numel() * old.element_size()
            self._grads[key] = g
            self._cached_bytes += size
        return g


def chunked(rows: slice | np.ndarray, size: int) -> list[slice | np.ndarray]:
    """``rows`` (a range or positions) in consecutive pieces of at most ``size``."""
    if isinstance(rows, slice):
        return [slice(a, min(a + size, rows.stop)) for a in range(rows.start, rows.stop, size)]
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def check_ranges(n: int) -> list[tuple[int, int]]:
    """Row ranges validation units cover."""
    if n == 0:
        raise RayifError("no rows to validate")
    return [(s, min(s + _CHECK_ROWS, n)) for s in range(0, n, _CHECK_ROWS)]
