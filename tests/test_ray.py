"""The Ray executor on a real local Ray: the in-process answer on any number of workers, through deaths."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import ray
import torch

import rayif
from rayif import AutoConfig, CGConfig, EKFACConfig, ExactConfig, LissaConfig, RunConfig, ScalingConfig
from rayif.data import as_examples
from rayif.executors.ray import RayExecutor
from rayif.results import metadata
from rayif.runner import Job, Runner

LISSA = LissaConfig(depth=300, repetitions=4)
HALF_CPU = {"CPU": 0.5}  # four workers fit the session's 2 CPUs


@pytest.fixture(scope="module")
def data(logistic):
    task, sp = logistic
    train = (sp.x_train, sp.y_train)
    test = {"x": sp.x_test[:8], "y": sp.y_test[:8], "id": np.arange(100, 108)}
    return task, train, test


def _same(a, b, rtol=0.0):
    assert a["test_id"].to_pylist() == b["test_id"].to_pylist()
    assert a["kind"].to_pylist() == b["kind"].to_pylist()
    assert a["train_id"].to_pylist() == b["train_id"].to_pylist()
    np.testing.assert_allclose(a["influence"].to_numpy(), b["influence"].to_numpy(), rtol=rtol, atol=0)


def _job(table) -> dict:
    return metadata(table)["job"]


def test_ray_equals_single_process_and_any_worker_count(ray_local, data):
    task, train, test = data
    run = RunConfig(test_batch_size=4)
    single = rayif.explain(task, train, test, top=10, solver=LISSA, seed=3, run_config=run)
    one = rayif.explain(task, train, test, top=10, solver=LISSA, seed=3, scaling_config=ScalingConfig(num_workers=1),
                        run_config=run)
    two = rayif.explain(task, train, test, top=10, solver=LISSA, seed=3, scaling_config=ScalingConfig(num_workers=2),
                        run_config=run)
    _same(one, single, rtol=1e-5)
    _same(two, one)  # bit-identical: repetition t has seed (seed, t) wherever it runs


def test_four_workers_all_run_s_test_units_and_equal_one_worker(ray_local, data):
    task, train, test = data
    cfg, run = LissaConfig(depth=200, repetitions=2), RunConfig(test_batch_size=2)
    four = rayif.explain(task, train, test, top=5, solver=cfg, seed=1, run_config=run,
                         scaling_config=ScalingConfig(num_workers=4, use_gpu=True, resources_per_worker=HALF_CPU))
    one = rayif.explain(task, train, test, top=5, solver=cfg, seed=1, run_config=run,
                        scaling_config=ScalingConfig(num_workers=1, resources_per_worker=HALF_CPU))
    _same(four, one)
    busy = _job(four)["worker_busy"]
    # T=2 per batch, so two batches are in flight at once and every worker gets s_test units
    assert len(busy) == 4 and all(b.get("s_test", 0) > 0 for b in busy), busy
    assert all(b.get("score", 0) > 0 for b in busy), busy
    gpus = [w["gpu_ids"] for w in metadata(four)["workers"]]
    assert sorted(gpus) == [["0"], ["1"], ["2"], ["3"]]  # one fake GPU per replica


def test_group_self_influence_and_matrix_on_ray_equal_in_process(ray_local, data):
    task, train, test = data
    scaling = ScalingConfig(num_workers=2, resources_per_worker=HALF_CPU)
    cfg = LissaConfig(depth=150, repetitions=3)
    for solver in (ExactConfig(), cfg):
        local = rayif.explain(task, train, test, top=5, solver=solver, group=True)
        remote = rayif.explain(task, train, test, top=5, solver=solver, group=True, scaling_config=scaling)
        _same(remote, local, rtol=1e-6)
        assert set(remote["test_id"].to_pylist()) == {-1}
    m_local = rayif.influence_matrix(task, train, test, ExactConfig())
    m_ray = rayif.influence_matrix(task, train, test, ExactConfig(), scaling_config=scaling,
                                   run_config=RunConfig(test_batch_size=3, solve_block=2))
    np.testing.assert_allclose(m_ray, m_local, rtol=1e-8, atol=1e-12 * np.abs(m_local).max())
    small = (train[0][:300], train[1][:300])
    for solver in (ExactConfig(), LissaConfig(depth=100, repetitions=2)):
        s_local = rayif.self_influence(task, small, solver=solver)
        s_ray = rayif.self_influence(task, small, solver=solver, scaling_config=scaling,
                                     run_config=RunConfig(chunk_size=64))
        assert s_ray["train_id"].to_pylist()[:20] == s_local["train_id"].to_pylist()[:20]
        np.testing.assert_allclose(np.sort(s_ray["self_influence"].to_numpy()),
                                   np.sort(s_local["self_influence"].to_numpy()), rtol=1e-6)


def test_kronecker_factors_are_fitted_across_workers_and_equal_in_process(ray_local, data):
    task, train, test = data
    run = RunConfig(chunk_size=128)  # 8 chunks of the 1000 training rows: both workers fit some
    for solver in (CGConfig(), EKFACConfig()):
        local = rayif.explain(task, train, test, top=5, solver=solver, run_config=run)
        remote = rayif.explain(task, train, test, top=5, solver=solver, run_config=run,
                               scaling_config=ScalingConfig(num_workers=2, resources_per_worker=HALF_CPU))
        _same(remote, local, rtol=1e-6)
        busy = _job(remote)["worker_busy"]
        assert all(b.get("factor_sums", 0) > 0 and b.get("eigen_sums", 0) > 0 for b in busy), busy


def test_one_solve_runs_on_every_worker_with_the_same_bits_on_one_or_two(ray_local, data):
    """CG's products, the explicit matrix's columns (or a chain's factor sums) and auto's Lanczos probe are row
    shards any worker computes, summed on the driver in shard order: two workers share one solve and give one
    worker's bits."""
    task, train, test = data
    run = RunConfig(chunk_size=64, test_batch_size=8)  # 16 shards of 64 rows: both workers get some
    products = ExactConfig(mixed_precision=True, chain=False)
    for solver in (CGConfig(), products, ExactConfig(), AutoConfig()):
        one = rayif.explain(task, train, test, top=5, solver=solver, run_config=run,
                            scaling_config=ScalingConfig(num_workers=1, resources_per_worker=HALF_CPU))
        two = rayif.explain(task, train, test, top=5, solver=solver, run_config=run,
                            scaling_config=ScalingConfig(num_workers=2, resources_per_worker=HALF_CPU))
        _same(two, one)
        busy = _job(two)["worker_busy"]
        assert all(b.get("product", 0) > 0 for b in busy), busy  # a chain's matrix is checked by a product
        chain = solver in (ExactConfig(), AutoConfig())  # the logistic model is a chain; auto's exact for 8 points
        assert all(b.get("chain_sums", 0) > 0 for b in busy) == chain, busy
        _same(rayif.explain(task, train, test, top=5, solver=solver, run_config=run), one, rtol=1e-6)
        if isinstance(solver, AutoConfig):  # the probe's smallest eigenvalue, to the bit
            low = [metadata(t)["solver_choice"]["smallest_hessian_eigenvalue"] for t in (one, two)]
            assert low[0] is not None and low[0] == low[1], low
    # self-influence: the explicit matrix once, from both workers' products (float32 ones, then float64 ones
    # for its probe) or factor sums; every row's solve is one product with its inverse, on either worker. CG:
    # parts of 8 rows, each one solve on both workers, the later ones from the first's Krylov space (one space,
    # one set of bits)
    for solver, ids in ((products, None), (ExactConfig(), None), (CGConfig(), np.arange(0, 1000, 40))):
        tables = [rayif.self_influence(task, train, solver=solver, run_config=run, train_ids=ids,
                                       scaling_config=ScalingConfig(num_workers=k, resources_per_worker=HALF_CPU))
                  for k in (1, 2)]
        for column in ("train_id", "self_influence"):
            assert tables[0][column].to_pylist() == tables[1][column].to_pylist()
        busy = _job(tables[1])["worker_busy"]
        unit = "self_influence" if isinstance(solver, ExactConfig) else "train_vectors"
        assert all(b.get("product", 0) > 0 for b in busy) and any(b.get(unit, 0) > 0 for b in busy), busy


def test_exact_solver_and_candidate_ids_on_ray(ray_local, data):
    task, train, test = data
    full = rayif.influence_matrix(task, train, test, ExactConfig())
    rng = np.random.default_rng(0)
    cand = np.stack([rng.choice(1000, size=50, replace=False) for _ in range(8)])
    table = rayif.explain(task, train, test, top=5, solver=ExactConfig(), candidates=cand,
                          scaling_config=ScalingConfig(num_workers=2), run_config=RunConfig(solve_block=3))
    for row in range(8):
        vals = full[row, cand[row]]
        want = cand[row][np.argsort(-vals)[:5]]
        got = table.filter(table["test_id"].to_numpy() == 100 + row)
        got = got.filter(np.array(got["kind"].to_pylist()) == "harmful")["train_id"].to_pylist()
        assert got == want.tolist()


def test_a_killed_worker_is_replaced_and_the_result_is_identical(ray_local, data):
    task, train, test = data
    job = Job(as_examples(train), as_examples(test), LissaConfig(depth=400, repetitions=4), seed=0, top=10,
              run=RunConfig(test_batch_size=4))
    scaling = ScalingConfig(num_workers=2, resources_per_worker=HALF_CPU)
    with RayExecutor(task, job.train, job.test, scaling, RunConfig(max_failures=2)) as ex:
        calm = Runner(job, ex).explain()
    killed: list[str] = []

    def kill_once(call, worker):
        # right after a unit went out: the worker dies with it in flight (running or queued), never after it
        # finished, so the rerun path always runs. Worker 0 mid-LiSSA, worker 1 mid-scoring.
        if (call.method, worker) in (("s_test", 0), ("score", 1)) and call.method not in killed:
            killed.append(call.method)
            ray.kill(ex.actors[worker], no_restart=False)

    with RayExecutor(task, job.train, job.test, scaling, RunConfig(max_failures=2)) as ex:
        pids = [i["pid"] for i in ex.infos]
        ex.on_submit = kill_once
        stormy = Runner(job, ex).explain()
        assert killed == ["s_test", "score"] and ex.failures == 2
        ex.on_submit = None
        # map() waits for a restarting worker instead of racing it
        now = [i["pid"] for i in ex.map([rayif.executors.Call("info", (), worker=w) for w in range(2)], _raw=True)]
    assert now[0] != pids[0] and now[1] != pids[1]  # new processes replaced both
    _same(stormy, calm)


def test_dead_pool_says_how_to_resume(ray_local, data):
    task, train, test = data
    job = Job(as_examples(train), as_examples(test), LISSA, run=RunConfig(max_failures=0))
    with RayExecutor(task, job.train, job.test, ScalingConfig(num_workers=1), job.run) as ex:
        ray.kill(ex.actors[0], no_restart=True)
        with pytest.raises(rayif.RayifError, match="max_failures=0.*rerun with the same output_dir"):
            Runner(job, ex).explain()


def test_resume_computes_only_missing_batches_and_refuses_a_changed_model(ray_local, data, tmp_path, caplog):
    task, train, test = data
    run = RunConfig(test_batch_size=3, output_dir=str(tmp_path))
    kw = dict(top=5, solver=LISSA, seed=1, scaling_config=ScalingConfig(num_workers=2), run_config=run)
    first = rayif.explain(task, train, test, **kw)
    assert len(list(tmp_path.glob("batch-*.parquet"))) == 3
    (tmp_path / "batch-000001.parquet").unlink()  # as if the driver stopped before writing it
    stamp = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("batch-*.parquet")}
    with caplog.at_level(logging.INFO, logger="rayif"):
        again = rayif.explain(task, train, test, **kw)
    assert "2 of 3 test batches already done" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("batch-*.parquet") if p.name in stamp} == stamp
    assert _job(again)["worker_busy"][0].get("s_test", 0) + _job(again)["worker_busy"][1].get("s_test", 0) > 0
    _same(again, first)
    # the same job in this process resumes the same folder: nothing left to compute
    local = rayif.explain(task, train, test, **{**kw, "scaling_config": None})
    _same(local, first)
    assert "s_test" not in _job(local)["seconds"]
    with pytest.raises(rayif.RayifError, match=r"different job \(differs in \['seed'\]"):
        rayif.explain(task, train, test, **{**kw, "seed": 2})
    retrained = rayif.digits.train(task.build_model(), train[0][:900], train[1][:900], task.weight_decay)
    state = {k: v.detach().clone() for k, v in retrained.state_dict().items()}
    changed = dataclasses.replace(task, model_factory=rayif.digits.model_factory("logistic", 32, state))
    with pytest.raises(rayif.RayifError, match=r"differs in \['model_fingerprint'\]"):
        rayif.explain(changed, train, test, **kw)
    with pytest.raises(rayif.RayifError, match=r"differs in \['test_ids_sha256'\]"):
        rayif.explain(task, train, {**test, "id": test["id"] + 1}, **kw)


def test_one_replica_per_fake_gpu_and_cpu_fallback(ray_local, data, caplog):
    task, train, _ = data
    with caplog.at_level(logging.INFO, logger="rayif"):
        ex = RayExecutor(task, as_examples(train), None, ScalingConfig(num_workers=2, use_gpu=True), RunConfig())
    try:
        gpus = [info["gpu_ids"] for info in ex.infos]
        assert len({g[0] for g in gpus}) == 2 and all(len(g) == 1 for g in gpus)  # one GPU each, different
        assert all(info["device"] == "cpu" for info in ex.infos)
        assert caplog.text.count("torch sees no CUDA device") == 2
        assert "falling back to CPU" in caplog.text
    finally:
        ex.close()


def test_workers_that_cannot_be_placed_name_the_missing_resources(ray_local, data):
    task, train, test = data
    with pytest.raises(rayif.RayifError, match=r"the cluster lacks CPU: 3 needed, 2 in the cluster"):
        rayif.explain(task, train, test, solver=LISSA,
                      scaling_config=ScalingConfig(num_workers=3, placement_timeout_s=1.0))
    # what was reserved was given back: a job that fits runs next
    table = rayif.explain(task, train, test, top=3, solver=ExactConfig(), scaling_config=ScalingConfig(num_workers=2))
    assert table.num_rows == 8 * 2 * 3
    assert torch.get_num_threads() >= 1
