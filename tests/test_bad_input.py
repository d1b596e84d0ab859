"""Bad input gets a clear error, never a silent wrong answer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import rayif
from rayif import CGConfig, ExactConfig, LissaConfig, NonFiniteError, RayifError, SolverError, Task, digits
from rayif.errors import LissaDivergenceError
from rayif.grads import Objective
from rayif.ihvp.exact import explicit_hessian


@pytest.fixture(scope="module")
def small(logistic):
    task, sp = logistic
    return task, (sp.x_train[:200], sp.y_train[:200]), (sp.x_test[:2], sp.y_test[:2])


def test_input_shape_mismatch(small):
    task, train, test = small
    with pytest.raises(RayifError, match=r"rejects test data: inputs \(63,\)"):
        rayif.explain(task, train, (test[0][:, :63], test[1]), solver=ExactConfig())


def test_input_dtype_mismatch(small):
    task, train, test = small
    with pytest.raises(RayifError, match="float32 but the model's parameters are torch.float64"):
        rayif.explain(task, (train[0].astype(np.float32), train[1]), test, solver=ExactConfig())


def test_inputs_and_targets_of_different_lengths(small):
    task, train, test = small
    with pytest.raises(RayifError, match="200 inputs but 199 targets"):
        rayif.explain(task, (train[0], train[1][:-1]), test, solver=ExactConfig())


def test_nan_in_a_training_example_names_its_id(small):
    task, (x, y), test = small
    x = x.copy()
    x[[17, 42]] = np.nan
    with pytest.raises(NonFiniteError, match=r"2 example\(s\), ids: 117, 142"):
        rayif.explain(task, {"x": x, "y": y, "id": np.arange(100, 300)}, test, solver=ExactConfig())


def test_infinite_loss_names_its_id(small):
    task, train, test = small

    def loss(out, y):
        base = digits.cross_entropy(out, y)
        return torch.where(y == 7, base * torch.inf, base)

    bad = dataclasses.replace(task, loss=loss, test_loss=digits.cross_entropy)
    ids = np.flatnonzero(train[1] == 7)
    expected = f"training data loss is NaN or inf for {len(ids)} example.*ids: {ids[0]}, "
    with pytest.raises(NonFiniteError, match=expected):
        rayif.explain(bad, train, test, solver=LissaConfig(depth=10))


class _InfiniteSlope(torch.autograd.Function):
    """Identity whose gradient is infinite on the masked rows."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, mask):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return g * torch.where(mask, torch.inf, 1.0), None


@pytest.mark.parametrize("solver", [ExactConfig(), LissaConfig(depth=10), LissaConfig(depth=10, scale=10.0)])
def test_infinite_gradient_of_a_finite_loss_names_its_id(small, solver):
    task, train, test = small

    def loss(out, y):  # finite value, infinite slope where y == 7
        return _InfiniteSlope.apply(digits.cross_entropy(out, y), y == 7)

    bad = dataclasses.replace(task, loss=loss, test_loss=digits.cross_entropy)
    ids = np.flatnonzero(train[1] == 7)
    with pytest.raises(NonFiniteError, match="training loss gradient is NaN or inf for") as err:
        rayif.explain(bad, train, test, solver=solver)
    named = {int(i) for i in str(err.value).split("ids: ")[1].replace(" ...", "").split(", ")}
    assert named and named <= set(ids)  # only bad examples are blamed
    if isinstance(solver, ExactConfig):  # it scans the whole training set: all of them (20 shown)
        assert f"for {len(ids)} example" in str(err.value)


def test_lissa_divergence_says_which_knob(logistic):
    task, sp = logistic
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:2], sp.y_test[:2])
    # one fifth of the top eigenvalue: the recursion multiplies that direction by ~4 each step
    with pytest.raises(LissaDivergenceError, match=r"raise LissaConfig\.scale.*raise LissaConfig\.damping"):
        rayif.compute_s_test(task, train, test, LissaConfig(scale=0.05, depth=2000, preconditioner=None), seed=0)


def test_lissa_slow_divergence_is_caught_before_overflow(logistic):
    task, sp = logistic
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:2], sp.y_test[:2])
    top = float(torch.linalg.eigvalsh(explicit_hessian(Objective(task), rayif.as_examples(train))).max())
    # the top direction grows ~6% a step: never overflows float64 within depth; the growth check must see it
    slow = LissaConfig(scale=top / 1.99 / 1.03, damping=0.01, depth=1000, tail_average=0.0, batch_size=256,
                       preconditioner=None, tol=None)
    with pytest.raises(LissaDivergenceError, match="keeps growing"):
        rayif.compute_s_test(task, train, test, slow, seed=0)


def test_top_larger_than_training_set(small):
    task, train, test = small
    with pytest.raises(RayifError, match=r"top=201 is larger than the training set \(200 examples\)"):
        rayif.explain(task, train, test, top=201, solver=ExactConfig())


def test_empty_data(small):
    task, train, test = small
    with pytest.raises(RayifError, match="training data is empty"):
        rayif.explain(task, (train[0][:0], train[1][:0]), test)
    with pytest.raises(RayifError, match="test data is empty"):
        rayif.explain(task, train, (test[0][:0], test[1][:0]))


def test_missing_column(small):
    task, train, test = small
    with pytest.raises(RayifError, match=r"no column\(s\) \['y'\]"):
        rayif.explain(task, {"x": train[0], "label": train[1]}, test)


def test_parameter_selection_that_selects_nothing(small):
    task, train, test = small
    with pytest.raises(RayifError, match="selects no parameter; the model's parameters are"):
        rayif.explain(dataclasses.replace(task, params=("encoder.",)), train, test)


def test_loss_that_is_not_per_example(small):
    task, train, test = small
    bad = dataclasses.replace(task, loss=lambda out, y: digits.cross_entropy(out, y).mean())
    with pytest.raises(RayifError, match="reduction='none'"):
        rayif.explain(bad, train, test)


def test_exact_refuses_large_models_naming_the_limit(small):
    task, train, test = small
    with pytest.raises(RayifError, match="above ExactConfig.max_params=100"):
        rayif.explain(task, train, test, solver=ExactConfig(max_params=100))


def test_indefinite_hessian_is_refused_by_exact_and_cg():
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    task = Task(model_factory=lambda: model, loss=lambda out, y: -((out[:, 0] - y) ** 2))  # concave
    data = (np.random.default_rng(0).normal(size=(20, 3)), np.zeros(20))
    with pytest.raises(SolverError, match="not positive definite.*ExactConfig.damping above"):
        rayif.compute_s_test(task, data, data, ExactConfig())
    with pytest.raises(SolverError, match="raise CGConfig.damping"):
        rayif.compute_s_test(task, data, data, CGConfig())


def test_cg_that_cannot_converge_says_so(small):
    task, train, test = small
    with pytest.raises(SolverError, match="raise CGConfig.max_iter"):
        rayif.compute_s_test(task, train, test, CGConfig(max_iter=2))


@pytest.mark.parametrize("bad", [dict(depth=0), dict(damping=-1.0), dict(scale=-1.0), dict(tail_average=1.0),
                                 dict(tol=0.0), dict(curvature="fisher")])
def test_invalid_lissa_config(bad):
    with pytest.raises(ValueError, match="LissaConfig"):
        LissaConfig(**bad)


@pytest.mark.parametrize("make", [
    lambda: rayif.RunConfig(test_batch_size=0),
    lambda: rayif.RunConfig(max_failures=-1),
    lambda: rayif.ScalingConfig(num_workers=-1),
    lambda: rayif.ScalingConfig(placement_strategy="RANDOM"),
    lambda: rayif.IndexConfig(kind="hnsw"),
    lambda: CGConfig(tol=2.0),
])
def test_config_mistakes_are_rayif_errors(make):
    with pytest.raises(RayifError):
        make()


def test_a_solver_that_is_not_a_config(small):
    task, train, test = small
    with pytest.raises(RayifError, match="solver must be 'auto', 'exact'"):
        rayif.explain(task, train, test, solver=42)
    with pytest.raises(RayifError, match=r"candidates must give each test point k >= top=10"):
        rayif.explain(task, train, test, candidates=np.zeros((2, 3), np.int64))
    with pytest.raises(RayifError, match="candidates name ids that are not in the training data"):
        rayif.explain(task, train, test, top=2, solver=ExactConfig(), candidates=np.full((2, 3), 999))


def test_old_spellings_still_work_for_one_version_and_name_the_new_one(small):
    task, train, test = small
    want = rayif.influence_matrix(task, train, test, ExactConfig(), scaling_config=None)
    with pytest.warns(FutureWarning, match=r"influence_matrix\(scaling=...\) is deprecated .* pass scaling_config="):
        got = rayif.influence_matrix(task, train, test, ExactConfig(), scaling=None)
    np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="pass scaling_config= only"):
        rayif.explain(task, train, test, scaling=None, scaling_config=None)
    # the solver is the fourth argument of every entry point (self_influence: the third)
    table = rayif.explain(task, train, test, ExactConfig(), top=3)
    assert table.num_rows == 2 * 2 * 3
