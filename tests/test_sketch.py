"""Gradient sketches: the map itself (unbiased, per-example = projected gradients), the sketch index through Ray
Data, its recall against exact influence, staleness and bad input."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

import rayif
from rayif import RayifError, Task, explain, influence_matrix
from rayif.config import ExactConfig
from rayif.data import Examples
from rayif.digits import cross_entropy
from rayif.grads import Objective
from rayif.index import FeatureIndex, GradientSketch, IndexConfig, build_index
from rayif.index.sketch import Sketcher, fit_basis
from rayif.results import metadata

from .test_products import MODELS, _data, _task

# --- the map ------------------------------------------------------------------------------------------


class _Tokens(nn.Module):
    """A Linear over every position of a sequence (inputs [b, T, in]), a LayerNorm, a masked mean, a head."""

    def __init__(self, seq_first: bool = False):
        super().__init__()
        self.seq_first = seq_first
        self.proj, self.norm, self.head = nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x, mask):
        if self.seq_first:  # [T, b, in]: the Linear's first dimension is no longer the example
            h = self.proj(x.transpose(0, 1)).transpose(0, 1)
        else:
            h = self.proj(x)
        h = torch.tanh(self.norm(h))
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def _tokens_task(seq_first: bool) -> tuple[Task, dict]:
    torch.manual_seed(0)
    model = _Tokens(seq_first).double()
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(6, 4, dtype=torch.int64)
    mask[::2, -1] = 0
    batch = {"x": torch.randn(6, 4, 5, generator=gen, dtype=torch.float64), "mask": mask,
             "y": torch.randint(0, 3, (6,), generator=gen)}
    task = Task(lambda: model, batch_loss=lambda f, b: cross_entropy(f(b["x"], b["mask"]), b["y"]), weight_decay=1e-2)
    return task, batch


def _sketch_equals_projected_gradients(task: Task, batch, width: int) -> Sketcher:
    obj = Objective(task)
    sk = Sketcher(obj, width, seed=3)
    got = sk.sketch(batch)
    grads = obj.train_grads(Examples(batch, np.arange(len(got))))  # [b, p], regulariser included
    torch.testing.assert_close(got, sk.project(grads), rtol=1e-10, atol=1e-12)
    return sk


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("width", [8, 4096], ids=["random", "exact"])
def test_per_example_sketches_equal_the_projection_of_per_example_gradients(name, width):
    """The sketch of each row, from the Linears' factors and per-example gradients of the rest, is R of its
    full per-example gradient: on every model of the product tests, in the random and the exact stage 1."""
    task = _task(name)
    sk = _sketch_equals_projected_gradients(task, _data(MODELS[name][3], torch.Generator().manual_seed(0)), width)
    assert sk.exact == (width == 4096)
    assert sk._factored == any(b.module is not None for b in sk.blocks)  # the Kronecker path was taken


def test_sequence_inputs_take_the_kronecker_path_and_a_seq_first_model_falls_back(caplog):
    task, batch = _tokens_task(seq_first=False)
    with caplog.at_level(logging.WARNING, logger="rayif"):
        sk = _sketch_equals_projected_gradients(task, batch, 16)
    assert sk._factored and not caplog.records
    task, batch = _tokens_task(seq_first=True)
    with caplog.at_level(logging.WARNING, logger="rayif"):
        sk = _sketch_equals_projected_gradients(task, batch, 16)
    assert not sk._factored  # its per-example factors mix examples: the check caught it, the sketch is right
    assert "does not apply to this model" in caplog.text


def test_the_random_stage_is_unbiased_for_inner_products():
    """Over seeds, the mean sketched inner product of random vector pairs is the true one within 4 standard
    errors; the same check on a map whose Gaussian factors are 10% too large (biased) fails, so it can fail."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 40), nn.Tanh(), nn.LayerNorm(40), nn.Linear(40, 20)).double()
    obj = Objective(Task(lambda: model, loss=cross_entropy))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, obj.num_params, generator=gen, dtype=torch.float64)
    y = 0.5 * x + torch.rand(3, obj.num_params, generator=gen, dtype=torch.float64)
    true = (x * y).sum(1).numpy()
    fair, biased = [], []
    for seed in range(1000):
        sk = Sketcher(obj, 24, seed)
        assert not sk.exact and all(b.a is not None and b.b is not None for b in sk.blocks if b.module is not None)
        fair.append((sk.project(x) * sk.project(y)).sum(1).numpy())
        for blk in sk.blocks:  # a deliberately biased map: Gaussian factors normalised by 0.83 d instead of d
            if blk.module is not None:
                blk.a, blk.b = blk.a * 1.1, blk.b * 1.1
        biased.append((sk.project(x) * sk.project(y)).sum(1).numpy())
    for values, ok in ((np.array(fair), True), (np.array(biased), False)):
        z = np.abs(values.mean(0) - true) / (values.std(0, ddof=1) / np.sqrt(len(values)))
        assert (z < 4).all() if ok else (z > 5).all(), z


def test_the_basis_keeps_inner_products_inside_the_sampled_span():
    gen = torch.Generator().manual_seed(0)
    span = torch.randn(5, 50, generator=gen, dtype=torch.float64)
    sample = torch.randn(40, 5, generator=gen, dtype=torch.float64) @ span
    basis = fit_basis(sample, 8)
    assert basis.dim == 5 and abs(basis.energy_kept - 1) < 1e-12  # rank 5: five directions hold everything
    a, b = sample[:3], torch.randn(4, 5, generator=gen, dtype=torch.float64) @ span
    torch.testing.assert_close((a @ basis.u) @ (b @ basis.u).T, a @ b.T)
    assert fit_basis(sample, 3).energy_kept < 1


# --- the index through Ray Data -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sketched(mlp, ray_local):
    """The digits MLP's flat sketch index (d = 256 of p = 2410 exact stage-1 coordinates), via Ray Data."""
    task, split = mlp
    return task, split, build_index(task, (split.x_train, split.y_train), IndexConfig(source="sketch", batch_size=256))


def test_the_index_through_ray_data_equals_the_sketches_in_one_process(sketched):
    task, split, idx = sketched
    assert idx.source == "sketch" and idx.dim == 256 and idx.meta["metric"] == "ip"
    assert idx.meta["sketch"]["exact"] and idx.meta["sketch"]["basis_rows"] == 1000
    here = GradientSketch(Objective(task), 32768, 0, idx.basis)
    x, y = torch.as_tensor(split.x_train), torch.as_tensor(split.y_train)
    want = np.concatenate([here.train((x[i : i + 300], y[i : i + 300])) for i in range(0, len(x), 300)])
    got = idx.index.reconstruct_batch(np.arange(len(x), dtype=np.int64))  # ids are row positions here
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_an_ivf_sketch_index_probing_every_cell_finds_what_flat_finds(sketched):
    """The IVF plumbing (ids, basis, inner-product cells): probing every cell is an exhaustive search. (With
    fewer probes IVF misses much of the harmful side on sketches: see the README's measurements.)"""
    task, split, flat = sketched
    ivf = build_index(task, (split.x_train, split.y_train), IndexConfig(source="sketch", kind="ivf_flat",
                                                                         batch_size=256, nprobe=1000))
    assert ivf.meta["nlist"] > 1 and ivf.meta["nprobe"] == ivf.meta["nlist"]
    np.testing.assert_array_equal(ivf.basis.u.numpy(), flat.basis.u.numpy())  # the same rows fit the basis
    s = rayif.compute_s_test(task, (split.x_train, split.y_train), (split.x_test[:50], split.y_test[:50]),
                             ExactConfig())
    a, b = flat.sketch_candidates(task, s, 20), ivf.sketch_candidates(task, s, 20)
    recall = np.mean([len(np.intersect1d(x, y)) / 20 for x, y in zip(a, b, strict=True)])
    assert recall >= 0.99, recall


def test_explain_with_a_sketch_index_on_ray_workers(sketched, ray_local, tmp_path):
    """Candidates from each batch's s_test: the ranking equals explain over the whole training set where the
    candidates hold the truth; 1 and 2 workers agree; the job records the index and resumes."""
    task, split, idx = sketched
    train, test = (split.x_train, split.y_train), (split.x_test[:8], split.y_test[:8])
    run = rayif.RunConfig(output_dir=str(tmp_path / "out"), test_batch_size=4)
    one = explain(task, train, test, index=idx, k=100, top=5, solver="exact", run_config=run)
    two = explain(task, train, test, index=idx, k=100, top=5, solver="exact",
                  scaling_config=rayif.ScalingConfig(num_workers=2))
    a, b = one.to_pydict(), two.to_pydict()  # the same ranking; values to float rounding (BLAS threads differ)
    assert one.num_rows == 8 * 2 * 5 and a["train_id"] == b["train_id"] and a["test_id"] == b["test_id"]
    np.testing.assert_allclose(a["influence"], b["influence"], rtol=1e-9)
    full = explain(task, train, test, top=5, solver="exact").to_pydict()
    assert np.mean(np.array(one.to_pydict()["train_id"]) == np.array(full["train_id"])) >= 0.9
    assert metadata(one)["candidates"]["k"] == 100
    again = explain(task, train, test, index=idx, k=100, top=5, solver="exact", run_config=run)  # resumes
    assert again.to_pydict() == one.to_pydict()
    group = explain(task, train, test, index=idx, k=100, top=5, solver="exact", group=True)
    assert set(group.to_pydict()["test_id"]) == {-1}


def test_a_stale_sketch_index_is_refused(sketched, tmp_path):
    task, split, idx = sketched
    train = (split.x_train, split.y_train)
    path = tmp_path / "idx"
    idx.save(path)
    assert FeatureIndex.load(path, task).basis is not None
    with pytest.raises(RayifError, match="another IndexConfig"):
        build_index(task, train, IndexConfig(source="sketch", sketch_dim=128), path=path)
    with pytest.raises(RayifError, match="another IndexConfig"):
        build_index(task, train, IndexConfig(source="sketch", seed=1), path=path)
    top_only = Task(task.model_factory, loss=task.loss, weight_decay=task.weight_decay, params=("2.",))
    with pytest.raises(RayifError, match="stale.*sketch_params"):
        FeatureIndex.load(path, top_only)
    other = Task(lambda: _perturbed(task), loss=task.loss, weight_decay=task.weight_decay)
    with pytest.raises(RayifError, match="stale.*model_fingerprint"):
        FeatureIndex.load(path, other)
    torch.save({"u": idx.basis.u * 2, "energy_kept": 1.0, "rows": 1}, path / "sketch_basis.pt")
    with pytest.raises(RayifError, match="not the basis"):
        FeatureIndex.load(path)


def _perturbed(task: Task) -> nn.Module:
    model = task.build_model()
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    return model


def test_bad_sketch_inputs_give_clear_errors(sketched):
    task, split, idx = sketched
    with pytest.raises(RayifError, match="metric='ip'"):
        IndexConfig(source="sketch", metric="l2")
    with pytest.raises(RayifError, match="source must be one of"):
        IndexConfig(source="gradients")
    with pytest.raises(RayifError, match="sketch_dim must be >= 1"):
        IndexConfig(source="sketch", sketch_dim=0)
    with pytest.raises(RayifError, match="from s_test"):
        idx.candidates(task, (split.x_test[:2], split.y_test[:2]), 10)
    s = torch.zeros(2, 2410, dtype=torch.float64)
    with pytest.raises(RayifError, match=r"k must be in \[2, 2000\]"):
        idx.sketch_candidates(task, s, 2001)
    with pytest.raises(RayifError, match=r"must be \[m, 2410\]"):
        idx.sketch_candidates(task, torch.zeros(2, 7, dtype=torch.float64), 10)
    with pytest.raises(RayifError, match="at least top"):
        explain(task, (split.x_train, split.y_train), (split.x_test[:2], split.y_test[:2]), index=idx, k=4, top=5)


def test_nan_gradients_are_named(mlp):
    task, split = mlp
    x = torch.as_tensor(split.x_train[:4]).clone()
    x[2] = float("nan")
    with pytest.raises(rayif.NonFiniteError, match="training gradient sketch"):
        GradientSketch(Objective(task), 32768, 0).train((x, torch.as_tensor(split.y_train[:4])))


def test_influence_of_sketch_candidates_is_exact(sketched, mlp):
    """Candidates only choose what is scored: each reported value is the exact influence."""
    task, split, idx = sketched
    train, test = (split.x_train, split.y_train), (split.x_test[:3], split.y_test[:3])
    table = explain(task, train, test, index=idx, k=50, top=5, solver="exact").to_pydict()
    values = influence_matrix(task, train, test, ExactConfig())
    for t, i, v in zip(table["test_id"], table["train_id"], table["influence"], strict=True):
        assert abs(values[t, i] - v) <= 1e-9 * max(1.0, abs(v))


def test_parquet_and_a_ray_dataset_give_the_in_memory_sketch_index(sketched, tmp_path):
    """Parquet (the target column read by the actors, the basis from the files' first rows) and a Dataset
    built from the same rows give the same sketches as in-memory arrays."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    task, split, idx = sketched
    x, y = split.x_train, split.y_train
    for part in range(2):
        rows = slice(part * 500, (part + 1) * 500)
        pq.write_table(pa.table({"id": np.arange(len(x))[rows], "label": y[rows],
                                 "pixels": pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), 64)}),
                       tmp_path / f"part-{part}.parquet")
    config = IndexConfig(source="sketch", batch_size=256)
    for data in (str(tmp_path), ray.data.read_parquet(str(tmp_path))):
        got = build_index(task, data, config, input_column="pixels", target_column="label")
        # the same rows fit the basis; float32 stage-1 sketches of other batch shapes round differently
        u = idx.basis.u.numpy()
        np.testing.assert_allclose(got.basis.u.numpy(), u, rtol=1e-5, atol=1e-6 * np.abs(u).max())
        ids = np.arange(len(x), dtype=np.int64)
        np.testing.assert_allclose(got.index.reconstruct_batch(ids), idx.index.reconstruct_batch(ids), rtol=1e-5,
                                   atol=1e-7)
    with pytest.raises(RayifError, match=r"no column\(s\) \['y'\]"):
        build_index(task, str(tmp_path), config, input_column="pixels")
