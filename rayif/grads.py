"""The training objective of one model replica: losses, per-example gradients, curvature products.

Everything here works on the *flat* vector ``theta`` of the selected parameters (``[p]``), so solvers
and scoring are plain linear algebra on ``[m, p]`` matrices. Batches are whatever the task takes: an
``(inputs, targets)`` pair or a dict / tuple of tensors, examples on the first dimension.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import grad

from .curvature import product as curvature_product
from .data import Examples, batch_leaves, map_batch
from .errors import NonFiniteError, RayifError
from .functional import (
    FunctionalModel,
    Given,
    OutputSpec,
    default_key,
    differentiable_kernels,
    fields,
    layer_calls,
    rebuild,
    select,
)
from .per_example import PerExampleGrads
from .task import Task, model_fingerprint

# Vectors per batched product: past about 64 vectors on a 256-row chunk the product's intermediates outgrow
# the caches and each vector costs 2-3x more (benchmarks/hvp.py; the mixture MLP 22 ms per vector per 20k rows
# at 64, 46 at 256; the tokens transformer 10 ms at 64, 36 at 512), so larger blocks are split.
VECTORS_PER_PRODUCT = 64

# A full-data product's chunk grows from chunk_size by doubling, up to _ROWS_GROWTH times, while vectors x
# rows x the model's widest activation per example stays within _PRODUCT_ELEMENTS: a narrow model then pays
# each chunk's fixed cost less often, a wide one keeps chunk_size. The mixture MLP (widest 64; 50 vectors,
# float32, medians of 4 runs): 1024 rows ~5% (Hessian) and 36% (GGN) faster than 256, 2048 slower again
# (out of cache); one vector 3x faster at 16384.
_PRODUCT_ELEMENTS = 2**22
_ROWS_GROWTH = 8


class Objective:
    """A replica of the task's model in functional form around its trained parameters ``theta``.

    The training objective is ``mean_i L(z_i, theta)`` where each per-example ``L`` is the task's loss plus
    its regulariser; its Hessian is what the inverse-HVP solvers invert.
    """

    def __init__(self, task: Task, device: str | torch.device = "cpu", model: torch.nn.Module | None = None):
        self.task = task
        self.device = torch.device(device)
        self.model = task.build_model(self.device) if model is None else model.to(self.device).eval()
        for m in self.model.modules():  # in-place activations save memory in training only; here they defeat
            if isinstance(getattr(m, "inplace", None), bool):  # vmap's batching rules (as_strided_)
                m.inplace = False
        named = dict(self.model.named_parameters())
        self.names = task.selected_params(self.model)
        self.shapes = [named[n].shape for n in self.names]
        self.numels = [named[n].numel() for n in self.names]
        self.theta = torch.cat([named[n].detach().reshape(-1) for n in self.names])
        self.dtype = self.theta.dtype
        selected = set(self.names)
        self.fixed = {n: p.detach() for n, p in named.items() if n not in selected}  # and the buffers:
        self.fixed.update(dict(self.model.named_buffers()))
        self.per_example = PerExampleGrads(self.model, self.names, self.fixed)
        self.product_paths: dict[str, str] = {}  # curvature -> the path its products take (rayif.curvature)
        self.cast_inputs = False  # a lower-precision copy (in_dtype) casts floating inputs to its dtype
        self._copies: dict[torch.dtype, Objective] = {}  # in_dtype's copies
        self._spec: OutputSpec | None = None
        self._penalty_grad: Tensor | None = None
        self._width: int | None = None  # the widest activation per example, once measured (0: unknown)

    @property
    def num_params(self) -> int:
        """``p``, the number of selected parameters."""
        return self.theta.numel()

    def in_dtype(self, dtype: torch.dtype) -> Objective:
        """This replica with its parameters, buffers and floating inputs in ``dtype``, for curvature products
        in lower precision (``CGConfig.mixed_precision``, auto's probe): itself in its own dtype, else a copy
        made once and shared by every caller."""
        import copy

        if dtype == self.dtype:
            return self
        if dtype not in self._copies:
            low = Objective(self.task, self.device, copy.deepcopy(self.model).to(dtype))
            low.cast_inputs = True
            self._copies[dtype] = low
        return self._copies[dtype]

    def fingerprint(self) -> str:
        """sha256 of the replica's weights (see :func:`rayif.task.model_fingerprint`)."""
        return model_fingerprint(self.model)

    def params(self, theta: Tensor) -> dict[str, Tensor]:
        """The selected parameters as a name -> tensor mapping (views into ``theta``)."""
        return {n: t.view(s) for n, s, t in zip(self.names, self.shapes, theta.split(self.numels), strict=True)}

    def call(self, theta: Tensor, record: bool = False) -> FunctionalModel:
        """The model with the selected parameters taken from ``theta``: what ``Task.batch_loss`` receives."""
        return FunctionalModel(self.model, {**self.fixed, **self.params(theta)}, record)

    def penalty(self, theta: Tensor) -> Tensor:
        """The regulariser (weight decay and ``Task.regularizer``) at ``theta``, a scalar."""
        out = theta.new_zeros(())
        if self.task.weight_decay:
            out = out + 0.5 * self.task.weight_decay * (theta * theta).sum()
        if self.task.regularizer is not None:
            out = out + self.task.regularizer(self.params(theta))
        return out

    def penalty_grad(self) -> Tensor:
        """``[p]``: the regulariser's gradient at ``theta``, part of every per-example training gradient."""
        if self._penalty_grad is None:
            self._penalty_grad = grad(self.penalty)(self.theta.detach()).detach()
        return self._penalty_grad

    def train_losses(self, theta: Tensor, batch: Any) -> Tensor:
        """``[b]`` per-example training losses, regulariser included."""
        return self._per_example(self.task.train_losses, theta, batch) + self.penalty(theta)

    def test_losses(self, theta: Tensor, batch: Any) -> Tensor:
        """``[b]`` per-example test losses (the measurement; no regulariser)."""
        return self._per_example(self.task.test_losses, theta, batch)

    # --- the model / loss split the Gauss-Newton curvature needs ------------------------------------

    def _model_output(self, model: FunctionalModel, batch: Any) -> Any:
        """What the model returns on ``batch`` (a tensor, dict, tuple or ``ModelOutput``)."""
        if not self.task.dict_batches:
            return model(batch[0])
        rec = FunctionalModel(model.module, model.params, record=True)
        self.task.batch_loss(rec, batch)
        if len(rec.outputs) != 1:
            raise RayifError(
                f"curvature='ggn' and the Kronecker factors split the loss into model outputs and a loss of those "
                f"outputs: Task.batch_loss must call the model exactly once (it made {len(rec.outputs)} calls); "
                "use curvature='hessian' with preconditioner=None")
        return rec.outputs[0]

    def _loss_of_output(self, output: Any, batch: Any) -> Tensor:
        if not self.task.dict_batches:
            return self.task.loss(output, batch[1])
        return self.task.batch_loss(Given(output), batch)

    def output_spec(self, batch: Any) -> OutputSpec:
        """Where the loss's input sits in the model's output (``Task.output_key``, else the default rule of
        :func:`rayif.functional.default_key`), checked once on two rows of ``batch``: the loss must read
        no other floating-point output."""
        if self._spec is None:
            rows = map_batch(lambda t: t[:2], batch)
            with torch.enable_grad(), differentiable_kernels():
                out = self._model_output(self.call(self.theta.detach()), rows)
                key = default_key(out) if self.task.output_key is None else self.task.output_key
                main = select(out, key)
                others = {k: v.detach().requires_grad_(True) for k, v in fields(out)
                          if k != key and isinstance(v, Tensor) and v.is_floating_point()}
                if others:
                    losses = self._loss_of_output(rebuild(out, {key: main.detach(), **others}, True), rows)
                    got = (torch.autograd.grad(losses.sum(), list(others.values()), allow_unused=True)
                           if losses.requires_grad else [None] * len(others))
                    read = [k for k, g in zip(others, got, strict=True) if g is not None]
                    if read:
                        raise RayifError(
                            f"the loss reads the model's outputs {read} besides {key!r}: curvature='ggn' and the "
                            "Kronecker factors need the loss as a function of one output tensor; set "
                            "Task.output_key, or use curvature='hessian' with preconditioner=None")
            self._spec = OutputSpec.of(out, key)
        return self._spec

    def outputs(self, theta: Tensor, batch: Any) -> Tensor:
        """The output tensor the loss reads on ``batch`` (``[b, ...]``, see :meth:`output_spec`)."""
        return self.outputs_of(self.call(theta), batch)

    def outputs_of(self, model: FunctionalModel, batch: Any) -> Tensor:
        """As :meth:`outputs`, for the model with any parameters (a per-example gradient's)."""
        spec = self.output_spec(batch)
        with differentiable_kernels():
            return select(self._model_output(model, batch), spec.key)

    def output_losses(self, outputs: Tensor, batch: Any) -> Tensor:
        """``[b]`` per-example training losses as a function of the model's ``outputs`` (no regulariser)."""
        return self._loss_of_output(self.output_spec(batch).wrap(outputs), batch)

    def _per_example(self, fn, theta: Tensor, batch: Any) -> Tensor:
        b = batch_leaves(batch)[0][1].shape[0]
        with differentiable_kernels():
            out = fn(self.call(theta), batch)
        if not isinstance(out, Tensor) or out.dim() != 1 or out.shape[0] != b:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise RayifError(f"the loss must return one value per example, shape [{b}], got {got}; "
                             "use reduction='none'")
        return out

    # --- validation -------------------------------------------------------------------------------

    def check(self, examples: Examples, name: str, chunk_size: int = 1024, *, head: bool = True) -> None:
        """Fail early, with a clear message, on data the model cannot take or whose loss is not finite.

        One forward pass over ``examples``: a NaN here would otherwise surface later as a NaN Hessian or a
        "diverged" LiSSA, far from its cause. ``head``: also try the first two rows alone, so a model that
        rejects the data says so with the per-example shapes.
        """
        if not self.task.dict_batches:
            x = examples.inputs
            if x.is_floating_point() and x.dtype != self.dtype:
                raise RayifError(
                    f"{name} inputs are {x.dtype} but the model's parameters are {self.dtype}; "
                    f"cast the inputs (e.g. x.astype(np.{str(self.dtype).split('.')[-1]})) or the model"
                )
        if head:
            first = examples.take(slice(0, 2)).to(self.device)
            try:
                with torch.no_grad():
                    self.train_losses(self.theta, first.batch)
            except RayifError:
                raise
            except Exception as e:  # the model's own error, reworded with the shapes that caused it
                raise RayifError(f"the model or loss rejects {name}: {first.describe()} per example: "
                                 f"{type(e).__name__}: {e}") from e
        losses = self.train_losses if name.startswith("train") else self.test_losses
        with torch.no_grad():
            for chunk in examples.chunks(chunk_size):
                c = chunk.to(self.device)
                require_finite(losses(self.theta, c.batch)[:, None], chunk.ids, f"{name} loss")

    # --- gradients --------------------------------------------------------------------------------

    def train_grads(self, examples: Examples) -> Tensor:
        """``[b, p]`` per-example gradients of the training loss (regulariser included)."""
        return self.per_example_grads(self.task.train_losses, examples, "training loss") + self.penalty_grad()

    def test_grads(self, examples: Examples) -> Tensor:
        """``[b, p]`` per-example gradients of the test loss."""
        return self.per_example_grads(self.task.test_losses, examples, "test loss")

    def per_example_grads(self, fn, examples: Examples, what: str) -> Tensor:
        """``[b, p]`` per-example gradients of ``fn(model, batch) -> [b]`` (no regulariser), by the path
        :mod:`rayif.per_example` chose for this model (on the training loss)."""
        ex = examples.to(self.device)
        self.grad_path(ex.batch)
        g = self.per_example.flat(fn, ex.batch)
        require_finite(g, examples.ids, f"{what} gradient")
        return g

    def grad_path(self, batch: Any) -> str:
        """The per-example gradient path (``"hooks"``, ``"vmap"`` or ``"loop"``), chosen on ``batch``'s first
        rows the first time."""
        return self.per_example.path or self.per_example.choose(self.task.train_losses, batch)

    def product(self, vectors: Tensor, batch: Any, curvature: str = "hessian") -> Tensor:
        """``[m, p]``: the curvature (``"hessian"`` or ``"ggn"``) of the mean training loss on ``batch``
        times each row of ``vectors``, batched over the rows (see :mod:`rayif.curvature`)."""
        return curvature_product(self, vectors, batch, curvature)

    def gvp(self, vectors: Tensor, batch: Any) -> Tensor:
        """``[m, p]``: the Gauss-Newton matrix ``mean_i J_i^T H_i J_i`` on ``batch`` (``J_i`` the Jacobian of
        example i's outputs, ``H_i`` the Hessian of its loss in them) plus the regulariser's Hessian, times
        each row of ``vectors``. Positive semi-definite whenever the loss is convex in the outputs."""
        return curvature_product(self, vectors, batch, "ggn")

    def hvp(self, vectors: Tensor, batch: Any) -> Tensor:
        """``[m, p]``: the Hessian of the mean training loss on ``batch``, times each row of ``vectors``."""
        return curvature_product(self, vectors, batch, "hessian")

    def full_hvp(self, vectors: Tensor, train: Examples, chunk_size: int, curvature: str = "hessian") -> Tensor:
        """``[m, p]``: curvature of the mean training loss over all of ``train``, times each row, on chunks
        of :meth:`product_rows` rows (a function of ``m`` and the model alone: the same on every worker)."""
        out = torch.zeros_like(vectors)
        n = len(train)
        rows = self.product_rows(min(len(vectors), VECTORS_PER_PRODUCT), chunk_size, train)
        for chunk in train.chunks(rows):
            batch = self._own_dtype(chunk.to(self.device).batch)
            hv = torch.cat([self.product(vectors[i : i + VECTORS_PER_PRODUCT], batch, curvature)
                            for i in range(0, len(vectors), VECTORS_PER_PRODUCT)])
            if not bool(torch.isfinite(hv).all()):
                self.train_grads(chunk)  # names the examples when their gradients are the cause
                require_finite(hv, None, f"Hessian-vector product on training ids {chunk.ids[0]}..{chunk.ids[-1]}")
            out += hv * (len(chunk) / n)
        return out

    def _own_dtype(self, batch: Any) -> Any:
        """``batch`` with floating inputs in this replica's dtype where it is a lower-precision copy."""
        if not self.cast_inputs:
            return batch
        return map_batch(lambda t: t.to(self.dtype) if t.is_floating_point() else t, batch)

    def product_rows(self, vectors: int, chunk_size: int, train: Examples) -> int:
        """Rows per chunk of a full-data product for ``vectors`` vectors at once: ``chunk_size``, doubled
        while ``vectors * rows * width`` stays within ``_PRODUCT_ELEMENTS`` (``width``: :meth:`widest`)."""
        width = self.widest(train)
        rows = chunk_size
        while width and rows * 2 <= _ROWS_GROWTH * chunk_size and vectors * rows * 2 * width <= _PRODUCT_ELEMENTS:
            rows *= 2
        return rows

    def widest(self, train: Examples) -> int:
        """The most values per example of any module's output or input leaf, on ``train``'s first two rows;
        0 (unknown) when a module that holds parameters also has children, whose own work no hook sees
        (an attention's scores), or when no training rows are at hand."""
        if self._width is None:
            if len(train) == 0:
                return 0
            if any(any(True for _ in m.parameters(recurse=False)) and any(True for _ in m.children())
                   for m in self.model.modules()):
                self._width = 0
                return 0
            first = train.take(slice(0, 2)).to(self.device)
            rows = len(first)
            batch = self._own_dtype(first.batch)
            widths = [_leaf_width(batch, rows)]

            def keep(_i, _x, out, _calls):
                widths.append(_leaf_width(out, rows))

            with layer_calls(list(self.model.modules()), keep), torch.no_grad():
                self.train_losses(self.theta, batch)
            self._width = max(widths)
        return self._width


def _leaf_width(value: Any, rows: int) -> int:
    """The most values per example in any tensor of ``value`` (a tensor, or a dict / tuple / list of them)."""
    if isinstance(value, Tensor):
        return value.numel() // max(1, rows) if value.dim() else 0
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return max((_leaf_width(v, rows) for v in value), default=0)
    return 0


def require_finite(t: Tensor, ids: np.ndarray | None, what: str) -> None:
    bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        if ids is None:
            raise NonFiniteError(f"{what} has NaN or inf values")
        bad_ids = ids[bad.cpu().numpy()]
        shown = ", ".join(str(i) for i in bad_ids[:20]) + (" ..." if len(bad_ids) > 20 else "")
        raise NonFiniteError(f"{what} is NaN or inf for {len(bad_ids)} example(s), ids: {shown}")


def require_finite_vectors(t: Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` if any row of ``t`` is not finite."""
    require_finite(t, None, what)
