"""The Task: what a user writes once to describe a trained model to rayif."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import RayifError

LossFn = Callable[[Tensor, Tensor], Tensor]
FeatureFn = Callable[[nn.Module, Tensor], Tensor]
Regularizer = Callable[[dict[str, Tensor]], Tensor]


@dataclass(frozen=True)
class Task:
    """A trained model and the losses influence is measured with.

    Attributes:
        model_factory: zero-argument callable returning the *trained* model (architecture and weights).
            Remote workers call it to build their own replica, so it must be picklable (closures over a
            ``state_dict`` are fine).
        loss: per-example training loss, ``loss(outputs [b, ...], targets [b, ...]) -> [b]``. Use
            ``reduction="none"``: a scalar here is an error.
        weight_decay: L2 coefficient lambda the training used (as ``torch.optim.SGD(weight_decay=...)``):
            ``lambda/2 * ||theta||^2`` over the selected parameters is added to every per-example training
            loss, so the Hessian includes ``lambda * I``. FastIF trains with explicit weight decay.
        regularizer: any other penalty the training added to its mean loss, ``regularizer(params) -> []``,
            where ``params`` maps selected parameter names to tensors.
        test_loss: the measurement at test points, ``test_loss(outputs, targets) -> [b]``; defaults to
            ``loss`` (never includes the regulariser).
        params: names or name prefixes of the parameters influence differentiates (FastIF uses the top
            layers only), e.g. ``params=("classifier.",)``. ``None``: every parameter with
            ``requires_grad``.
        features: ``features(model, inputs [b, ...]) -> [b, d]`` for kNN preselection. ``None``: the input
            of the model's last ``nn.Linear`` (its final hidden representation).
    """

    model_factory: Callable[[], nn.Module]
    loss: LossFn
    weight_decay: float = 0.0
    regularizer: Regularizer | None = None
    test_loss: LossFn | None = None
    params: Sequence[str] | None = None
    features: FeatureFn | None = None

    def __post_init__(self) -> None:
        if not callable(self.model_factory):
            raise TypeError("Task.model_factory must be a zero-argument callable returning the trained model")
        if self.weight_decay < 0:
            raise ValueError(f"Task.weight_decay must be >= 0, got {self.weight_decay}")
        if isinstance(self.params, str):
            object.__setattr__(self, "params", (self.params,))

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """A fresh replica in eval mode on ``device``."""
        model = self.model_factory()
        if not isinstance(model, nn.Module):
            raise TypeError(f"Task.model_factory returned {type(model).__name__}, expected a torch.nn.Module")
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

    def compute_features(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """Features ``[b, d]`` for kNN preselection (see ``features``)."""
        if self.features is not None:
            return self.features(model, inputs).reshape(len(inputs), -1)
        return last_linear_input(model, inputs)


def last_linear_input(model: nn.Module, inputs: Tensor) -> Tensor:
    """The input of the model's last ``nn.Linear``, flattened to ``[b, d]``: its final representation."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise RayifError("the model has no nn.Linear layer; pass Task(features=...) to say what its features are")
    captured: list[Tensor] = []
    handle = linears[-1].register_forward_hook(lambda _m, args, _out: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
    return captured[-1].reshape(len(inputs), -1)
