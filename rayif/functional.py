"""The model as a function of its parameters, and the one output tensor its loss is a function of.

Models return what their library returns: a tensor, a dict, a tuple, a Hugging Face ``ModelOutput``. The
Gauss-Newton curvature and the Kronecker factors split the loss into ``model -> outputs -> loss``, so they
need the single tensor the loss reads (:class:`OutputSpec`); the Hessian and the gradients never do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .errors import RayifError


@contextmanager
def differentiable_kernels():
    """Attention on its math kernels: the fused scaled-dot-product kernels have no double backward and no
    forward-mode rule (curvature products through ``nn.MultiheadAttention`` or a Hugging Face attention need
    them), and the fused inference path of a frozen ``nn.TransformerEncoderLayer`` has no batching rule."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    mha = torch.backends.mha
    fast = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        mha.set_fastpath_enabled(fast)


class FunctionalModel:
    """A module called with the given parameters and buffers in place of its own (``functional_call``): what
    ``Task.batch_loss`` receives as ``model``. ``outputs`` remembers what each call returned when ``record``."""

    def __init__(self, module: torch.nn.Module, params: dict[str, Tensor], record: bool = False):
        self.module, self.params = module, params
        self.outputs: list[Any] | None = [] if record else None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = functional_call(self.module, self.params, args, kwargs)
        if self.outputs is not None:
            self.outputs.append(out)
        return out


class Given:
    """A stand-in model that returns given outputs: a loss run on it is a function of those outputs."""

    def __init__(self, outputs: Any):
        self.outputs = outputs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.outputs


# --- the output tensor the loss reads ---------------------------------------------------------------------

def fields(out: Any) -> list[tuple[Any, Any]]:
    """``(key, value)`` of a model output's top level: mapping keys (a ``ModelOutput`` is one) or positions."""
    if isinstance(out, Mapping):
        return list(out.items())
    if isinstance(out, (tuple, list)):
        return list(enumerate(out))
    return []


def default_key(out: Any) -> Any:
    """The rule for ``Task.output_key=None``: a tensor is itself (``None``); else ``"logits"`` when the output
    has it (Hugging Face models, dicts), else the first floating-point tensor of a dict or tuple."""
    if isinstance(out, Tensor):
        return None
    top = fields(out)
    if any(k == "logits" and isinstance(v, Tensor) for k, v in top):
        return "logits"
    for k, v in top:
        if isinstance(v, Tensor) and v.is_floating_point():
            return k
    raise RayifError(f"the model returned a {type(out).__name__} with no floating-point tensor at its top level; "
                     "set Task.output_key to the field or position the loss reads")


def select(out: Any, key: Any) -> Tensor:
    """The tensor at ``key`` of a model output (``None``: the output is the tensor)."""
    if key is None:
        if not isinstance(out, Tensor):
            raise RayifError(f"Task.output_key=None needs the model to return a tensor, got {type(out).__name__}")
        return out
    try:
        t = out[key]
    except (KeyError, IndexError, TypeError) as e:
        raise RayifError(f"Task.output_key={key!r} is not in the model's {type(out).__name__} output "
                         f"(it has {[k for k, _ in fields(out)]})") from e
    if not isinstance(t, Tensor):
        raise RayifError(f"Task.output_key={key!r} selects a {type(t).__name__}, not a tensor")
    return t


def rebuild(template: Any, replace: dict[Any, Any], keep: bool) -> Any:
    """A model output like ``template`` with the fields in ``replace`` swapped in; the other fields are kept
    (``keep``) or left out (``None`` in a tuple), so a loss that reads them fails instead of using stale ones."""
    if isinstance(template, Tensor):
        return replace[None]
    if isinstance(template, Mapping):
        fields = {**(dict(template) if keep else {}), **replace}
        return dict(fields) if type(template) is dict else type(template)(**fields)
    items = [replace.get(i, v if keep else None) for i, v in enumerate(template)]
    if isinstance(template, list):
        return items
    return type(template)(*items) if hasattr(template, "_fields") else type(template)(items)  # a namedtuple


@dataclass(frozen=True)
class OutputSpec:
    """Where the loss's input sits in the model's output: ``key`` (see :func:`select`) and the output's layout
    (``template``: its type and fields with tensors dropped, so it holds no activations)."""

    key: Any
    template: Any

    @classmethod
    def of(cls, out: Any, key: Any) -> OutputSpec:
        return cls(key, None if isinstance(out, Tensor) else rebuild(out, {k: None for k, _ in fields(out)}, True))

    def wrap(self, tensor: Tensor) -> Any:
        """A model output holding ``tensor`` at ``key`` and nothing else."""
        return tensor if self.key is None else rebuild(self.template, {self.key: tensor}, False)


@contextmanager
def layer_calls(modules: Sequence[nn.Module], keep: Callable[..., Any] | None = None) -> Iterator[list[list]]:
    """Every call of each of ``modules`` while the context is open: ``calls[i]`` lists ``(input, output)`` of
    ``modules[i]``'s calls, the first input detached (activations enter factors and contractions, never the
    graph) and the output as the graph has it (its gradient is asked for next). The one place rayif hooks
    layers: per-example gradients, Kronecker factors, gradient sketches, default features.

    ``keep(i, input, output, calls[i])`` records instead, and what it returns replaces the layer's output
    (``None``: unchanged)."""
    calls: list[list] = [[] for _ in modules]

    def hook(i: int):
        def record(_module, args, kwargs, out):
            x = args[0] if args else next(iter(kwargs.values()))
            if keep is not None:
                return keep(i, x, out, calls[i])
            calls[i].append((x.detach(), out))
            return None
        return record

    handles = [m.register_forward_hook(hook(i), with_kwargs=True) for i, m in enumerate(modules)]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()
