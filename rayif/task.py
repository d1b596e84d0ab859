"""The Task: what a user writes once to describe a trained model to rayif."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .errors import RayifError
from .functional import layer_calls

LossFn = Callable[[Tensor, Tensor], Tensor]
BatchLossFn = Callable[[Callable[..., Any], Any], Tensor]
FeatureFn = Callable[[nn.Module, Any], Tensor]
Regularizer = Callable[[dict[str, Tensor]], Tensor]


@dataclass(frozen=True)
class Task:
    """A trained model and the losses influence is measured with.

    Two forms, one per kind of batch:

    * ``(inputs, targets)`` batches: give ``loss(outputs, targets) -> [b]``; the model is called as
      ``model(inputs)``.
    * any other batch (a dict of ``input_ids`` / ``attention_mask`` / ``labels``, a tuple of tensors): give
      ``batch_loss(model, batch) -> [b]``, which calls the model itself (``model(**inputs)``, masks and all)
      and returns one loss per example. Every tensor in ``batch`` has the examples on its first dimension.

    Attributes:
        model_factory: zero-argument callable returning the *trained* model (architecture and weights).
            Remote workers call it to build their own replica, so it must be picklable (closures over a
            ``state_dict`` are fine).
        loss: per-example training loss, ``loss(outputs [b, ...], targets [b, ...]) -> [b]``. Use
            ``reduction="none"``: a scalar here is an error.
        batch_loss: per-example training loss of a whole batch, ``batch_loss(model, batch) -> [b]``; replaces
            ``loss`` (give one of them). ``model`` is callable like the module (positional and keyword
            arguments); it runs the replica with the parameters rayif differentiates.
        weight_decay: L2 coefficient lambda the training used (as ``torch.optim.SGD(weight_decay=...)``):
            ``lambda/2 * ||theta||^2`` over the selected parameters is added to every per-example training
            loss, so the Hessian includes ``lambda * I``. FastIF trains with explicit weight decay.
        regularizer: any other penalty the training added to its mean loss, ``regularizer(params) -> []``,
            where ``params`` maps selected parameter names to tensors.
        test_loss: the measurement at test points, in the same form as the training loss (``loss`` form or
            ``batch_loss`` form); defaults to the training loss (never includes the regulariser).
        params: names or name prefixes of the parameters influence differentiates (FastIF uses the top
            layers only), e.g. ``params=("classifier.",)``. ``None``: every parameter with
            ``requires_grad``.
        features: ``features(model, inputs) -> [b, d]`` (``features(model, batch)`` with ``batch_loss``) for
            kNN preselection. ``None``: the input of the model's last ``nn.Linear`` (its final hidden
            representation, e.g. the pooled one in front of a classifier head).
        output_key: which part of the model's output the loss reads, where the Gauss-Newton curvature and
            the Kronecker factors split the loss into ``model -> outputs -> loss``: a key of a dict or
            ``ModelOutput`` (``"logits"``) or a position in a tuple. ``None``: the output itself when it is a
            tensor, else ``"logits"`` when present, else the first floating-point tensor. The loss must read
            nothing else of the output (checked); the Hessian and the gradients never need this.
    """

    model_factory: Callable[[], nn.Module]
    loss: LossFn | None = None
    weight_decay: float = 0.0
    regularizer: Regularizer | None = None
    test_loss: Callable[..., Tensor] | None = None
    params: Sequence[str] | None = None
    features: FeatureFn | None = None
    batch_loss: BatchLossFn | None = None
    output_key: str | int | None = None

    def __post_init__(self) -> None:
        if not callable(self.model_factory):
            raise RayifError("Task.model_factory must be a zero-argument callable returning the trained model")
        if (self.loss is None) == (self.batch_loss is None):
            raise RayifError("give Task one training loss: loss(outputs, targets) for (inputs, targets) batches, "
                             "or batch_loss(model, batch) for dict / tuple batches")
        if self.weight_decay < 0:
            raise RayifError(f"Task.weight_decay must be >= 0, got {self.weight_decay}")
        if isinstance(self.params, str):
            object.__setattr__(self, "params", (self.params,))

    @property
    def dict_batches(self) -> bool:
        """True when examples are whole batches (``batch_loss``), False for ``(inputs, targets)``."""
        return self.batch_loss is not None

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """A fresh replica in eval mode on ``device``."""
        model = self.model_factory()
        if not isinstance(model, nn.Module):
            raise RayifError(f"Task.model_factory returned {type(model).__name__}, expected a torch.nn.Module")
        return model.to(device).eval()

    def selected_params(self, model: nn.Module) -> list[str]:
        """Names of the parameters influence differentiates, in ``named_parameters`` order."""
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        if self.params is not None:
            names = [n for n, _ in model.named_parameters() if any(n.startswith(w) for w in self.params)]
        if not names:
            available = [n for n, _ in model.named_parameters()]
            raise RayifError(
                f"the parameter selection {self.params!r} selects no parameter; "
                f"the model's parameters are {available[:20]}{' ...' if len(available) > 20 else ''}"
            )
        return names

    def train_losses(self, model: Callable[..., Any], batch: Any) -> Tensor:
        """``[b]`` per-example training losses of ``batch`` (without the regulariser)."""
        if self.batch_loss is not None:
            return self.batch_loss(model, batch)
        inputs, targets = batch
        return self.loss(model(inputs), targets)

    def test_losses(self, model: Callable[..., Any], batch: Any) -> Tensor:
        """``[b]`` per-example test losses of ``batch``."""
        if self.test_loss is None:
            return self.train_losses(model, batch)
        if self.batch_loss is not None:
            return self.test_loss(model, batch)
        inputs, targets = batch
        return self.test_loss(model(inputs), targets)

    def compute_features(self, model: nn.Module, batch: Any) -> Tensor:
        """Features ``[b, d]`` for kNN preselection (see ``features``).

        ``batch``: an ``(inputs, targets)`` pair or a bare inputs tensor for ``loss`` tasks, the whole batch
        for ``batch_loss`` tasks.
        """
        if not self.dict_batches and isinstance(batch, (tuple, list)):
            batch = batch[0]
        b = batch_len(batch)
        if self.features is not None:
            with torch.no_grad():
                return self.features(model, batch).reshape(b, -1)
        if self.dict_batches:
            return last_linear_input(model, lambda: self.train_losses(model, batch), b)
        return last_linear_input(model, lambda: model(batch), b)


def batch_len(batch: Any) -> int:
    """The number of examples in a batch: the first dimension of its first tensor."""
    if isinstance(batch, Tensor):
        return batch.shape[0]
    leaves = list(batch.values()) if isinstance(batch, dict) else list(batch)
    return batch_len(leaves[0])


def last_linear_input(model: nn.Module, run: Callable[[], Any], b: int) -> Tensor:
    """The input of the model's last ``nn.Linear`` while ``run()`` calls it, flattened to ``[b, d]``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise RayifError("the model has no nn.Linear layer; pass Task(features=...) to say what its features are")
    with layer_calls(linears[-1:]) as calls, torch.no_grad():
        run()
    if not calls[0]:
        raise RayifError("the model's last nn.Linear was not called; pass Task(features=...)")
    return calls[0][-1][0].reshape(b, -1)


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's ``state_dict``: names, shapes, dtypes and bytes of every tensor (0-dim, integer,
    bool, non-contiguous and tied ones alike), and the ``repr`` of any non-tensor extra state."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, Tensor):
            h.update(f"{name}:{t!r}".encode())
            continue
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            flat = t.detach().cpu().contiguous().reshape(-1)  # 0-dim tensors cannot be viewed as bytes
            h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
