"""Gradient sketches: per-example training gradients mapped to ``d`` dimensions that keep inner products.

Influence is an inner product, ``I(z, z_test) = -s_test . grad L(z)``, so an inner-product index of sketched
training gradients searched with ``-sketch(s_test)`` returns the training points of largest approximate
influence (the harmful side; ``+sketch(s_test)`` the helpful side). The sketch is two linear stages:

1. :class:`Sketcher`, ``R: p -> width``. When the selected parameters fit (``p <= width``) it is the identity
   (a fixed layout, nothing random). Otherwise it is random and unbiased, ``E[(R x) . (R y)] = x . y``: for
   each ``nn.Linear`` whose weight is selected a Kronecker-structured Gaussian projection of the gradient's
   two factors (the per-example weight gradient is ``sum_t delta_t a_t^T``, output gradient times input, so
   ``A delta (B a)^T`` never forms an ``out x in`` matrix per example), count-sketched (one hashed coordinate
   and sign each) into ``width``; every other parameter count-sketched from its per-example gradient.
   Matrices and hashes come from ``(seed, parameter name)``: every worker regenerates the same ``R``.
2. :class:`Basis`, ``U^T: width -> d``: the top ``d`` right singular vectors of a sample of stage-1 training
   sketches. Per-example gradients span few directions, and ``s_test``'s large components outside them
   (``H^-1`` amplifies directions the data barely touches) only add noise to a random sketch; projecting
   both sides on the gradients' own subspace keeps the inner products that rank the training points.
   It drops the gradient energy outside the subspace (reported as ``energy_kept``), so unlike stage 1 it is
   not unbiased for arbitrary vectors.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..data import Examples, map_batch
from ..errors import RayifError
from ..functional import differentiable_kernels, layer_calls
from ..grads import Objective, require_finite
from ..task import batch_len

log = logging.getLogger("rayif")


@dataclass(eq=False)
class _Block:
    """One parameter block of ``R``. A Kronecker block (``module`` set) maps a weight-shaped ``W [out, in1]``
    (bias as the last column) to ``C(A W B^T)``; any other block to ``C(x)`` of its flat slice. ``A``, ``B``:
    ``None`` for the identity; ``C``: coordinates to ``buckets`` with ``signs``."""

    names: list[str]
    module: nn.Module | None
    a: Tensor | None = None  # [d_o, out]
    b: Tensor | None = None  # [d_i, in1]
    buckets: Tensor | None = None  # [k] in [0, width)
    signs: Tensor | None = None  # [k] +-1


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))


def _gaussian(width: int, dim: int, gen: torch.Generator) -> Tensor | None:
    """A Gaussian ``[dim, width]`` with ``E[B^T B] = I`` (float64), or None (identity) when ``width <= dim``."""
    if width <= dim:
        return None
    return torch.randn(dim, width, generator=gen, dtype=torch.float64) / math.sqrt(dim)


def kronecker_linears(model: nn.Module, names: list[str]) -> list[tuple[str, nn.Linear, list[str]]]:
    """``(weight name, module, [weight, bias?] names)`` of every ``nn.Linear`` whose weight is selected and held
    by no other module (a tied weight gets gradient from elsewhere too, so it is sketched as a plain block)."""
    selected, users = set(names), {}
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            users[id(p)] = users.get(id(p), 0) + 1
    out = []
    for prefix, mod in model.named_modules():
        w, b = (f"{prefix}.weight", f"{prefix}.bias") if prefix else ("weight", "bias")
        if type(mod) is nn.Linear and w in selected and users[id(mod.weight)] == 1:
            out.append((w, mod, [w, b] if b in selected else [w]))
    return out


class Sketcher:
    """Stage 1, ``R: p -> width``, for one replica: :meth:`project` for flat vectors (``s_test``),
    :meth:`sketch` for the per-example training gradients of a batch (regulariser included, as
    :meth:`Objective.train_grads`). ``exact`` when ``p <= width``: ``R`` is then the identity and ``dim = p``
    (else ``dim = width``)."""

    def __init__(self, obj: Objective, width: int, seed: int):
        if width < 1:
            raise RayifError(f"the sketch width must be >= 1, got {width}")
        self.obj, self.width, self.seed = obj, width, seed
        self.exact = obj.num_params <= width
        self.dim = obj.num_params if self.exact else width  # the stage's output dimension
        self.offsets = dict(zip(obj.names, np.cumsum([0, *obj.numels[:-1]]).tolist(), strict=True))
        self.numels = dict(zip(obj.names, obj.numels, strict=True))
        self.side = max(1, 2 * math.isqrt(width))  # the Gaussian factors' widths
        self.blocks = self._plan()
        self._factored: bool | None = None  # the Kronecker path, checked on the first batch
        self._penalty: Tensor | None = None

    def _plan(self) -> list[_Block]:
        obj, dtype, device = self.obj, self.obj.dtype, self.obj.device
        blocks, taken = [], set()
        for _, mod, names in kronecker_linears(obj.model, obj.names):
            mod.weight.requires_grad_(True)  # its output must be in the graph for the output gradient
            blocks.append(_Block(names, mod))
            taken.update(names)
        blocks += [_Block([n], None) for n in obj.names if n not in taken]
        at = 0
        for blk in blocks:
            gen = _generator(self.seed, blk.names[0])
            if blk.module is not None:
                out, in1 = blk.module.out_features, blk.module.in_features + (len(blk.names) == 2)
                if not self.exact:
                    blk.a, blk.b = (None if t is None else t.to(device, dtype)
                                    for t in (_gaussian(out, self.side, gen), _gaussian(in1, self.side, gen)))
                k = (out if blk.a is None else blk.a.shape[0]) * (in1 if blk.b is None else blk.b.shape[0])
            else:
                k = self.numels[blk.names[0]]
            if self.exact:  # every coordinate in its own place, in [out, in1] order for a Kronecker block
                blk.buckets, blk.signs = torch.arange(at, at + k, device=device), torch.ones(k, dtype=dtype,
                                                                                          device=device)
                at += k
            else:
                blk.buckets = torch.randint(0, self.dim, (k,), generator=gen).to(device)
                blk.signs = (torch.randint(0, 2, (k,), generator=gen) * 2 - 1).to(device, dtype)
        return blocks

    def describe(self) -> dict:
        """What determines ``R``: recorded with an index, so an index of another ``R`` is refused."""
        return {"width": self.width, "seed": self.seed, "exact": self.exact, "dim": self.dim, "side": self.side,
                "params": list(self.obj.names),
                "kronecker": [blk.names[0] for blk in self.blocks if blk.module is not None]}

    # --- the map ----------------------------------------------------------------------------------

    def _count(self, blk: _Block, x: Tensor, total: Tensor) -> None:
        total.index_add_(1, blk.buckets, x * blk.signs)

    def _weight(self, blk: _Block, parts: list[Tensor], total: Tensor) -> None:
        """Add ``R`` of weight-shaped slices ``[m, out, in (+1)]`` to ``total``."""
        m, (out, inn) = parts[0].shape[0], blk.module.weight.shape
        w = parts[0].reshape(m, out, inn)
        if len(parts) == 2:
            w = torch.cat([w, parts[1].reshape(m, out, 1)], dim=2)
        if blk.a is not None:
            w = blk.a @ w
        if blk.b is not None:
            w = w @ blk.b.T
        self._count(blk, w.reshape(m, -1), total)

    def _factors(self, blk: _Block, delta: Tensor, a: Tensor, total: Tensor) -> None:
        """Add ``R`` of per-example ``sum_t delta_t a_t^T`` (``delta [b, T, out]``, ``a [b, T, in1]``)."""
        left = delta if blk.a is None else delta @ blk.a.T
        right = a if blk.b is None else a @ blk.b.T
        self._count(blk, torch.einsum("bto,bti->boi", left, right).reshape(delta.shape[0], -1), total)

    def project(self, v: Tensor) -> Tensor:
        """``[m, dim]``: ``R`` applied to ``[m, p]`` flat vectors of the selected parameters (e.g. ``s_test``)."""
        if v.dim() != 2 or v.shape[1] != self.obj.num_params:
            raise RayifError(f"vectors to sketch must be [m, {self.obj.num_params}], got {tuple(v.shape)}")
        v = v.to(self.obj.device, self.obj.dtype)
        total = v.new_zeros(v.shape[0], self.dim)
        for blk in self.blocks:
            parts = [v[:, self.offsets[n] : self.offsets[n] + self.numels[n]] for n in blk.names]
            if blk.module is None:
                self._count(blk, parts[0], total)
            else:
                self._weight(blk, parts, total)
        return total

    # --- per-example training gradients -----------------------------------------------------------

    def sketch(self, batch) -> Tensor:
        """``[b, dim]``: ``R grad L(z_i)`` for each example of ``batch`` (regulariser included). The gradient of
        a Kronecker block is never formed per example; the other blocks' are, for this batch only."""
        if self._factored is None:
            self._factored = self._check_factored(batch)
        b = batch_len(batch)
        total = torch.zeros(b, self.dim, dtype=self.obj.dtype, device=self.obj.device)
        kron = [blk for blk in self.blocks if blk.module is not None] if self._factored else []
        if kron:
            for blk, delta, a in _linear_factors(self.obj, kron, batch):
                self._factors(blk, delta, a, total)
        rest = [blk for blk in self.blocks if all(blk is not k for k in kron)]
        if rest:
            names = [n for blk in rest for n in blk.names]
            g = dict(zip(names, _plain_grads(self.obj, names, batch), strict=True))
            for blk in rest:
                parts = [g[n].reshape(b, -1) for n in blk.names]
                if blk.module is None:
                    self._count(blk, parts[0], total)
                else:
                    self._weight(blk, parts, total)
        total += self._penalty_sketch()
        require_finite(total, None, "training gradient sketch")
        return total

    def _penalty_sketch(self) -> Tensor:
        """``R`` of the regulariser's gradient, the same for every example (it is in every per-example loss)."""
        if self._penalty is None:
            obj, theta = self.obj, self.obj.theta.detach()
            if obj.task.weight_decay or obj.task.regularizer is not None:
                self._penalty = self.project(obj.penalty_grad()[None])
            else:
                self._penalty = theta.new_zeros(1, self.dim)
        return self._penalty

    def _check_factored(self, batch) -> bool:
        """On two rows, the Kronecker path against ``R`` of the plain per-example gradients. A model that mixes
        examples inside a Linear's input (a reshape of batch into positions, a batch norm in training mode)
        fails here; its Linears are then sketched from per-example gradients: the same ``R``, slower."""
        if not any(blk.module is not None for blk in self.blocks):
            return False
        two = map_batch(lambda t: t[: min(2, batch_len(batch))], batch)
        self._factored = True
        try:
            got = self.sketch(two)
        except Exception as e:  # noqa: BLE001 - any failure means: not this path
            why = f"{type(e).__name__}: {e}"
        else:
            want = self.project(self.obj.train_grads(Examples(two, np.arange(batch_len(two)))))
            if float((got - want).abs().max()) <= 1e-4 * float(want.abs().max().clamp_min(1e-30)):
                return True
            why = "its per-example factors do not reproduce the per-example gradients"
        log.warning("rayif sketch: the Kronecker projection of nn.Linear gradients does not apply to this model "
                    "(%s); its Linears are sketched from per-example gradients instead", why)
        return False


def _linear_factors(obj: Objective, blocks: list[_Block], batch):
    """``(block, delta [b, T, out], a [b, T, in1])`` per call of each block's Linear while the training loss
    runs: the layer input (a column of ones appended when the bias is selected) and the gradient of the summed
    loss in its output, which for independent examples is each example's own output gradient."""
    with layer_calls([blk.module for blk in blocks]) as calls, torch.enable_grad(), differentiable_kernels():
        losses = obj.task.train_losses(obj.model, batch)
    b = batch_len(batch)
    outs = [o for mine in calls for _, o in mine]
    if not outs:
        raise RayifError("the loss called no nn.Linear whose weight is selected")
    deltas = iter(torch.autograd.grad(losses.sum(), outs, allow_unused=True))
    for blk, mine in zip(blocks, calls, strict=True):
        for a, out in mine:
            delta = next(deltas)
            if delta is None:
                continue
            a, delta = a.reshape(b, -1, a.shape[-1]), delta.reshape(b, -1, out.shape[-1])
            if len(blk.names) == 2:  # the bias is selected
                a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], dim=2)
            yield blk, delta, a


def _plain_grads(obj: Objective, names: list[str], batch) -> list[Tensor]:
    """Per-example gradients ``[b, *shape]`` of the named parameters (training loss, no regulariser)."""
    obj.grad_path(batch)
    return obj.per_example.grads(obj.task.train_losses, batch, names)


@dataclass
class Basis:
    """Stage 2: ``u [width, d]``, orthonormal columns (the top right singular vectors of ``rows`` stage-1
    training sketches), and ``energy_kept``, the share of those sketches' squared norm the columns hold."""

    u: Tensor
    energy_kept: float
    rows: int

    @property
    def dim(self) -> int:
        return self.u.shape[1]

    def digest(self) -> str:
        import hashlib

        return hashlib.sha256(self.u.detach().cpu().contiguous().float().numpy().tobytes()).hexdigest()


def fit_basis(sample: Tensor, dim: int) -> Basis:
    """The top ``dim`` right singular vectors of ``sample [rows, width]`` (fewer if its rank is lower), from the
    eigendecomposition of its smaller Gram matrix (a matrix product and a ``min(rows, width)``-sized eigh)."""
    x = sample.double()
    rows, width = x.shape
    if rows <= width:
        e, w = torch.linalg.eigh(x @ x.T)  # x = W diag(sv) V^T  ->  V = x^T W / sv
        e, w = e.flip(0).clamp_min(0), w.flip(1)
    else:
        e, v = torch.linalg.eigh(x.T @ x)
        e, v = e.flip(0).clamp_min(0), v.flip(1)
    total = float(e.sum())
    keep = int(min(dim, int((e > e[0] * 1e-12).sum()))) if total > 0 else 0  # rank: above rounding
    if keep < 1:
        raise RayifError("the training gradients sampled for the sketch basis are all zero")
    u = (x.T @ w[:, :keep]) / e[:keep].sqrt() if rows <= width else v[:, :keep]
    u = u * torch.where(u[u.abs().argmax(0), torch.arange(keep)] < 0, -1.0, 1.0)  # a sign convention
    return Basis(u.contiguous(), float(e[:keep].sum()) / total, rows)


class GradientSketch:
    """Both stages for one replica: ``[b, d]`` float32 sketches of training gradients (:meth:`train`) and of
    ``s_test`` rows (:meth:`query`), ``d = basis.dim`` (stage 1's ``dim`` without a basis)."""

    def __init__(self, obj: Objective, width: int, seed: int, basis: Basis | None = None):
        self.stage1 = Sketcher(obj, width, seed)
        self.basis = basis
        self._u = None if basis is None else basis.u.to(obj.device, obj.dtype)
        if basis is not None and basis.u.shape[0] != self.stage1.dim:
            raise RayifError(f"the sketch basis maps {basis.u.shape[0]} dimensions, stage 1 gives {self.stage1.dim}")

    @property
    def dim(self) -> int:
        return self.stage1.dim if self.basis is None else self.basis.dim

    def _reduce(self, x: Tensor) -> np.ndarray:
        x = x if self._u is None else x @ self._u
        return x.float().cpu().numpy()

    def train(self, batch) -> np.ndarray:
        """``[b, d]`` sketches of the per-example training gradients of ``batch``."""
        return self._reduce(self.stage1.sketch(batch).detach())

    def query(self, s_test: Tensor) -> np.ndarray:
        """``[m, d]`` sketches of ``s_test`` rows ``[m, p]``."""
        return self._reduce(self.stage1.project(s_test))
