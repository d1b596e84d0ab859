"""kronfluence (EK-FAC, Grosse et al. 2023) as a peer in the same run: the ``bench`` extra.

    .venv/bin/pip install -c constraints.txt -e ".[bench]" && .venv/bin/pip uninstall -y torchvision

Called as its documentation shows a user: a ``Task`` with the summed training loss (labels sampled from the
model for the true Fisher, its default), the summed test loss as the measurement, ``fit_all_factors`` then
``compute_pairwise_scores``, on this process's CPU. Its damping is set to the question's (the model's
weight decay plus rayif's damping), since kronfluence's curvature does not hold the weight decay. Its
scores are ``grad f(z_test)^T P grad L(z)``: influence in rayif's sign is their negative.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

try:
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task as KronTask
except ImportError:  # the bench extra is not installed: the row is skipped and says why
    Analyzer = None

AVAILABLE = Analyzer is not None
MISSING = 'kronfluence is not installed: pip install -c constraints.txt -e ".[bench]"'


class _Rows(Dataset):
    """Rows of an ``(inputs, targets)`` pair or a dict of arrays, as kronfluence's DataLoader takes them."""

    def __init__(self, data: Any):
        self.data = data

    def __len__(self) -> int:
        return len(next(iter(self.data.values()))) if isinstance(self.data, dict) else len(self.data[0])

    def __getitem__(self, i: int):
        if isinstance(self.data, dict):
            return {k: torch.as_tensor(v[i]) for k, v in self.data.items()}
        return torch.as_tensor(self.data[0][i]), torch.as_tensor(self.data[1][i])


def _logits(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]), batch["labels"]
    return model(batch[0]), batch[1]


if AVAILABLE:
    class _Classification(KronTask):
        def __init__(self, modules: list[str] | None):
            super().__init__()
            self.modules = modules

        def compute_train_loss(self, batch: Any, model: nn.Module, sample: bool = False) -> torch.Tensor:
            logits, labels = _logits(model, batch)
            if sample:
                with torch.no_grad():
                    labels = torch.distributions.Categorical(logits=logits.detach()).sample()
            return F.cross_entropy(logits, labels, reduction="sum")

        def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
            logits, labels = _logits(model, batch)
            return F.cross_entropy(logits, labels, reduction="sum")

        def get_influence_tracked_modules(self) -> list[str] | None:
            return self.modules


def influence(model: nn.Module, train: Any, test: Any, damping: float, modules: list[str] | None = None,
              batch_size: int = 1024) -> tuple[np.ndarray, float]:
    """``[m, n]`` influence (rayif's sign) of every training row on each test row by kronfluence's EK-FAC,
    and its wall time in seconds (factors and scores). ``modules``: the tracked ``nn.Linear`` / ``nn.Conv2d``
    names (``None``: every one)."""
    if not AVAILABLE:
        raise RuntimeError(MISSING)
    t0 = time.perf_counter()
    task = _Classification(modules)
    model = prepare_model(model.eval(), task)
    with tempfile.TemporaryDirectory() as out:
        analyzer = Analyzer("rayif_bench", model, task, cpu=True, disable_tqdm=True, output_dir=out)
        analyzer.fit_all_factors("ekfac", _Rows(train), per_device_batch_size=batch_size,
                                 factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True)
        analyzer.compute_pairwise_scores("scores", "ekfac", _Rows(test), _Rows(train),
                                         per_device_query_batch_size=len(_Rows(test)),
                                         per_device_train_batch_size=batch_size,
                                         score_args=ScoreArguments(damping_factor=damping), overwrite_output_dir=True)
        scores = analyzer.load_pairwise_scores("scores")["all_modules"]
    return -scores.double().numpy(), time.perf_counter() - t0
