"""One question for every solver: damping in one unit, the Gauss-Newton curvature, Kronecker factors, auto."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import rayif
from rayif import AutoConfig, CGConfig, EKFACConfig, ExactConfig, LissaConfig, RunConfig, digits
from rayif.api import fit_factors, solver_config
from rayif.config import DEFAULT_DAMPING
from rayif.data import as_examples
from rayif.errors import ConvergenceError, LissaDivergenceError, RayifError
from rayif.grads import Objective
from rayif.ihvp import KroneckerFactors
from rayif.ihvp.exact import explicit_hessian

from .conftest import correlations


def _explicit_ggn(obj: Objective, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean_i J_i^T H_i J_i + weight_decay I`` straight from its definition (Jacobians and loss Hessians)."""
    jac = torch.func.jacrev(lambda th: obj.outputs(th, (x, y)))(obj.theta)  # [b, C, p]
    out = obj.outputs(obj.theta, (x, y)).detach()
    h = torch.func.vmap(torch.func.hessian(lambda o, t: digits.cross_entropy(o[None], t[None])[0]))(out, y)
    eye = torch.eye(obj.num_params, dtype=torch.float64)
    return torch.einsum("bcp,bcd,bdq->pq", jac, h, jac) / len(x) + obj.task.weight_decay * eye


def test_ggn_products_equal_the_gauss_newton_matrix(mlp, logistic):
    task, sp = mlp
    obj = Objective(task)
    x, y = torch.as_tensor(sp.x_train[:150]), torch.as_tensor(sp.y_train[:150])
    v = torch.randn(7, obj.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ggn = _explicit_ggn(obj, x, y)
    torch.testing.assert_close(obj.gvp(v, (x, y)), v @ ggn, rtol=1e-10, atol=1e-12)
    # the tanh layer makes the Hessian differ from the GGN; for a linear model with cross-entropy they agree
    assert (obj.hvp(v, (x, y)) - v @ ggn).abs().max() > 1e-3
    lin = Objective(logistic[0])
    v = v[:, : lin.num_params]
    torch.testing.assert_close(lin.gvp(v, (x, y)), lin.hvp(v, (x, y)), rtol=1e-10, atol=1e-12)


def _assert_eigenvalues_are_the_ggn_diagonal(obj: Objective, train, f: KroneckerFactors) -> None:
    """EK-FAC's eigenvalues of each block are the exact GGN's diagonal in that block's Kronecker eigenbasis."""
    eye = torch.eye(obj.num_params, dtype=torch.float64)
    ggn = explicit_hessian(obj, train, len(train), "ggn") - obj.task.weight_decay * eye
    for blk, qa, qs, eig in zip(f.blocks, f.qa, f.qs, f.eig, strict=True):
        idx = torch.arange(*blk.weight).view(blk.d_out, blk.d_in)
        idx = torch.cat([idx, torch.arange(*blk.bias)[:, None]], 1).reshape(-1)
        q = torch.kron(qs, qa)
        want = torch.diagonal(q.T @ ggn[idx][:, idx] @ q).view(blk.d_out, blk.d_in1)
        torch.testing.assert_close(eig, want, rtol=1e-8, atol=1e-12)


def test_ekfac_eigenvalues_are_the_ggn_diagonal_in_the_kronecker_eigenbasis(mlp):
    task, sp = mlp
    obj = Objective(task)
    train = as_examples((sp.x_train[:300], sp.y_train[:300]))
    f = fit_factors(task, train, "ekfac", chunk_size=128)
    assert len(f.blocks) == 2 and len(f.diag_index) == 0
    _assert_eigenvalues_are_the_ggn_diagonal(obj, train, f)


def _small_cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Conv2d(1, 3, 3, padding=1, stride=2),
                               torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(48, 10)).double()


def test_conv2d_gets_a_kronecker_block_of_its_patches(mlp):
    """A Conv2d's block: unfolded patches x output channels, every position a token; EK-FAC's eigenvalues are
    still exactly the GGN's diagonal in that basis, and preconditioned CG still answers exact's question."""
    _, sp = mlp
    model = digits.train(_small_cnn(), sp.x_train[:200], sp.y_train[:200], 1e-2, max_iter=50)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def build():
        m = _small_cnn()
        m.load_state_dict(state)
        return m

    task = rayif.Task(build, loss=digits.cross_entropy, weight_decay=1e-2)
    obj = Objective(task)
    train = as_examples((sp.x_train[:200], sp.y_train[:200]))
    f = fit_factors(task, train, "ekfac", chunk_size=64)
    assert [(b.module, b.d_out, b.d_in) for b in f.blocks] == [("1", 3, 9), ("4", 10, 48)]
    _assert_eigenvalues_are_the_ggn_diagonal(obj, train, f)
    data, test = (sp.x_train[:200], sp.y_train[:200]), (sp.x_test[:3], sp.y_test[:3])
    exact = rayif.compute_s_test(task, data, test, ExactConfig())
    torch.testing.assert_close(rayif.compute_s_test(task, data, test, CGConfig(tol=1e-9)), exact, rtol=1e-6,
                               atol=1e-8)


def test_parameters_outside_linear_weights_get_the_exact_ggn_diagonal(mlp):
    task, sp = mlp
    biases = dataclasses.replace(task, params=("0.bias", "2.weight"))  # first bias alone, last layer's weight
    obj = Objective(biases)
    train = as_examples((sp.x_train[:200], sp.y_train[:200]))
    f = fit_factors(biases, train, "kfac", chunk_size=64)
    assert [b.module for b in f.blocks] == ["2"] and f.blocks[0].bias is None
    ggn = explicit_hessian(obj, train, 200, "ggn")
    np.testing.assert_allclose(f.diag, torch.diagonal(ggn)[f.diag_index] - task.weight_decay, rtol=1e-8)


def test_kronecker_factors_are_exact_for_one_example(logistic):
    """One training example: the GGN block is exactly S (x) A, so K-FAC, EK-FAC and exact GGN agree."""
    task, sp = logistic
    train, test = (sp.x_train[:1], sp.y_train[:1]), (sp.x_test[:3], sp.y_test[:3])
    want = rayif.compute_s_test(task, train, test, ExactConfig(curvature="ggn"))
    for corrected in (True, False):
        got = rayif.compute_s_test(task, train, test, EKFACConfig(eigen_correction=corrected))
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
def test_preconditioned_cg_answers_the_exact_question(mlp, curvature):
    task, sp = mlp
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:6], sp.y_test[:6])
    exact = rayif.influence_matrix(task, train, test, ExactConfig(curvature=curvature))
    for pre in ("ekfac", "kfac", None):
        cg = rayif.influence_matrix(task, train, test, CGConfig(curvature=curvature, preconditioner=pre, tol=1e-7))
        np.testing.assert_allclose(cg, exact, rtol=1e-4, atol=1e-5 * np.abs(exact).max())


def test_the_default_solver_matches_exact_on_the_mlp(mlp):
    """As a user meets it: no solver given, so auto picks EK-FAC-preconditioned CG for 8 test points."""
    task, sp = mlp
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:8], sp.y_test[:8])
    exact = rayif.influence_matrix(task, train, test, ExactConfig())
    table = rayif.explain(task, train, test, top=10)
    assert rayif.results.metadata(table)["solver_choice"]["chosen"] == "cg"
    c = correlations(exact, rayif.influence_matrix(task, train, test))
    assert c["pearson"] >= 0.999 and c["spearman"] >= 0.99 and c["min_top10"] >= 9, c
    for row in range(8):  # and the table ranks as exact does
        got = table.filter((table["test_id"].to_numpy() == row) & (np.array(table["kind"].to_pylist()) == "harmful"))
        assert len(set(got["train_id"].to_pylist()) & set(np.argsort(-exact[row])[:10])) >= 9


def test_every_solver_has_the_same_default_damping():
    for cfg in (ExactConfig(), CGConfig(), LissaConfig(), EKFACConfig(), AutoConfig()):
        assert cfg.damping == DEFAULT_DAMPING


def test_plain_lissa_converges_to_exact_at_the_same_damping(logistic):
    """The damping is additive in the Hessian's units for LiSSA too: no hidden ``damping * scale``."""
    task, sp = logistic
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:4], sp.y_test[:4])
    damping = 0.02
    exact = rayif.compute_s_test(task, train, test, ExactConfig(damping=damping))
    lissa = rayif.compute_s_test(task, train, test, LissaConfig(damping=damping, preconditioner=None, tol=None,
                                                               depth=600, batch_size=500, repetitions=1))
    rel = (lissa - exact).norm(dim=1) / exact.norm(dim=1)
    assert float(rel.max()) < 0.05, rel
    other = rayif.compute_s_test(task, train, test, ExactConfig(damping=2 * damping))
    assert float(((lissa - other).norm(dim=1) / other.norm(dim=1)).min()) > 2 * float(rel.max())


@pytest.mark.parametrize(("preconditioner", "pearson", "spearman"), [("ekfac", 0.999, 0.99), (None, 0.995, 0.98)])
def test_lissa_defaults_match_exact_at_the_users_damping(logistic, preconditioner, pearson, spearman):
    task, sp = logistic
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:6], sp.y_test[:6])
    exact = rayif.influence_matrix(task, train, test, ExactConfig())
    cfg = LissaConfig(preconditioner=preconditioner)
    lissa = rayif.explain(task, train, test, top=10, solver=cfg, seed=0)
    stats = rayif.results.metadata(lissa)["job"]["solver_stats"]
    assert stats["solves"] == cfg.repetitions and stats["capped"] == 0, stats  # one test batch
    c = correlations(exact, rayif.influence_matrix(task, train, test, cfg, seed=0))
    assert c["pearson"] >= pearson and c["spearman"] >= spearman and c["min_top10"] >= 9, c


def test_lissa_stops_when_its_average_is_converged_and_reports_a_cap(logistic):
    task, sp = logistic
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:2], sp.y_test[:2])
    loose = rayif.explain(task, train, test, top=3, solver=LissaConfig(tol=0.2))
    tight = rayif.explain(task, train, test, top=3, solver=LissaConfig(tol=0.01))
    steps = [rayif.results.metadata(t)["job"]["solver_stats"]["iterations"] for t in (loose, tight)]
    assert steps[0] < steps[1]
    capped = rayif.explain(task, train, test, top=3, solver=LissaConfig(tol=1e-6, depth=100))
    assert rayif.results.metadata(capped)["job"]["solver_stats"]["capped"] == 2


@pytest.mark.parametrize("batch_size", [1, 4, 32, 128])
def test_lissa_with_ggn_does_not_diverge_at_any_batch_size(mlp, batch_size):
    task, sp = mlp
    cfg = LissaConfig(curvature="ggn", batch_size=batch_size, depth=300, tol=None, repetitions=1)
    s = rayif.compute_s_test(task, (sp.x_train, sp.y_train), (sp.x_test[:8], sp.y_test[:8]), cfg, seed=0)
    assert bool(torch.isfinite(s).all())


def test_lissa_divergence_names_ggn_and_damping(mlp):
    task, sp = mlp
    cfg = LissaConfig(scale=0.05, preconditioner=None, depth=2000)
    with pytest.raises(LissaDivergenceError, match=r"scale_safety.*curvature='ggn'.*LissaConfig\.damping"):
        rayif.compute_s_test(task, (sp.x_train, sp.y_train), (sp.x_test[:2], sp.y_test[:2]), cfg)


def test_auto_chooses_by_size_and_records_why(logistic):
    assert isinstance(AutoConfig().choose(1000, 650)[0], ExactConfig)
    assert isinstance(AutoConfig().choose(1500, 2410, 100)[0], ExactConfig)  # CG would cost more passes
    assert isinstance(AutoConfig().choose(1500, 2410, 50)[0], CGConfig)
    assert isinstance(AutoConfig().choose(100_000, 4810)[0], CGConfig)
    assert isinstance(AutoConfig().choose(2_000_000, 4810)[0], LissaConfig)
    assert isinstance(AutoConfig().choose(100, 20_000)[0], CGConfig)
    chosen = AutoConfig(curvature="ggn", damping=0.01).choose(100, 20_000)[0]
    assert (chosen.curvature, chosen.damping) == ("ggn", 0.01)
    # past exact_budget, many right-hand sides still make the explicit matrix the cheaper solve
    many = AutoConfig().choose(100_000, 4810, 100_000)[0]  # self-influence of every row
    assert isinstance(many, ExactConfig) and many.mixed_precision and many.tol == 1e-5
    assert AutoConfig(target="rank").choose(100_000, 4810, 100_000)[0].tol == 1e-3
    assert isinstance(AutoConfig().choose(100_000, 4810, 1000)[0], ExactConfig)  # 4810 <= 8 * 1000
    assert isinstance(AutoConfig().choose(100_000, 4810, 500)[0], CGConfig)  # 4810 > 8 * 500
    assert isinstance(AutoConfig().choose(100_000, 20_000, 100_000)[0], CGConfig)  # p > max_params
    task, sp = logistic
    auto = AutoConfig(chain=False)  # the rules for any model (this one is a chain: tests/test_chain.py)
    some = rayif.self_influence(task, (sp.x_train, sp.y_train), solver=auto, train_ids=np.arange(5))
    meta = rayif.results.metadata(some)  # a self-influence job's right-hand sides are its rows: 5, not 1000
    assert meta["solver_choice"]["chosen"] == "cg" and "m=5" in meta["solver_choice"]["reason"]
    table = rayif.explain(task, (sp.x_train, sp.y_train), (sp.x_test[:30], sp.y_test[:30]), auto, top=3)
    meta = rayif.results.metadata(table)
    assert meta["solver_choice"]["requested"] == "auto" and meta["solver_choice"]["chosen"] == "exact"
    assert "max_params" in meta["solver_choice"]["reason"] and meta["solver"]["method"] == "exact"
    # float32 products build the float64 model's matrix; one float64 pass checks the batch's 30 answers
    assert meta["solver"]["mixed_precision"] and meta["job"]["solver_stats"]["iterations"] == 1
    one = rayif.explain(task, (sp.x_train, sp.y_train), (sp.x_test[:30], sp.y_test[:30]), auto, top=3, group=True)
    meta = rayif.results.metadata(one)  # one test vector: CG's passes are cheaper than the 650 x 650 matrix
    assert meta["solver_choice"]["chosen"] == "cg" and "m=1" in meta["solver_choice"]["reason"]


def test_auto_replaces_a_cg_that_does_not_converge_by_the_mixed_precision_exact_solve(mlp, monkeypatch):
    """Where the explicit matrix fits, a CG that gives up hands the job to the exact solve at CG's tolerance,
    its matrix from float32 products, every answer checked in float64."""
    import rayif.sharded

    def gives_up(*args, **kwargs):
        raise ConvergenceError("CG did not reach tol (this test)")

    task, sp = mlp
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:8], sp.y_test[:8])
    want = rayif.influence_matrix(task, train, test, ExactConfig())
    monkeypatch.setattr(rayif.sharded, "refined_cg", gives_up)
    auto = AutoConfig(chain=False)  # the products' matrix (a chain's needs no float64 checks: test_chain.py)
    table = rayif.explain(task, train, test, auto, top=3)
    meta = rayif.results.metadata(table)
    assert meta["solver_choice"]["chosen"] == "exact" and "CG did not converge" in meta["solver_choice"]["reason"]
    assert meta["solver"]["method"] == "exact" and meta["solver"]["mixed_precision"] and meta["solver"]["tol"] == 1e-5
    assert meta["job"]["solver_stats"]["iterations"] >= 1  # the float64 check
    got = rayif.influence_matrix(task, train, test, ExactConfig(mixed_precision=True, chain=False))
    assert not np.array_equal(got, want)  # float32 products built it
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    # self-influence of a few rows: CG's parts give up too, and the exact inverse answers every row
    ids = np.arange(0, 1000, 100)
    some = rayif.self_influence(task, train, auto, train_ids=ids, run_config=rayif.RunConfig(test_batch_size=4))
    meta = rayif.results.metadata(some)
    assert meta["solver_choice"]["chosen"] == "exact" and "CG did not converge" in meta["solver_choice"]["reason"]
    exact = rayif.self_influence(task, train, solver=ExactConfig(), train_ids=ids)
    assert some["train_id"].to_pylist() == exact["train_id"].to_pylist()
    np.testing.assert_allclose(some["self_influence"].to_numpy(), exact["self_influence"].to_numpy(), rtol=1e-4)


def test_auto_target_trades_exactness_for_passes(mlp):
    """``target="rank"`` stops CG at 1e-3 (fewer passes, still ranking as exact does); ``"fast"`` is EK-FAC
    alone, no passes and a poorer ranking; each choice is recorded."""
    task, sp = mlp
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:8], sp.y_test[:8])
    exact = rayif.influence_matrix(task, train, test, ExactConfig())
    tables = {t: rayif.explain(task, train, test, AutoConfig(target=t), top=3) for t in ("exact", "rank", "fast")}
    meta = {t: rayif.results.metadata(tab) for t, tab in tables.items()}
    assert [meta[t]["solver_choice"]["chosen"] for t in tables] == ["cg", "cg", "ekfac"]
    assert meta["exact"]["solver"]["tol"] == 1e-5 and meta["rank"]["solver"]["tol"] == 1e-3
    passes = {t: meta[t]["job"]["solver_stats"]["iterations"] for t in tables}
    assert passes["fast"] == 0 < passes["rank"] < passes["exact"], passes
    rank = correlations(exact, rayif.influence_matrix(task, train, test, AutoConfig(target="rank")))
    fast = correlations(exact, rayif.influence_matrix(task, train, test, AutoConfig(target="fast")))
    assert rank["spearman"] >= 0.99 and fast["spearman"] < rank["spearman"], (rank, fast)
    with pytest.raises(RayifError, match="target"):
        AutoConfig(target="quick")


def test_factors_are_saved_reused_and_refused_for_another_model(logistic, mlp, tmp_path, caplog):
    task, sp = logistic
    train, test = (sp.x_train, sp.y_train), (sp.x_test[:2], sp.y_test[:2])
    path = tmp_path / "factors.pt"
    first = rayif.compute_s_test(task, train, test, EKFACConfig(), run_config=RunConfig(factors_path=path))
    assert KroneckerFactors.load(path).identity["kind"] == "ekfac"
    assert torch.load(path, weights_only=True)["qa"][0].shape == (65, 65)  # plain torch can read it
    with caplog.at_level("INFO", logger="rayif"):
        again = rayif.compute_s_test(task, train, test, EKFACConfig(), run_config=RunConfig(factors_path=path))
    assert "factors loaded from" in caplog.text
    assert torch.equal(first, again)
    other, _ = digits.digits_task("logistic", weight_decay=0.05)
    with pytest.raises(RayifError, match=r"fitted for something else \(differs in \['model_fingerprint'\]\)"):
        rayif.compute_s_test(other, train, test, EKFACConfig(), run_config=RunConfig(factors_path=path))
    # an output folder keeps its job's factors beside its batches
    out = tmp_path / "job"
    rayif.explain(task, train, test, top=2, solver=CGConfig(), run_config=RunConfig(output_dir=out))
    assert (out / "_rayif_factors.pt").exists()


def test_solvers_by_name_and_bad_options():
    assert isinstance(solver_config("ekfac"), EKFACConfig)
    assert isinstance(solver_config(None), AutoConfig)
    for bad in (dict(curvature="fisher"), dict(damping=-1.0)):
        with pytest.raises(RayifError, match="CGConfig"):
            CGConfig(**bad)
    with pytest.raises(RayifError, match="preconditioner must be one of"):
        LissaConfig(preconditioner="shampoo")
    with pytest.raises(RayifError, match="unknown solver method"):
        solver_config("newton")
    for cls in (CGConfig, ExactConfig):  # a CLI option's "false" as a string would read as true
        with pytest.raises(RayifError, match="mixed_precision must be true or false, got 'false'"):
            cls(mixed_precision="false")
    for cls in (ExactConfig, AutoConfig):
        with pytest.raises(RayifError, match=f"{cls.__name__}.chain must be true or false, got 'no'"):
            cls(chain="no")
    with pytest.raises(RayifError, match=r"ExactConfig.tol must be in \(0, 1\)"):
        ExactConfig(tol=0.0)
