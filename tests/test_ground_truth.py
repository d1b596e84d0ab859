"""Every estimator against ground truth: leave-one-out retraining and the explicit Hessian."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.stats as st
import torch

import rayif
from rayif import CGConfig, ExactConfig, LissaConfig, digits
from rayif.data import as_examples
from rayif.grads import Objective
from rayif.ihvp.exact import ExactSolver, explicit_hessian

from .conftest import correlations


@pytest.mark.retrain
def test_exact_influence_predicts_leave_one_out_retraining(logistic):
    task, sp = logistic
    model = task.build_model()
    n = len(sp.x_train)
    xt, yt = torch.as_tensor(sp.x_test), torch.as_tensor(sp.y_test)
    with torch.no_grad():
        base = digits.cross_entropy(model(xt), yt).numpy()
    tests = np.argsort(-base)[:3]  # the worst-predicted test points: where an explanation is wanted
    infl = rayif.influence_matrix(task, (sp.x_train, sp.y_train), (sp.x_test[tests], sp.y_test[tests]),
                                  ExactConfig())
    predicted, actual = [], []
    for row, t in enumerate(tests):
        order = np.argsort(infl[row])
        for z in np.concatenate([order[:20], order[-20:]]):  # the 20 most helpful and 20 most harmful
            retrained = digits.make_model("logistic")
            retrained.load_state_dict(model.state_dict())  # warm start; L-BFGS to |grad| ~ 1e-8
            digits.train(retrained, sp.x_train, sp.y_train, task.weight_decay, exclude=int(z))
            with torch.no_grad():
                actual.append(digits.cross_entropy(retrained(xt[t : t + 1]), yt[t : t + 1]).item() - base[t])
            predicted.append(-infl[row, z] / n)  # the README's convention: removing z changes the loss by -I/n
    predicted, actual = np.array(predicted), np.array(actual)
    assert len(actual) >= 100
    assert st.pearsonr(predicted, actual)[0] >= 0.99
    # the sign convention itself: removing the most harmful points lowers the test loss
    harmful = predicted < -1e-4
    assert harmful.sum() > 20 and (actual[harmful] < 0).mean() > 0.95


def test_explicit_hessian_matches_torch_func_hessian(mlp):
    task, sp = mlp
    obj = Objective(task)
    train = as_examples((sp.x_train[:300], sp.y_train[:300]))
    h = explicit_hessian(obj, train, chunk_size=64)
    x, y = train.inputs, train.targets
    ref = torch.func.hessian(lambda th: obj.train_losses(th, (x, y)).mean())(obj.theta)
    torch.testing.assert_close(h, ref.double(), rtol=1e-8, atol=1e-10)
    # the weight decay is part of the training objective: it adds exactly lambda * I to the Hessian
    h0 = explicit_hessian(Objective(dataclasses.replace(task, weight_decay=0.0)), train, chunk_size=64)
    torch.testing.assert_close(h - h0, task.weight_decay * torch.eye(len(h), dtype=h.dtype), rtol=0, atol=1e-12)


def test_lissa_plain_last_iterate_is_a_noisier_estimate_of_the_same_target(logistic):
    """FastIF's recursion as written (fixed depth, last iterate, no preconditioner) answers the same question."""
    task, sp = logistic
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:3], sp.y_test[:3])
    exact = rayif.influence_matrix(task, train, test, ExactConfig())
    cfg = LissaConfig(tail_average=0.0, tol=None, preconditioner=None, depth=1500, batch_size=32)
    plain = rayif.influence_matrix(task, train, test, cfg)
    assert correlations(exact, plain)["pearson"] >= 0.98


def test_cg_matches_exact(mlp):
    task, sp = mlp
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:4], sp.y_test[:4])
    exact = rayif.influence_matrix(task, train, test, ExactConfig(damping=1e-2))
    cg = rayif.influence_matrix(task, train, test, CGConfig(damping=1e-2, tol=1e-8))
    for a, b in zip(exact, cg, strict=True):
        assert st.pearsonr(a, b)[0] >= 0.999
    np.testing.assert_allclose(cg, exact, rtol=1e-4, atol=1e-6 * np.abs(exact).max())


def test_mixed_precision_exact_is_checked_refined_or_rebuilt(mlp, caplog):
    """A float32-built matrix answers to ``tol`` in float64 products: checked in one pass, refined where a
    tighter ``tol`` asks, and built again from float64 products where refinement cannot reach it."""
    task, sp = mlp
    obj, ex = Objective(task), as_examples((sp.x_train, sp.y_train))
    b = obj.test_grads(as_examples((sp.x_test[:6], sp.y_test[:6]))).double()
    a = explicit_hessian(obj, ex) + 1e-3 * torch.eye(obj.num_params, dtype=torch.float64)

    def residual(x):
        return float(((b - x @ a).norm(dim=1) / b.norm(dim=1)).max())

    full = ExactSolver(obj, ex, ExactConfig())
    want = full.solve(b)
    assert residual(want) < 1e-10 and full.low is None
    mixed = ExactSolver(obj, ex, ExactConfig(mixed_precision=True))
    got = mixed.solve(b)
    assert mixed.stats.iterations == 1 and 0 < residual(got) <= 1e-5  # float32's rounding, within tol
    tight = ExactSolver(obj, ex, ExactConfig(mixed_precision=True, tol=1e-9))
    refined = tight.solve(b)
    assert tight.stats.iterations >= 2 and residual(refined) <= 1e-9 and tight.low is not None
    impossible = ExactSolver(obj, ex, ExactConfig(mixed_precision=True, tol=1e-17))
    with caplog.at_level("WARNING", logger="rayif"):
        rebuilt = impossible.solve(b)
    assert "building it again from float64" in caplog.text and impossible.low is None
    assert torch.equal(rebuilt, want)  # the float64 matrix, as ExactConfig() builds it
    # the inverse handed to self-influence: probed on random vectors, rebuilt where they miss tol
    np.testing.assert_allclose(mixed.inverse().numpy(), torch.linalg.inv(a).numpy(), rtol=1e-3,
                               atol=1e-5 * float(torch.linalg.inv(a).abs().max()))
    caplog.clear()
    with caplog.at_level("WARNING", logger="rayif"):
        probed = ExactSolver(obj, ex, ExactConfig(mixed_precision=True, tol=1e-17)).inverse()
    assert "on random vectors" in caplog.text and torch.equal(probed, full.inverse())


def test_batched_s_test_equals_single_point_runs(mlp):
    task, sp = mlp
    train = (sp.x_train, sp.y_train)
    cfg = LissaConfig(depth=200, repetitions=2, tol=None)  # a fixed depth: a batch stops with its slowest row
    batched = rayif.compute_s_test(task, train, (sp.x_test[:5], sp.y_test[:5]), cfg, seed=7)
    for i in range(5):
        single = rayif.compute_s_test(task, train, (sp.x_test[i : i + 1], sp.y_test[i : i + 1]), cfg, seed=7)
        torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-5, atol=1e-5 * float(single.abs().max()))


def test_seed_fixes_lissa_and_another_seed_changes_it(logistic):
    task, sp = logistic
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:2], sp.y_test[:2])
    cfg = LissaConfig(depth=100, repetitions=2)
    a = rayif.compute_s_test(task, train, test, cfg, seed=1)
    b = rayif.compute_s_test(task, train, test, cfg, seed=1)
    c = rayif.compute_s_test(task, train, test, cfg, seed=2)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_group_influence_is_influence_of_the_mean_test_loss(logistic):
    task, sp = logistic
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:5], sp.y_test[:5])
    each = rayif.influence_matrix(task, train, test, ExactConfig())
    group = rayif.influence_matrix(task, train, test, ExactConfig(), group=True)
    np.testing.assert_allclose(group[0], each.mean(0), rtol=1e-8, atol=1e-12)


def test_self_influence_flags_flipped_labels(logistic):
    task0, sp = logistic
    y = sp.y_train.copy()
    flipped = np.arange(0, 1000, 50)  # 20 mislabelled examples
    y[flipped] = (y[flipped] + 3) % 10
    noisy = digits.DigitsSplit(sp.x_train, y, sp.x_test, sp.y_test)
    task, _ = digits.digits_task("logistic", noisy, weight_decay=task0.weight_decay)
    table = rayif.self_influence(task, (sp.x_train, y), solver=ExactConfig())
    top = table.column("train_id").to_numpy()[:40]
    assert len(set(top) & set(flipped)) >= 15
    # and it is grad^T H^-1 grad exactly
    obj = Objective(task)
    ex = as_examples((sp.x_train, y))
    g = obj.train_grads(ex.take(np.array([3])))
    h = explicit_hessian(obj, ex) + ExactConfig().damping * torch.eye(obj.num_params, dtype=torch.float64)
    want = float(g.double() @ torch.linalg.solve(h, g.double().T))
    values = dict(zip(table.column("train_id").to_pylist(), table.column("self_influence").to_pylist(), strict=True))
    assert values[3] == pytest.approx(want, rel=1e-8)
    # in units of 16 chunks of 16 rows (4 units), every id keeps its own value
    small = rayif.self_influence(task, (sp.x_train, y), solver=ExactConfig(), run_config=rayif.RunConfig(chunk_size=16))
    again = dict(zip(small.column("train_id").to_pylist(), small.column("self_influence").to_pylist(), strict=True))
    assert again.keys() == values.keys() and all(again[i] == pytest.approx(values[i], rel=1e-9) for i in values)


def test_cg_self_influence_recycles_one_krylov_space_and_equals_exact(mlp):
    """CG's self-influence solves parts of test_batch_size rows on the driver, the later parts from the first's
    Krylov space: each row's value is the exact one, and recycling cuts the later parts' passes."""
    task, sp = mlp
    train, ids = (sp.x_train, sp.y_train), np.arange(0, 1000, 20)  # 50 rows: parts of 16, 16, 16, 2
    run = rayif.RunConfig(test_batch_size=16)
    exact = rayif.self_influence(task, train, solver=ExactConfig(), train_ids=ids)
    want = dict(zip(exact["train_id"].to_pylist(), exact["self_influence"].to_pylist(), strict=True))
    passes = {}
    for recycle in (0, CGConfig.recycle):
        table = rayif.self_influence(task, train, solver=CGConfig(tol=1e-8, recycle=recycle), train_ids=ids,
                                     run_config=run)
        got = dict(zip(table["train_id"].to_pylist(), table["self_influence"].to_pylist(), strict=True))
        assert got.keys() == want.keys()
        assert all(got[i] == pytest.approx(want[i], rel=1e-6) for i in want)
        stats = rayif.results.metadata(table)["job"]["solver_stats"]
        assert stats["solves"] == 4 and stats["capped"] == 0, stats
        passes[recycle] = stats["iterations"]
    assert passes[CGConfig.recycle] < 0.8 * passes[0], passes
