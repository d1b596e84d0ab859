"""Curvature-vector products for many vectors at once: ``[m, p] -> [m, p]``, Hessian or Gauss-Newton.

Every solver's cost is these products, and one product for ``m`` vectors costs far less than ``m`` products
when every operation in it runs once on a batch of ``m``. Two paths compute them:

* **batched** (the default): ``torch.func`` transforms with ``vmap`` over the vectors. Hessian: reverse over
  reverse (``vjp`` of ``grad``), whose second backward is the only part ``vmap`` sees. GGN: forward mode for
  ``J v``, the loss's Hessian in the outputs, reverse mode for ``J^T u``. ``torch.func`` has batching rules for
  the layers users have (linear, convolutions, embeddings, norms, attention, the common activations and
  losses), so each runs once per product, whatever ``m``.
* **autograd**: ``torch.autograd.grad`` with ``is_grads_batched``, what rayif 0.3 ran. Its older ``vmap``
  has no batching rule for most activation and loss backwards (``tanh_backward``, log-softmax's, a
  convolution's double backward, max-pooling's backward), which then run once per vector: at 256 vectors on
  64 rows it is 1.5x slower on the digits MLP and 3x on the digits CNN (float32, ``benchmarks/hvp.py``). It
  runs Hessian products below ``BATCHED_FROM`` vectors, where it is as fast, and for a model ``torch.func``
  cannot take (an ``autograd.Function`` without a forward-mode rule under the GGN); the log says so once.

Operations without a batching rule still give the right product: ``vmap`` runs them once per vector. The
first batched product of a replica checks for one (:func:`unbatched_op`) and logs once its name and the
layers it likely belongs to.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

from .data import map_batch
from .errors import RayifError

log = logging.getLogger("rayif.curvature")


class Objective(Protocol):
    """What the products need of a :class:`rayif.grads.Objective` (which sits above this module)."""

    theta: Tensor
    model: torch.nn.Module
    task: Any
    product_paths: dict[str, str]

    def train_losses(self, theta: Tensor, batch: Any) -> Tensor: ...
    def outputs(self, theta: Tensor, batch: Any) -> Tensor: ...
    def output_spec(self, batch: Any) -> Any: ...
    def output_losses(self, outputs: Tensor, batch: Any) -> Tensor: ...
    def params(self, theta: Tensor) -> dict[str, Tensor]: ...

PATHS = ("batched", "autograd")

# Below this many vectors the autograd Hessian path is as fast or faster: torch.func's set-up costs about as
# much as a few per-vector loops (benchmarks/hvp.py: 4 vectors, 0.7x on the digits MLP, 1.3x on the CNN; 64
# vectors, 1.0-3.3x). The rule depends on m alone, so a unit takes the same path on any worker. GGN products
# stay batched at any m: their autograd path is a per-vector fallback, not a faster one.
BATCHED_FROM = 8

_reported: set[tuple] = set()


def product(obj: Objective, vectors: Tensor, batch: Any, curvature: str = "hessian", path: str | None = None
            ) -> Tensor:
    """``[m, p]``: the curvature (``"hessian"`` or ``"ggn"``) of the mean training loss on ``batch`` times each
    row of ``vectors``. ``path``: ``"batched"`` or ``"autograd"`` to force one (benchmarks, tests); by default
    the batched path (for the Hessian from ``BATCHED_FROM`` vectors on), else (or for a model it cannot run)
    autograd."""
    if curvature not in ("hessian", "ggn"):
        raise RayifError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    fns = _PATHS[curvature]
    if curvature == "ggn":
        obj.output_spec(batch)  # checked outside the transforms, once: which output the loss reads
    if path is not None:
        return fns[PATHS.index(path)](obj, vectors, batch)
    state = obj.product_paths
    few = curvature == "hessian" and vectors.shape[0] < BATCHED_FROM
    if state.get(curvature) == "autograd" or few:
        return fns[1](obj, vectors, batch)
    if curvature not in state:
        try:
            out = fns[0](obj, vectors, batch)
        except RayifError:
            raise
        except Exception as e:  # the model is not torch.func-compatible: say so once, use autograd from now on
            _report(obj, curvature, f"the batched path cannot run this model ({type(e).__name__}: {e}); "
                    "products run on torch.autograd, slower for many vectors")
            state[curvature] = "autograd"
            return fns[1](obj, vectors, batch)
        state[curvature] = "batched"
        _check_batching(obj, batch, curvature)
        return out
    return fns[0](obj, vectors, batch)


# --- Hessian --------------------------------------------------------------------------------------------

def _hvp_batched(obj: Objective, vectors: Tensor, batch: Any) -> Tensor:
    theta = obj.theta.detach()
    with torch.enable_grad():
        _, pull = vjp(grad(lambda th: obj.train_losses(th, batch).mean()), theta)
        (hv,) = vmap(pull)(vectors)
    return hv.detach()


def _hvp_autograd(obj: Objective, vectors: Tensor, batch: Any) -> Tensor:
    with torch.enable_grad():
        theta = obj.theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(obj.train_losses(theta, batch).mean(), theta, create_graph=True)
        if not g.requires_grad:  # the loss is linear in theta: no curvature
            return torch.zeros_like(vectors)
        one = vectors.shape[0] == 1
        (hv,) = torch.autograd.grad(g, theta, grad_outputs=vectors[0] if one else vectors,
                                    is_grads_batched=not one, allow_unused=True)
    if hv is None:
        return torch.zeros_like(vectors)
    return hv.detach().reshape(vectors.shape)


# --- Gauss-Newton ---------------------------------------------------------------------------------------

def _gvp_batched(obj: Objective, vectors: Tensor, batch: Any) -> Tensor:
    theta = obj.theta.detach()
    with torch.enable_grad():
        def out_fn(th: Tensor) -> Tensor:
            return obj.outputs(th, batch)

        def loss_grad(o: Tensor) -> Tensor:
            return grad(lambda oo: obj.output_losses(oo, batch).sum())(o)

        out, pull = vjp(out_fn, theta)
        jv = vmap(lambda v: jvp(out_fn, (theta,), (v,))[1])(vectors)
        hjv = vmap(lambda u: jvp(loss_grad, (out.detach(),), (u,))[1])(jv)
        (g,) = vmap(pull)(hjv / out.shape[0])
        g = g + _penalty_product(obj, theta, vectors)
    return g.detach()


def _gvp_autograd(obj: Objective, vectors: Tensor, batch: Any) -> Tensor:
    """The GGN product from reverse mode alone: ``J v`` as the derivative of ``u -> J^T u`` (linear in ``u``)
    in ``u``, for models without forward-mode rules."""
    with torch.enable_grad():
        theta = obj.theta.detach().requires_grad_(True)
        out = obj.outputs(theta, batch)
        u = torch.zeros_like(out, requires_grad=True)
        (jtu,) = torch.autograd.grad(out, theta, grad_outputs=u, create_graph=True)
        jv = torch.stack([torch.autograd.grad(jtu, u, grad_outputs=v, retain_graph=True)[0] for v in vectors])
        o = out.detach().requires_grad_(True)
        (lg,) = torch.autograd.grad(obj.output_losses(o, batch).sum(), o, create_graph=True)
        hjv = torch.stack([torch.autograd.grad(lg, o, grad_outputs=w, retain_graph=True)[0] for w in jv])
        g = torch.stack([torch.autograd.grad(out, theta, grad_outputs=w / out.shape[0], retain_graph=True)[0]
                         for w in hjv])
        g = g + _penalty_product(obj, theta.detach(), vectors)
    return g.detach()


def _penalty_product(obj: Objective, theta: Tensor, vectors: Tensor) -> Tensor:
    out = obj.task.weight_decay * vectors
    if obj.task.regularizer is not None:
        reg = grad(lambda th: obj.task.regularizer(obj.params(th)))
        out = out + vmap(lambda v: jvp(reg, (theta,), (v,))[1])(vectors)
    return out


_PATHS = {"hessian": (_hvp_batched, _hvp_autograd), "ggn": (_gvp_batched, _gvp_autograd)}


# --- operations that run once per vector ------------------------------------------------------------------

_FALLBACK = re.compile(r"(\S+::\S+) hit the vmap fallback")


def unbatched_op(obj: Objective, batch: Any, curvature: str = "hessian") -> str | None:
    """The first operation of a batched product that has no batching rule (``vmap`` would run it once per
    vector), or None when every operation is batched. Runs the product on 2 rows and 2 vectors with vmap's
    per-vector fallback switched off, which makes such an operation raise with its name."""
    rows = map_batch(lambda t: t[:2], batch)
    v = obj.theta.detach()[None].expand(2, -1).clone()
    functorch = torch._C._functorch
    was = functorch._is_vmap_fallback_enabled()
    functorch._set_vmap_fallback_enabled(False)
    try:
        _PATHS[curvature][0](obj, v, rows)
    except RuntimeError as e:
        hit = _FALLBACK.search(str(e))
        if hit is None:
            raise
        return hit.group(1)
    finally:
        functorch._set_vmap_fallback_enabled(was)
    return None


def _check_batching(obj: Objective, batch: Any, curvature: str) -> None:
    try:
        op = unbatched_op(obj, batch, curvature)
    except Exception as e:  # the check must never break a product that worked
        log.debug("could not check the product's batching: %s", e)
        return
    if op is not None:
        layers = _layers_of(obj.model, op)
        where = f" (layers: {', '.join(layers)})" if layers else " (in the model's forward or its loss)"
        _report(obj, curvature, f"{op} has no batching rule and runs once per vector{where}; the product is "
                "right but slower for many vectors")


def _layers_of(model: torch.nn.Module, op: str) -> list[str]:
    """Leaf modules whose class name appears in the operation's (``_upsample_nearest2d`` -> ``Upsample``)."""
    stem = op.split("::")[-1].strip("_").replace("_", "").lower()
    found = []
    for name, module in model.named_modules():
        cls = type(module).__name__
        if next(module.children(), None) is None and cls.lower() in stem:
            found.append(f"{name or '<model>'} ({cls})")
    return found[:10]


def _report(obj: Objective, curvature: str, what: str) -> None:
    key = (type(obj.model).__qualname__, curvature, what)
    if key not in _reported:
        _reported.add(key)
        log.warning("curvature=%r products for %s: %s", curvature, type(obj.model).__name__, what)
