"""The FAISS index built through Ray Data: exactness, IVF recall, persistence, staleness, bad input."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from rayif import LissaConfig, RayifError, ScalingConfig, Task, as_examples, explain, influence_matrix
from rayif.digits import cross_entropy, make_model
from rayif.index import FeatureIndex, IndexConfig, build_index

K = 10


@pytest.fixture(scope="module")
def built(mlp, ray_local):
    """The digits MLP's flat index, built through Ray Data on ray.init(num_cpus=2)."""
    task, split = mlp
    return task, split, build_index(task, (split.x_train, split.y_train))


def _brute_force(task, split, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    model = task.build_model()
    f_train = task.compute_features(model, torch.as_tensor(split.x_train)).double().numpy()
    d = ((queries[:, None, :].astype(np.float64) - f_train[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, 1)


def test_flat_index_equals_numpy_brute_force(built):
    task, split, idx = built
    assert len(idx) == len(split.x_train) and idx.dim == 32
    q = idx.features_of(task, as_examples((split.x_test, split.y_test)))
    ids, dist = idx.search(q, K)
    want_ids, want_dist = _brute_force(task, split, q, K)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-4, atol=1e-4)
    # ids agree wherever the distance is not tied with a neighbour's (float32 vs float64 may swap ties)
    gap = np.diff(want_dist, axis=1)
    untied = np.ones_like(ids, dtype=bool)
    untied[:, 1:] &= gap > 1e-3
    untied[:, :-1] &= gap > 1e-3
    assert untied.mean() > 0.9
    np.testing.assert_array_equal(ids[untied], want_ids[untied])


def test_ivf_recall_against_flat_at_the_defaults(built):
    task, split, flat = built
    ivf = build_index(task, (split.x_train, split.y_train), IndexConfig(kind="ivf_flat"))
    assert ivf.meta["nlist"] > 1 and ivf.meta["nprobe"] < ivf.meta["nlist"]  # really approximate
    q = flat.features_of(task, as_examples((split.x_test, split.y_test)))
    a, b = flat.search(q, K)[0], ivf.search(q, K)[0]
    recall = np.mean([len(np.intersect1d(x, y)) / K for x, y in zip(a, b, strict=True)])
    assert recall >= 0.95, recall


def test_parquet_input_keeps_the_users_ids_and_groups_query_the_mean(mlp, ray_local, tmp_path):
    task, split = mlp
    ids = 10_000 + 7 * np.arange(len(split.x_train))  # not positions
    x = pa.FixedSizeListArray.from_arrays(pa.array(split.x_train.ravel()), split.x_train.shape[1])
    for part in range(2):
        sl = slice(part * 500, (part + 1) * 500)
        pq.write_table(pa.table({"uid": ids[sl], "pixels": x[sl]}), tmp_path / f"part{part}.parquet")
    idx = build_index(task, str(tmp_path), input_column="pixels", id_column="uid")
    assert sorted(faiss.vector_to_array(idx.index.id_map)) == sorted(ids)
    test = as_examples((split.x_test[:5], split.y_test[:5]))
    got = idx.candidates(task, test, K)
    q = idx.features_of(task, test)
    np.testing.assert_array_equal(got, 10_000 + 7 * _brute_force(task, split, q, K)[0])
    group = idx.candidates(task, test, K, group=True)
    assert group.shape == (1, K)
    np.testing.assert_array_equal(group, idx.search(q.mean(0, keepdims=True), K)[0])


def test_persist_reload_and_reuse(built, tmp_path, caplog):
    task, split, idx = built
    idx.save(tmp_path)
    q = idx.features_of(task, as_examples((split.x_test[:20], split.y_test[:20])))
    plain = faiss.read_index(str(tmp_path / "index.faiss"))  # no rayif needed to read it
    np.testing.assert_array_equal(plain.search(q, K)[1], idx.search(q, K)[0])
    back = FeatureIndex.load(tmp_path, task, num_rows=len(split.x_train))
    np.testing.assert_array_equal(back.search(q, K)[0], idx.search(q, K)[0])
    with caplog.at_level(logging.INFO, logger="rayif"):
        again = build_index(task, (split.x_train, split.y_train), path=tmp_path)
    assert "reusing the FAISS index" in caplog.text
    assert again.meta == idx.meta


def test_a_stale_index_is_refused(built, tmp_path):
    task, split, idx = built
    idx.save(tmp_path)
    state = {k: v + 1e-3 for k, v in task.build_model().state_dict().items()}  # "retrained" weights

    def other():
        m = make_model("mlp", dtype=torch.float64)
        m.load_state_dict(state)
        return m

    with pytest.raises(RayifError, match="stale.*model_fingerprint"):
        FeatureIndex.load(tmp_path, Task(other, cross_entropy, weight_decay=1e-3))
    with pytest.raises(RayifError, match="stale.*feature_fn"):
        FeatureIndex.load(tmp_path, Task(task.model_factory, cross_entropy, features=lambda m, x: x))
    with pytest.raises(RayifError, match="stale.*1000 training rows.*999"):
        FeatureIndex.load(tmp_path, task, num_rows=999)
    with pytest.raises(RayifError, match="another IndexConfig"):
        build_index(task, (split.x_train, split.y_train), IndexConfig(kind="ivf_flat"), path=tmp_path)


def test_bad_inputs_give_clear_errors(built, ray_local, tmp_path):
    task, split, idx = built
    pq.write_table(pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(split.x_train[:10].ravel()), 64)}),
                   tmp_path / "noid.parquet")
    with pytest.raises(RayifError, match=r"no column\(s\) \['id'\].*stable integer id"):
        build_index(task, str(tmp_path / "noid.parquet"))
    pq.write_table(pa.table({"id": np.arange(10.0), "x": pa.FixedSizeListArray.from_arrays(
        pa.array(split.x_train[:10].ravel()), 64)}), tmp_path / "floatid.parquet")
    with pytest.raises(RayifError, match="id column 'id' must hold integers, got float64"):
        build_index(task, str(tmp_path / "floatid.parquet"))  # raised inside a Ray Data actor
    with pytest.raises(RayifError, match=r"no column\(s\) \['x'\]"):
        build_index(task, ray.data.from_items([{"id": 0, "pixels": split.x_train[0]}]))
    with pytest.raises(RayifError, match="empty"):
        build_index(task, ray.data.from_items([{"id": 0, "x": split.x_train[0]}]).limit(0))
    with pytest.raises(RayifError, match=r"query features must be \[m, 32\]"):
        idx.search(np.zeros((3, 16), np.float32), K)
    with pytest.raises(RayifError, match="k=1001 .* 1000 training rows"):
        idx.search(np.zeros((3, 32), np.float32), len(split.x_train) + 1)
    with pytest.raises(RayifError, match="ids are not unique"):
        build_index(task, {"x": split.x_train[:50], "y": split.y_train[:50], "id": np.zeros(50, int)})
    pq.write_table(pa.table({"id": np.zeros(100, np.int64), "x": pa.FixedSizeListArray.from_arrays(
        pa.array(split.x_train[:100].ravel()), 64)}), tmp_path / "dupid.parquet")
    with pytest.raises(RayifError, match="training ids are not unique"):  # IVF keeps no id map to check
        build_index(task, str(tmp_path / "dupid.parquet"), IndexConfig(kind="ivf_flat"))


def test_gpu_request_on_a_fake_gpu_cluster_falls_back_to_cpu(built, caplog):
    task, split, idx = built
    with caplog.at_level(logging.INFO, logger="rayif"):
        gpu = build_index(task, (split.x_train, split.y_train), IndexConfig(use_gpu=True))
    assert "num_gpus" in caplog.text  # the actors were scheduled on the (fake) GPUs
    assert "FAISS on CPU" in caplog.text
    q = np.zeros((2, 32), np.float32)
    np.testing.assert_array_equal(gpu.search(q, K)[0], idx.search(q, K)[0])


def test_explain_with_an_index_ranks_each_test_points_neighbours(built, ray_local):
    task, split, idx = built
    train, test = (split.x_train, split.y_train), (split.x_test[:4], split.y_test[:4])
    lissa = LissaConfig(depth=200, repetitions=1)
    table = explain(task, train, test, top=5, solver=lissa, index=idx, k=40)
    full = influence_matrix(task, train, test, solver=lissa)  # [4, n], ids are positions here
    cand = idx.candidates(task, as_examples(test), 40)
    for row in range(4):
        got = table.filter((table["test_id"].to_numpy() == row) & (np.array(table["kind"].to_pylist()) == "harmful"))
        want = cand[row][np.argsort(-full[row, cand[row]], kind="stable")[:5]]
        assert got["train_id"].to_pylist() == want.tolist()
        np.testing.assert_allclose(got["influence"].to_numpy(), full[row, want], rtol=1e-6)
    on_ray = explain(task, train, test, top=5, solver=lissa, index=idx, k=40,
                     scaling_config=ScalingConfig(num_workers=2))
    assert on_ray["train_id"].to_pylist() == table["train_id"].to_pylist()
    np.testing.assert_allclose(on_ray["influence"].to_numpy(), table["influence"].to_numpy(), rtol=1e-5)
    group = explain(task, train, test, top=5, solver=lissa, index=idx, k=40, group=True)
    assert set(group["train_id"].to_pylist()) <= set(idx.candidates(task, as_examples(test), 40, group=True)[0])
    with pytest.raises(RayifError, match="k= candidates per test point, at least top=5"):
        explain(task, train, test, top=5, solver=lissa, index=idx, k=3)


def test_a_ray_dataset_with_scalar_feature_columns(mlp, ray_local):
    task, split = mlp
    cols = [f"p{j}" for j in range(64)]
    rows = [{"key": 3 * i + 1, **{c: float(v) for c, v in zip(cols, x, strict=True)}}
            for i, x in enumerate(split.x_train[:300])]
    idx = build_index(task, ray.data.from_items(rows), input_column=cols, id_column="key")
    assert len(idx) == 300
    q = idx.features_of(task, as_examples((split.x_train[:300], split.y_train[:300])))
    ids, dist = idx.search(q, 1)
    np.testing.assert_array_equal(ids[:, 0], 3 * np.arange(300) + 1)  # every row is its own nearest
    np.testing.assert_allclose(dist[:, 0], 0, atol=1e-4)


def test_an_index_of_arrays_in_memory_searches_as_numpy_does():
    rng = np.random.default_rng(0)
    base, queries, ids = rng.normal(size=(300, 8)), rng.normal(size=(4, 8)), np.arange(300) * 10 + 7
    near = FeatureIndex.from_arrays(ids, base)
    want = np.argsort(((queries[:, None, :] - base[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(near.search(queries, 5)[0], ids[want])
    sketch = FeatureIndex.from_arrays(ids, base, IndexConfig(source="sketch"))
    got = sketch.sketch_halves(queries.astype(np.float32), 6)  # 3 of largest -q.v, then 3 of largest q.v
    dots = queries @ base.T
    np.testing.assert_array_equal(got[:, :3], ids[np.argsort(dots, axis=1)[:, :3]])
    np.testing.assert_array_equal(got[:, 3:], ids[np.argsort(-dots, axis=1)[:, :3]])
