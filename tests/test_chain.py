"""The explicit curvature of a chain of linear layers from per-row factors (``rayif.ihvp.chain``): equal to the
matrix that ``p`` curvature products build, wherever the model allows it, and refused or replaced where not."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rayif
from rayif import AutoConfig, ExactConfig, Task
from rayif.data import as_examples
from rayif.grads import Objective
from rayif.ihvp.chain import Chain, chain_matrix
from rayif.ihvp.exact import explicit_hessian

ROWS = 120


class Net(nn.Module):
    """A linear model with a forward of its own."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(7, 4)

    def forward(self, x):
        return self.fc(x)


class Stored:
    """A picklable factory for a fixed module."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self) -> nn.Module:
        return self.module


def _cross_entropy(out, y):
    return F.cross_entropy(out, y, reduction="none")


def _squared(out, y):  # a loss on a sigmoid output: the tail after the last linear layer
    return ((out - F.one_hot(y, out.shape[1]).to(out.dtype)) ** 2).sum(1)


MODELS = {
    # three linear layers: the cross-layer term between layers two apart
    "deep": (lambda: nn.Sequential(nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 5), nn.Softplus(), nn.Linear(5, 4)),
             _cross_entropy, None),
    # no activation between two layers, a layer without bias, an activation after the last layer
    "plain": (lambda: nn.Sequential(nn.Linear(7, 5, bias=False), nn.Linear(5, 6), nn.GELU(), nn.Dropout(0.1),
                                    nn.Linear(6, 4), nn.Sigmoid()), _squared, None),
    # an MLP head on a frozen trunk (a convolution) and a nested Sequential
    "head": (lambda: nn.Sequential(nn.Unflatten(1, (1, 7)), nn.Conv1d(1, 2, 3), nn.Flatten(),
                                   nn.Sequential(nn.Linear(10, 6), nn.ELU()), nn.Linear(6, 4)),
             _cross_entropy, ("3.", "4.")),
}


def _task(name: str, seed: int = 0) -> Task:
    build, loss, params = MODELS[name]
    torch.manual_seed(seed)
    return Task(model_factory=Stored(build().double()), loss=loss, weight_decay=1e-3, params=params)


def _data(seed: int = 0, rows: int = ROWS):
    g = np.random.default_rng(seed)
    return g.normal(size=(rows, 7)), g.integers(0, 4, rows)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_the_chain_matrix_equals_the_one_products_build(name, curvature):
    task = _task(name)
    x, y = _data()
    train = as_examples((x, y))
    obj = Objective(task)
    chain, why = Chain.of(obj, train.take(slice(0, 2)).batch)
    assert chain is not None, why
    sums: dict = {}
    for chunk in train.chunks(50):  # the sums of several chunks, as a shard adds them
        chain.sums(obj, chunk.batch, curvature, sums)
    got = chain_matrix(chain.layout, sums, len(train), curvature)
    want = explicit_hessian(obj, train, curvature=curvature)
    assert got.shape == (obj.num_params, obj.num_params)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12 * float(want.abs().max()))
    if curvature == "hessian":  # and the Hessian is not the GGN: the second-order terms are in it
        ggn = explicit_hessian(obj, train, curvature="ggn")
        assert float((want - ggn).abs().max()) > 1e-6 * float(want.abs().max())


def test_models_that_are_not_a_chain_are_named_and_left_to_the_products():
    x, y = _data()
    sample = as_examples((x, y)).take(slice(0, 2)).batch

    def why(module, **kw):
        return Chain.of(Objective(Task(model_factory=Stored(module.double()), loss=_cross_entropy, **kw)), sample)[1]

    assert "not a plain nn.Sequential" in why(Net())
    assert "Conv1d" in why(nn.Sequential(nn.Unflatten(1, (1, 7)), nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(10, 4)))
    assert "Task.regularizer" in why(nn.Sequential(nn.Linear(7, 4)), regularizer=lambda p: p["0.weight"].abs().sum())
    frozen_middle = nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 4))
    assert "neither" in why(frozen_middle, params=("0.weight",))


def test_a_model_that_is_not_what_its_modules_say_falls_back_to_the_products(caplog):
    """One linear layer run twice: its modules look like a chain of two, the matrix they give is wrong, and the
    check against a product pass catches it before any answer uses it."""
    torch.manual_seed(0)
    twice = nn.Linear(7, 7)
    task = Task(model_factory=Stored(nn.Sequential(twice, nn.Tanh(), twice).double()), loss=_cross_entropy,
                weight_decay=1e-2)
    x, y = _data()
    train, test = (x, y % 7), (x[:4], y[:4])
    with caplog.at_level(logging.WARNING, logger="rayif"):
        got = rayif.influence_matrix(task, train, test, ExactConfig(damping=0.1, curvature="ggn"))
    assert "building it from products instead" in caplog.text
    want = rayif.influence_matrix(task, train, test, ExactConfig(damping=0.1, curvature="ggn", chain=False))
    np.testing.assert_array_equal(got, want)


def test_auto_solves_a_chain_exactly_where_its_matrix_costs_less_than_cg(mlp):
    """The digits MLP (p = 2410) with 10 test points: the chain's matrix (no check passes: it is built in the
    model's float64) where CG would run; the answer is the products' explicit matrix's."""
    assert isinstance(AutoConfig().choose(100_000, 4810, 50, chain=True)[0], ExactConfig)
    assert not isinstance(AutoConfig().choose(100_000, 4810, 10, chain=True)[0], ExactConfig)  # 4810 > 300 * 10
    assert not isinstance(AutoConfig(chain=False).choose(100_000, 4810, 50, chain=True)[0], ExactConfig)
    assert not isinstance(AutoConfig().choose(100_000, 20_000, 10**5, chain=True)[0], ExactConfig)  # max_params
    task, sp = mlp
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:10], sp.y_test[:10])
    table = rayif.explain(task, train, test, top=3)
    meta = rayif.results.metadata(table)
    assert meta["solver_choice"]["chosen"] == "exact" and "chain of linear layers" in meta["solver_choice"]["reason"]
    assert meta["job"]["solver_stats"]["iterations"] == 0
    got = rayif.influence_matrix(task, train, test)
    want = rayif.influence_matrix(task, train, test, ExactConfig(chain=False))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
