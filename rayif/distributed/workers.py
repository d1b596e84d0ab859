"""The worker actor: one model replica, the training data, LiSSA repetitions and candidate scoring."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import numpy as np
import torch

from ..config import LissaConfig, SolverConfig
from ..data import Examples
from ..grads import Objective
from ..ihvp import lissa_repetition, make_solver
from ..influence import TopInfluence, influence_from_grads
from ..task import Task

log = logging.getLogger("rayif")


def pick_device(want_gpu: bool, gpu_ids: list) -> tuple[str, str | None]:
    """``(device, why_not_gpu)``: cuda when asked for and visible, else cpu and the reason."""
    if not want_gpu:
        return "cpu", None
    if torch.cuda.is_available():
        return "cuda", None
    return "cpu", (f"Ray assigned GPU(s) {gpu_ids} but torch sees no CUDA device "
                   f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}): falling back to CPU")


class InfluenceWorker:
    """Holds one replica for the whole job. Wrapped by ``ray.remote`` in the driver.

    Everything it computes is a pure function of its arguments, so a restarted replacement recomputes a
    dead worker's share bit for bit.
    """

    def __init__(self, task: Task, train: Examples, want_gpu: bool, grad_cache_mb: float = 512.0):
        import ray

        ctx = ray.get_runtime_context()
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        self.device, self.fallback = pick_device(want_gpu, self.gpu_ids)
        if self.fallback:
            log.warning("rayif worker %s: %s", ctx.get_actor_id(), self.fallback)
        self.node_id = ctx.get_node_id()
        self.objective = Objective(task, self.device)
        self.train = train
        self._solvers: dict[tuple, object] = {}
        self._grads: OrderedDict[tuple[int, int], torch.Tensor] = OrderedDict()
        self._cache_bytes = int(grad_cache_mb * 2**20)
        self._cached_bytes = 0
        self._warm_up()

    def _warm_up(self) -> None:
        # The first per-example gradient and HVP in a fresh process pay about a second of torch.func set-up;
        # paying it here overlaps it across workers at pool start instead of stalling the first batch.
        one = self.train.take(slice(0, 1))
        self.objective.train_grads(one)
        self.objective.hvp(self.objective.theta[None], one.inputs.to(self.device), one.targets.to(self.device))

    def info(self) -> dict:
        return {"node_id": self.node_id, "pid": os.getpid(), "gpu_ids": self.gpu_ids, "device": self.device,
                "fallback": self.fallback}

    def lissa(self, vectors: torch.Tensor, config: LissaConfig, scale: float, seed: int,
              repetitions: list[int]) -> dict[int, torch.Tensor]:
        """``{t: repetition t of LiSSA for every row of vectors}``."""
        return {t: lissa_repetition(self.objective, self.train, vectors, config, scale=scale, seed=seed,
                                    repetition=t).cpu() for t in repetitions}

    def solve(self, vectors: torch.Tensor, config: SolverConfig, seed: int, chunk_size: int) -> torch.Tensor:
        """A deterministic solver (exact, CG) built once per worker and reused across test batches."""
        key = (repr(config), seed, chunk_size)
        if key not in self._solvers:
            self._solvers[key] = make_solver(self.objective, self.train, config, seed=seed, chunk_size=chunk_size)
        return self._solvers[key].solve(vectors.to(self.device)).cpu()

    def score(self, s_test: torch.Tensor, chunks: list[tuple[int, int]], top: int,
              candidates: np.ndarray | None = None) -> TopInfluence:
        """Top influences over the training rows ``[start, stop)`` of ``chunks``.

        ``candidates [m, n] bool`` (optional) says which training rows each test row may rank.
        """
        s = s_test.to(self.device)
        acc = TopInfluence(s.shape[0], top)
        for start, stop in chunks:
            scores = influence_from_grads(s, self._train_grads(start, stop))
            mask = None if candidates is None else candidates[:, start:stop]
            acc.add(scores, self.train.ids[start:stop], mask)
        return acc

    def _train_grads(self, start: int, stop: int) -> torch.Tensor:
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
