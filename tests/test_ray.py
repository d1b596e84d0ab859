"""The Ray path on a real local Ray: same answer as one process, on any number of workers, through deaths."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
import ray
import torch

import rayif
from rayif import LissaConfig, ScalingConfig
from rayif.data import as_examples
from rayif.distributed import WorkerPool, distributed_s_test, distributed_score
from rayif.grads import Objective
from rayif.influence import grads_at_test_points

LISSA = LissaConfig(depth=300, repetitions=4)


@pytest.fixture(scope="module")
def data(logistic):
    task, sp = logistic
    train = (sp.x_train, sp.y_train)
    test = {"x": sp.x_test[:6], "y": sp.y_test[:6], "id": np.arange(100, 106)}
    return task, train, test


def _same(a, b, rtol=0.0):
    assert a["test_id"].to_pylist() == b["test_id"].to_pylist()
    assert a["kind"].to_pylist() == b["kind"].to_pylist()
    assert a["train_id"].to_pylist() == b["train_id"].to_pylist()
    np.testing.assert_allclose(a["influence"].to_numpy(), b["influence"].to_numpy(), rtol=rtol, atol=0)


def test_ray_equals_single_process_and_any_worker_count(ray_local, data):
    task, train, test = data
    single = rayif.explain(task, train, test, top=10, solver=LISSA, seed=3)
    one = rayif.explain(task, train, test, top=10, solver=LISSA, seed=3, scaling=ScalingConfig(num_workers=1),
                        test_batch_size=4)
    two = rayif.explain(task, train, test, top=10, solver=LISSA, seed=3, scaling=ScalingConfig(num_workers=2),
                        test_batch_size=4)
    _same(one, single, rtol=1e-5)
    _same(two, one)  # bit-identical: repetition t has seed (seed, t) wherever it runs


def test_ray_exact_solver_and_knn_candidates(ray_local, data):
    task, train, test = data
    full = rayif.influence_matrix(task, train, test, rayif.ExactConfig())
    rng = np.random.default_rng(0)
    cand = np.stack([rng.choice(1000, size=50, replace=False) for _ in range(6)])
    table = rayif.explain(task, train, test, top=5, solver=rayif.ExactConfig(), candidates=cand,
                          scaling=ScalingConfig(num_workers=2))
    for row in range(6):
        vals = full[row, cand[row]]
        want = cand[row][np.argsort(-vals)[:5]]
        got = table.filter(table["test_id"].to_numpy() == 100 + row)
        got = got.filter(np.array(got["kind"].to_pylist()) == "harmful")["train_id"].to_pylist()
        assert got == want.tolist()


def test_a_killed_worker_is_replaced_and_the_result_is_identical(ray_local, data):
    task, train, test = data
    ex, obj = as_examples(train), Objective(task)
    v = grads_at_test_points(obj, as_examples(test))
    scale = rayif.ihvp.estimate_scale(obj, ex, LISSA, 0)
    cfg = LissaConfig(depth=600, repetitions=4)
    pool = WorkerPool.start(task, ex, ScalingConfig(num_workers=2, max_restarts=2))
    try:
        calm = distributed_s_test(pool, v, cfg, scale=scale, seed=0, chunk_size=256)
        calm_top = distributed_score(pool, calm, len(ex), top=10, chunk_size=128)
        result, pid = {}, ray.get(pool.actors[0].info.remote())["pid"]
        job = threading.Thread(target=lambda: result.update(
            s=distributed_s_test(pool, v, cfg, scale=scale, seed=0, chunk_size=256)))
        job.start()
        time.sleep(1.0)  # mid-LiSSA: each worker holds two repetitions of several seconds
        ray.kill(pool.actors[0], no_restart=False)
        job.join(timeout=300)
        assert torch.equal(result["s"], calm)
        assert ray.get(pool.actors[0].info.remote())["pid"] != pid  # a new process replaced it
        # and during scoring
        job = threading.Thread(target=lambda: result.update(
            top=distributed_score(pool, calm, len(ex), top=10, chunk_size=128)))
        job.start()
        time.sleep(0.2)
        ray.kill(pool.actors[1], no_restart=False)
        job.join(timeout=300)
        np.testing.assert_array_equal(result["top"].harmful_ids, calm_top.harmful_ids)
        np.testing.assert_array_equal(result["top"].helpful, calm_top.helpful)
    finally:
        pool.shutdown()


def test_resume_computes_only_missing_batches(ray_local, data, tmp_path, caplog):
    task, train, test = data
    kw = dict(top=5, solver=LISSA, seed=1, scaling=ScalingConfig(num_workers=2), test_batch_size=2,
              output_dir=str(tmp_path))
    first = rayif.explain(task, train, test, **kw)
    assert len(list(tmp_path.glob("batch-*.parquet"))) == 3
    (tmp_path / "batch-000001.parquet").unlink()  # as if the driver stopped before writing it
    stamp = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("batch-*.parquet")}
    with caplog.at_level(logging.INFO, logger="rayif"):
        again = rayif.explain(task, train, test, **kw)
    assert "2 of 3 test batches already done" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("batch-*.parquet") if p.name in stamp} == stamp
    _same(again, first)
    with pytest.raises(rayif.RayifError, match="different job"):
        rayif.explain(task, train, test, **{**kw, "seed": 2})


def test_one_replica_per_fake_gpu_and_cpu_fallback(ray_local, data, caplog):
    task, train, _ = data
    with caplog.at_level(logging.INFO, logger="rayif"):
        pool = WorkerPool.start(task, as_examples(train), ScalingConfig(num_workers=2, use_gpu=True))
    try:
        gpus = [info["gpu_ids"] for info in pool.infos]
        assert sorted(gpus) == [["0"], ["1"]]  # exactly one GPU each, different ones
        assert all(info["device"] == "cpu" for info in pool.infos)
        assert caplog.text.count("torch sees no CUDA device") == 2
        assert "falling back to CPU" in caplog.text
    finally:
        pool.shutdown()


def test_dead_pool_says_how_to_resume(ray_local, data):
    task, train, test = data
    ex = as_examples(train)
    pool = WorkerPool.start(task, ex, ScalingConfig(num_workers=1, max_restarts=0))
    v = grads_at_test_points(Objective(task), as_examples(test))
    ray.kill(pool.actors[0], no_restart=True)
    with pytest.raises(rayif.RayifError, match="max_restarts=0.*rerun with the same output_dir"):
        distributed_s_test(pool, v, LISSA, scale=1.0, seed=0, chunk_size=256)
