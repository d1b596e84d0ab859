"""Per-example gradients of any model, by the cheapest of three paths that is right for it.

* ``hooks``: one forward and one backward of the *summed* loss over the whole batch. For independent examples
  the gradient of the sum in a layer's output is, row by row, each example's own output gradient ``delta``;
  forward hooks keep each layer's input ``a``, and a layer's per-example parameter gradient follows from the
  two: ``delta a^T`` summed over positions for ``nn.Linear`` (and Hugging Face's ``Conv1D``), the same on
  unfolded patches for ``nn.Conv1d`` / ``nn.Conv2d``, an index-add of ``delta`` for ``nn.Embedding``, and
  ``delta`` times the normalised input for ``nn.LayerNorm``, ``nn.RMSNorm`` and eval-mode batch norms. The
  model is never traced per example, so data-dependent Python in its forward (Hugging Face's attention-mask
  construction) and operations without batching rules (``nn.LSTM``'s CPU kernel) cost nothing extra.
* ``vmap``: ``torch.func.vmap`` of ``grad`` over the examples, for selected parameters in other layers.
* ``loop``: one backward per example; the last resort, for models ``vmap`` cannot trace.

The path is chosen once per model replica, on the first two training rows: ``hooks`` when every
selected parameter sits in a layer it knows and its gradients match the loop's (a model that mixes examples
inside a layer, or uses a weight outside its layer, fails that check), else ``vmap`` when it runs, else
``loop``. The choice is logged once per model class and recorded in the results (``rayif.grad_path``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from .data import map_batch
from .errors import RayifError
from .functional import FunctionalModel, differentiable_kernels, layer_calls

log = logging.getLogger("rayif")

PATHS = ("hooks", "vmap", "loop")

ScalarFn = Callable[[FunctionalModel, Any], Tensor]
"""``fn(model, batch) -> [b]``: one scalar per example (a loss), ``model`` a :class:`FunctionalModel`."""

_logged: set[tuple] = set()  # (model class, path) already logged in this process
_NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm")
                                                                           else ())


def num_rows(batch: Any) -> int:
    """Examples in a (possibly nested) batch: the first dimension of its first tensor."""
    while not isinstance(batch, Tensor):
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return batch.shape[0]


@dataclass(eq=False)
class _Layer:
    """A layer the hooks path covers: its kind and which selected parameter each attribute holds."""

    module: nn.Module
    kind: str
    attrs: dict[str, str]  # "weight" / "bias" -> selected parameter name


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Linear):
        return "linear"
    if type(m).__name__ == "Conv1D" and hasattr(m, "nf") and getattr(m, "weight", None) is not None:
        return "hf_conv1d"  # transformers' GPT-2 layer: y = x W + b with W [in, out]
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        padding_ok = not isinstance(m.padding, str) or m.padding == "valid"
        return "conv" if m.groups == 1 and m.padding_mode == "zeros" and padding_ok else None
    if isinstance(m, nn.Embedding):
        return "embedding" if m.max_norm is None and not m.scale_grad_by_freq and not m.sparse else None
    if isinstance(m, _NORMS):
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None):
            return None  # batch statistics mix the examples
        return "norm"
    return None


def _plan(model: nn.Module, names: list[str]) -> tuple[list[_Layer], set[str]]:
    canonical = {id(p): n for n, p in model.named_parameters()}
    selected, layers = set(names), []
    for m in model.modules():
        kind = _kind(m)
        if kind is None:
            continue
        attrs = {a: canonical[id(p)] for a, p in m._parameters.items()
                 if a in ("weight", "bias") and p is not None and canonical.get(id(p)) in selected}
        if attrs:
            layers.append(_Layer(m, kind, attrs))
    return layers, {n for layer in layers for n in layer.attrs.values()}


class _NotPerExample(RuntimeError):
    """A layer's input does not have the examples on its first dimension."""


def _contributions(layer: _Layer, x: Tensor, g: Tensor, b: int) -> dict[str, Tensor]:
    """Per-example gradients ``[b, *shape]`` of a layer's parameters from one call: input ``x``, output
    gradient ``g`` (of the summed loss)."""
    m, kind = layer.module, layer.kind
    if kind == "embedding" and x.shape[0] == 1 < b:  # position ids shared by the batch: each example's own
        x = x.expand(b, *x.shape[1:])
    if x.shape[0] != b or g.shape[0] != b:
        raise _NotPerExample(f"{type(m).__name__} got an input of shape {tuple(x.shape)} for {b} examples")
    if kind in ("linear", "hf_conv1d"):
        d_in, d_out = (m.in_features, m.out_features) if kind == "linear" else (m.weight.shape[0], m.nf)
        a, d = x.reshape(b, -1, d_in), g.reshape(b, -1, d_out)
        w = torch.einsum("bto,bti->boi", d, a) if kind == "linear" else torch.einsum("bti,bto->bio", a, d)
        return {"weight": w, "bias": d.sum(1)}
    if kind == "conv":
        two = isinstance(m, nn.Conv2d)
        pad = 0 if isinstance(m.padding, str) else m.padding
        if two:
            patches = F.unfold(x, m.kernel_size, m.dilation, pad, m.stride)
        else:
            patches = F.unfold(x.unsqueeze(2), (1, m.kernel_size[0]), (1, m.dilation[0]), (0, pad[0]),
                               (1, m.stride[0]))
        d = g.reshape(b, m.out_channels, -1)
        w = torch.einsum("bop,bkp->bok", d, patches).reshape(b, *m.weight.shape)
        return {"weight": w, "bias": d.sum(2)}
    if kind == "embedding":
        idx, dim = x.reshape(b, -1), m.embedding_dim
        d = g.reshape(b, -1, dim)
        w = d.new_zeros(b, m.num_embeddings, dim).scatter_add_(1, idx.unsqueeze(-1).expand(-1, -1, dim), d)
        if m.padding_idx is not None:
            w[:, m.padding_idx] = 0  # the layer gives its padding row no gradient
        return {"weight": w}
    # norms: y = xhat * weight + bias, per feature
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        view = (1, -1) + (1,) * (x.dim() - 2)
        xhat = (x - m.running_mean.view(view)) / torch.sqrt(m.running_var.view(view) + m.eps)
        return {"weight": (g * xhat).reshape(b, x.shape[1], -1).sum(2), "bias": g.reshape(b, x.shape[1], -1).sum(2)}
    shape = tuple(m.normalized_shape)
    dims = tuple(range(-len(shape), 0))
    if isinstance(m, nn.LayerNorm):
        var, mean = torch.var_mean(x, dims, unbiased=False, keepdim=True)
        xhat = (x - mean) / torch.sqrt(var + m.eps)
    else:  # RMSNorm
        eps = m.eps if m.eps is not None else torch.finfo(x.dtype).eps
        xhat = x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
    return {"weight": (g * xhat).reshape(b, -1, *shape).sum(1), "bias": g.reshape(b, -1, *shape).sum(1)}


class PerExampleGrads:
    """Per-example gradients of selected parameters of one model replica.

    Args:
        model: the module (in eval mode).
        names: the selected parameters, in the order results are flattened.
        fixed: every other parameter and buffer, by name (passed to ``functional_call``).
    """

    def __init__(self, model: nn.Module, names: list[str], fixed: dict[str, Tensor]):
        self.model, self.names, self.fixed = model, list(names), fixed
        named = dict(model.named_parameters())
        self.values = {n: named[n].detach() for n in self.names}
        self.layers, self.covered = _plan(model, self.names)
        self.path: str | None = None
        self.why = ""

    def grads(self, fn: ScalarFn, batch: Any, names: list[str] | None = None) -> list[Tensor]:
        """``[b, *shape]`` per parameter in ``names`` (default: all selected) of ``fn``'s per-example values."""
        names = self.names if names is None else names
        if self.path is None:
            self.choose(fn, batch)
        return self.run(self.path, fn, batch, names)

    def flat(self, fn: ScalarFn, batch: Any, names: list[str] | None = None) -> Tensor:
        """``[b, p']``: :meth:`grads` flattened and concatenated in ``names`` order."""
        b = num_rows(batch)
        return torch.cat([g.reshape(b, -1) for g in self.grads(fn, batch, names)], dim=1)

    def run(self, path: str, fn: ScalarFn, batch: Any, names: list[str]) -> list[Tensor]:
        """Gradients by ``path`` (one of :data:`PATHS`), whether or not it was chosen."""
        if path not in PATHS:
            raise RayifError(f"the per-example gradient path must be one of {PATHS}, got {path!r}")
        with torch.enable_grad(), differentiable_kernels():
            return getattr(self, f"_{path}")(fn, batch, names)

    # --- choosing ------------------------------------------------------------------------------------

    def choose(self, fn: ScalarFn, batch: Any) -> str:
        """Pick the path on the first two rows of ``batch``, once per replica (a model class may take
        different paths with other settings: a sequence-first layout defeats the hooks), logged once per
        model class and path."""
        self.path, self.why = self._try(fn, map_batch(lambda t: t[:2], batch))
        key = (type(self.model).__module__, type(self.model).__qualname__, self.path)
        if key not in _logged:
            _logged.add(key)
            (log.warning if self.path == "loop" else log.info)(
                "rayif: per-example gradients of %s by %s (%s)", type(self.model).__name__, self.path, self.why)
        return self.path

    def _try(self, fn: ScalarFn, rows: Any) -> tuple[str, str]:
        want = self.run("loop", fn, rows, self.names)
        uncovered = [n for n in self.names if n not in self.covered]
        if uncovered:
            not_hooks = (f"{len(uncovered)} selected parameter(s) outside the layers the hooks path knows, e.g. "
                         f"{uncovered[0]}")
        else:
            not_hooks = self._agrees("hooks", fn, rows, want)
            if not_hooks is None:
                return "hooks", f"every selected parameter is in a {_layer_kinds(self.layers)} layer"
        not_vmap = self._agrees("vmap", fn, rows, want)
        if not_vmap is None:
            return "vmap", f"hooks: {not_hooks}"
        return "loop", f"hooks: {not_hooks}; vmap: {not_vmap}"

    def _agrees(self, path: str, fn: ScalarFn, rows: Any, want: list[Tensor]) -> str | None:
        """``None`` when ``path`` reproduces the loop's gradients on ``rows``, else why not."""
        try:
            got = self.run(path, fn, rows, self.names)
        except Exception as e:  # noqa: BLE001 - any failure means: not this path
            return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        tol = 1e-9 if want[0].dtype == torch.float64 else 1e-4
        scale = max(max(float(w.abs().max()) for w in want), 1e-30)  # a gradient that is 0 up to rounding: 0
        for n, g, w in zip(self.names, got, want, strict=True):
            if float((g - w).abs().max()) > tol * scale:
                return f"its gradient of {n} differs from the per-example loop's (the model mixes examples?)"
        return None

    # --- the paths -----------------------------------------------------------------------------------

    def _params(self, names: list[str], requires_grad: bool) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        wanted = {n: self.values[n].detach().requires_grad_(requires_grad) for n in names}
        fixed = {**self.fixed, **{n: v for n, v in self.values.items() if n not in wanted}}
        return wanted, fixed

    def _loop(self, fn: ScalarFn, batch: Any, names: list[str]) -> list[Tensor]:
        rows = []
        for i in range(num_rows(batch)):
            wanted, fixed = self._params(names, True)
            one = map_batch(lambda t, i=i: t[i : i + 1], batch)
            loss = _checked(fn(FunctionalModel(self.model, {**fixed, **wanted}), one), 1)
            got = torch.autograd.grad(loss.sum(), list(wanted.values()), allow_unused=True)
            rows.append([torch.zeros_like(v) if g is None else g for v, g in zip(wanted.values(), got, strict=True)])
        return [torch.stack(col) for col in zip(*rows, strict=True)]

    def _vmap(self, fn: ScalarFn, batch: Any, names: list[str]) -> list[Tensor]:
        wanted, fixed = self._params(names, False)

        def one(params, example):
            out = fn(FunctionalModel(self.model, {**fixed, **params}), map_batch(lambda t: t.unsqueeze(0), example))
            return _checked(out, 1)[0]

        g = vmap(grad(one), in_dims=(None, 0))(wanted, batch)
        return [g[n] for n in names]

    def _hooks(self, fn: ScalarFn, batch: Any, names: list[str]) -> list[Tensor]:
        b, want = num_rows(batch), set(names)
        if not want <= self.covered:
            raise RayifError(f"the hooks path covers no layer holding {sorted(want - self.covered)[:3]}")
        layers = [layer for layer in self.layers if want & set(layer.attrs.values())]
        wanted, fixed = self._params(names, True)

        def keep(i, x, out, mine):
            if not isinstance(out, Tensor):
                return None
            if out.shape[0] == 1 < b and layers[i].kind == "embedding":
                # position ids shared by the batch: widen the lookup, so each example has its own output
                # (and output gradient); the sum it is broadcast into is unchanged
                out = out.expand(b, *out.shape[1:]) + 0
            mine.append((x.detach(), out))
            return out.clone()  # the model may change its copy in place (relu_, +=); the kept one stays

        with layer_calls([layer.module for layer in layers], keep) as calls:
            losses = _checked(fn(FunctionalModel(self.model, {**fixed, **wanted}), batch), b)
        outs = [(i, x, o) for i, c in enumerate(calls) for x, o in c if isinstance(o, Tensor) and o.requires_grad]
        result = {n: wanted[n].new_zeros(b, *wanted[n].shape) for n in names}
        if outs:
            douts = torch.autograd.grad(losses.sum(), [o for _, _, o in outs], allow_unused=True)
            for (i, x, _), d in zip(outs, douts, strict=True):
                if d is None:
                    continue
                for attr, g in _contributions(layers[i], x, d, b).items():
                    n = layers[i].attrs.get(attr)
                    if n in want:
                        result[n] += g.reshape(result[n].shape)
        return [result[n] for n in names]


def _checked(out: Any, b: int) -> Tensor:
    if not isinstance(out, Tensor) or out.dim() != 1 or out.shape[0] != b:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise RayifError(f"the loss must return one value per example, shape [{b}], got {got}; use reduction='none'")
    return out


def _layer_kinds(layers: list[_Layer]) -> str:
    return "/".join(sorted({type(layer.module).__name__ for layer in layers}))
