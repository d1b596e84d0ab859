"""Per-example gradients and Hessian-vector products on matrices of vectors, with ``torch.func``.

Everything here works on the *flat* vector ``theta`` of the selected parameters (``[p]``), so solvers
and scoring are plain linear algebra on ``[m, p]`` matrices. Batches are whatever the task takes: an
``(inputs, targets)`` pair or a dict / tuple of tensors, examples on the first dimension.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from .curvature import product as curvature_product
from .data import Examples, batch_leaves, map_batch
from .errors import NonFiniteError, RayifError
from .task import Task, model_fingerprint


@contextmanager
def _differentiable_attention():
    """Attention on its math kernels: the fused scaled-dot-product kernels have no double backward (an HVP
    through ``nn.MultiheadAttention`` needs one), and the fused inference path of a frozen
    ``nn.TransformerEncoderLayer`` has no batching rule (per-example gradients would loop over examples)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mha = torch.backends.mha
    fast = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        mha.set_fastpath_enabled(fast)


class _Call:
    """The replica as a callable with the parameters in ``theta``: what ``Task.batch_loss`` receives."""

    def __init__(self, module: torch.nn.Module, params: dict[str, Tensor]):
        self.module, self.params = module, params

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.module, self.params, args, kwargs)


class _Recording(_Call):
    """The replica as :class:`_Call`, remembering what each call returned (the model's outputs)."""

    def __init__(self, module: torch.nn.Module, params: dict[str, Tensor]):
        super().__init__(module, params)
        self.outputs: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = super().__call__(*args, **kwargs)
        self.outputs.append(out)
        return out


class _Given:
    """A stand-in model that returns given outputs: ``batch_loss`` on it is the loss as a function of them."""

    def __init__(self, outputs: Tensor):
        self.outputs = outputs

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.outputs


class Objective:
    """A replica of the task's model in functional form around its trained parameters ``theta``.

    The training objective is ``mean_i L(z_i, theta)`` where each per-example ``L`` is the task's loss plus
    its regulariser; its Hessian is what the inverse-HVP solvers invert.
    """

    def __init__(self, task: Task, device: str | torch.device = "cpu", model: torch.nn.Module | None = None):
        self.task = task
        self.device = torch.device(device)
        self.model = task.build_model(self.device) if model is None else model.to(self.device).eval()
        named = dict(self.model.named_parameters())
        self.names = task.selected_params(self.model)
        self.shapes = [named[n].shape for n in self.names]
        self.numels = [named[n].numel() for n in self.names]
        self.theta = torch.cat([named[n].detach().reshape(-1) for n in self.names])
        self.dtype = self.theta.dtype
        self._fixed = {n: p.detach() for n, p in named.items() if n not in set(self.names)}
        self._fixed.update(dict(self.model.named_buffers()))
        self._product_paths: dict[str, str] = {}  # curvature -> the path its products take (rayif.curvature)

    @property
    def num_params(self) -> int:
        """``p``, the number of selected parameters."""
        return self.theta.numel()

    def fingerprint(self) -> str:
        """sha256 of the replica's weights (see :func:`rayif.task.model_fingerprint`)."""
        return model_fingerprint(self.model)

    def params(self, theta: Tensor) -> dict[str, Tensor]:
        """The selected parameters as a name -> tensor mapping (views into ``theta``)."""
        return {n: t.view(s) for n, s, t in zip(self.names, self.shapes, theta.split(self.numels), strict=True)}

    def _call(self, theta: Tensor) -> _Call:
        return _Call(self.model, {**self._fixed, **self.params(theta)})

    def _penalty(self, theta: Tensor) -> Tensor:
        out = theta.new_zeros(())
        if self.task.weight_decay:
            out = out + 0.5 * self.task.weight_decay * (theta * theta).sum()
        if self.task.regularizer is not None:
            out = out + self.task.regularizer(self.params(theta))
        return out

    def train_losses(self, theta: Tensor, batch: Any) -> Tensor:
        """``[b]`` per-example training losses, regulariser included."""
        return self._per_example(self.task.train_losses, theta, batch) + self._penalty(theta)

    def test_losses(self, theta: Tensor, batch: Any) -> Tensor:
        """``[b]`` per-example test losses (the measurement; no regulariser)."""
        return self._per_example(self.task.test_losses, theta, batch)

    # --- the model / loss split the Gauss-Newton curvature needs ------------------------------------

    def outputs(self, theta: Tensor, batch: Any) -> Tensor:
        """The model's outputs on ``batch`` (``[b, ...]``): what the loss is a function of."""
        with _differentiable_attention():
            if not self.task.dict_batches:
                return self._call(theta)(batch[0])
            rec = _Recording(self.model, {**self._fixed, **self.params(theta)})
            self.task.batch_loss(rec, batch)
        if len(rec.outputs) != 1 or not isinstance(rec.outputs[0], Tensor):
            raise RayifError(
                f"curvature='ggn' splits the loss into model outputs and a loss of those outputs: Task.batch_loss "
                f"must call the model exactly once and get a tensor back (it made {len(rec.outputs)} call(s) "
                f"returning {[type(o).__name__ for o in rec.outputs]}); use curvature='hessian'")
        return rec.outputs[0]

    def output_losses(self, outputs: Tensor, batch: Any) -> Tensor:
        """``[b]`` per-example training losses as a function of the model's ``outputs`` (no regulariser)."""
        if not self.task.dict_batches:
            return self.task.loss(outputs, batch[1])
        return self.task.batch_loss(_Given(outputs), batch)

    def _per_example(self, fn, theta: Tensor, batch: Any) -> Tensor:
        b = batch_leaves(batch)[0][1].shape[0]
        with _differentiable_attention():
            out = fn(self._call(theta), batch)
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
                _require_finite(losses(self.theta, c.batch)[:, None], chunk.ids, f"{name} loss")

    # --- gradients --------------------------------------------------------------------------------

    def train_grads(self, examples: Examples) -> Tensor:
        """``[b, p]`` per-example gradients of the training loss (regulariser included)."""
        return self._grads(self.train_losses, examples, "training")

    def test_grads(self, examples: Examples) -> Tensor:
        """``[b, p]`` per-example gradients of the test loss."""
        return self._grads(self.test_losses, examples, "test")

    def _grads(self, losses, examples: Examples, what: str) -> Tensor:
        ex = examples.to(self.device)

        def one(theta, example):
            return losses(theta, map_batch(lambda v: v.unsqueeze(0), example))[0]

        g = vmap(grad(one), in_dims=(None, 0))(self.theta, ex.batch)
        _require_finite(g, examples.ids, f"{what} loss gradient")
        return g

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
        """``[m, p]``: curvature of the mean training loss over all of ``train``, times each row."""
        out = torch.zeros_like(vectors)
        n = len(train)
        for chunk in train.chunks(chunk_size):
            c = chunk.to(self.device)
            hv = self.product(vectors, c.batch, curvature)
            if not bool(torch.isfinite(hv).all()):
                self.train_grads(chunk)  # names the examples when their gradients are the cause
                _require_finite(hv, None, f"Hessian-vector product on training ids {chunk.ids[0]}..{chunk.ids[-1]}")
            out += hv * (len(chunk) / n)
        return out


def _require_finite(t: Tensor, ids: np.ndarray | None, what: str) -> None:
    bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        if ids is None:
            raise NonFiniteError(f"{what} has NaN or inf values")
        bad_ids = ids[bad.cpu().numpy()]
        shown = ", ".join(str(i) for i in bad_ids[:20]) + (" ..." if len(bad_ids) > 20 else "")
        raise NonFiniteError(f"{what} is NaN or inf for {len(bad_ids)} example(s), ids: {shown}")


def require_finite_vectors(t: Tensor, what: str) -> None:
    """Raise :class:`NonFiniteError` if any row of ``t`` is not finite."""
    _require_finite(t, None, what)
