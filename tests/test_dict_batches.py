"""Dict batches through every path: a small nn.TransformerEncoder classifier with frozen lower layers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import scipy.stats as st
import torch

import rayif
from rayif import CGConfig, ExactConfig, LissaConfig, RayifError, RunConfig, ScalingConfig, tokens
from rayif.index import build_index
from rayif.results import metadata

DAMPING = 1e-3


@pytest.fixture(scope="module")
def tx():
    """The token classifier trained on 300 sequences; influence on its top layers (594 parameters)."""
    train, test = tokens.make_tokens(300, seed=0), tokens.make_tokens(40, seed=1, label_noise=0.0)
    return tokens.token_task(train), train, test


def test_top_layers_only_and_frozen_lower_layers(tx):
    task, _, _ = tx
    model = task.build_model()
    selected = task.selected_params(model)
    assert selected and all(n.startswith(tokens.TOP_LAYERS) for n in selected)
    assert sum(model.get_parameter(n).numel() for n in selected) == 594
    assert not model.embed.weight.requires_grad and not model.encoder.layers[0].linear1.weight.requires_grad


def test_cg_matches_exact_through_dict_batches_in_process_and_on_ray(tx, ray_local):
    task, train, test = tx
    tr, te = train.batch(), test.batch(slice(0, 6))
    exact = rayif.influence_matrix(task, tr, te, ExactConfig(damping=DAMPING))
    cg = rayif.influence_matrix(task, tr, te, CGConfig(damping=DAMPING, tol=1e-8))
    pearson = [st.pearsonr(a, b)[0] for a, b in zip(exact, cg, strict=True)]
    assert min(pearson) >= 0.99, pearson
    on_ray = rayif.influence_matrix(task, tr, te, CGConfig(damping=DAMPING, tol=1e-8),
                                    scaling_config=ScalingConfig(num_workers=2), run_config=RunConfig(solve_block=3))
    np.testing.assert_allclose(on_ray, cg, rtol=1e-6, atol=1e-9 * np.abs(cg).max())
    # and the ranked table: the same top harmful as the exact matrix says
    table = rayif.explain(task, tr, te, top=5, solver=CGConfig(damping=DAMPING, tol=1e-8),
                          scaling_config=ScalingConfig(num_workers=2))
    for row in range(6):
        got = table.filter((table["test_id"].to_numpy() == row) & (np.array(table["kind"].to_pylist()) == "harmful"))
        assert len(set(got["train_id"].to_pylist()) & set(np.argsort(-exact[row])[:5])) >= 4


def test_ggn_and_ekfac_through_dict_batches(tx):
    """The GGN splits batch_loss at the model's output; EK-FAC covers the Linear layers (tokens as extra rows)
    and the layer norm (its diagonal): preconditioned CG answers exact GGN's question, LiSSA cannot diverge."""
    task, train, test = tx
    tr, te = train.batch(), test.batch(slice(0, 4))
    exact = rayif.influence_matrix(task, tr, te, ExactConfig(curvature="ggn"))
    pcg = rayif.influence_matrix(task, tr, te, CGConfig(curvature="ggn", tol=1e-8))
    np.testing.assert_allclose(pcg, exact, rtol=1e-5, atol=1e-7 * np.abs(exact).max())
    for batch_size in (1, 128):
        cfg = LissaConfig(curvature="ggn", batch_size=batch_size, depth=150, tol=None, repetitions=1)
        assert bool(torch.isfinite(rayif.compute_s_test(task, tr, te, cfg)).all())


def test_parquet_and_ray_dataset_columns_become_dict_batches(tx, ray_local, tmp_path):
    task, train, test = tx
    cols = {k: pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), v.shape[1]) if v.ndim == 2 else pa.array(v)
            for k, v in train.batch().items()}
    ids = 1000 + np.arange(len(train))
    pq.write_table(pa.table({"id": ids, **cols}), tmp_path / "train.parquet")
    ex = rayif.data.read_examples(tmp_path / "train.parquet", dict_batch=True)
    assert sorted(ex.batch) == ["attention_mask", "input_ids", "labels"] and (ex.ids == ids).all()
    te = test.batch(slice(0, 3))
    want = rayif.influence_matrix(task, train.batch(), te, ExactConfig(damping=DAMPING))
    got = rayif.influence_matrix(task, ex, te, ExactConfig(damping=DAMPING))
    np.testing.assert_allclose(got, want, rtol=1e-8)
    ds = ray.data.read_parquet(str(tmp_path / "train.parquet"))
    from_ds = rayif.influence_matrix(task, ds, te, ExactConfig(damping=DAMPING))
    np.testing.assert_allclose(from_ds, want, rtol=1e-8)


def test_the_knn_feature_is_the_pooled_representation(tx, ray_local):
    task, train, test = tx
    idx = build_index(task, train.batch())
    assert len(idx) == len(train) and idx.dim == 16
    model = task.build_model()
    b = {k: torch.as_tensor(v) for k, v in test.batch(slice(0, 5)).items()}
    with torch.no_grad():
        h = model.encoder(model.embed(b["input_ids"]) + model.position, src_key_padding_mask=b["attention_mask"] == 0)
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        pooled = ((h * m).sum(1) / m.sum(1)).float().numpy()
    np.testing.assert_allclose(idx.features_of(task, rayif.as_examples(test.batch(slice(0, 5)), dict_batch=True)),
                               pooled, rtol=1e-5, atol=1e-6)
    table = rayif.explain(task, train.batch(), test.batch(slice(0, 5)), top=3, solver=ExactConfig(damping=DAMPING),
                          index=idx, k=30)
    near = idx.candidates(task, test.batch(slice(0, 5)), 30)
    for row in range(5):
        assert set(table.filter(table["test_id"].to_numpy() == row)["train_id"].to_pylist()) <= set(near[row])
    assert metadata(table)["candidates"]["source"] == "index"


def test_dict_batch_mistakes_are_clear(tx):
    task, train, test = tx
    bad = dict(train.batch())
    bad["attention_mask"] = bad["attention_mask"][:-1]
    with pytest.raises(RayifError, match="every tensor needs the examples on its first dimension"):
        rayif.explain(task, bad, test.batch(), solver=ExactConfig())
    with pytest.raises(RayifError, match=r"rejects training data: input_ids \(11,\)"):
        rayif.explain(task, {**train.batch(), "input_ids": train.input_ids[:, :11]}, test.batch(), solver=ExactConfig())
    with pytest.raises(RayifError, match="one training loss"):
        rayif.Task(model_factory=task.model_factory)
