"""Curvature-vector products batched over vectors: equal to one double backward per vector, for every layer
users have, both curvatures, frozen and selected parameters; nothing runs once per vector; fallbacks say so."""

from __future__ import annotations

import collections
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rayif
from rayif import digits
from rayif.curvature import BATCHED_FROM, product, unbatched_op
from rayif.grads import Objective

B, M = 6, BATCHED_FROM + 1  # rows per batch, vectors per product (enough for the batched path)


class _Tokens(nn.Module):
    """Embedding -> LayerNorm -> sigmoid -> masked mean -> Linear: dict batches with a mask."""

    def __init__(self):
        super().__init__()
        self.embed, self.norm, self.head = nn.Embedding(11, 4), nn.LayerNorm(4), nn.Linear(4, 3)

    def forward(self, ids, mask):
        h = torch.sigmoid(self.norm(self.embed(ids)))
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


class _Softmax(nn.Module):
    """Softmax as a hidden activation (attention-like weights), then a linear map."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.softmax(self.a(x), dim=-1))


def _ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


def _mse(out, y):
    return F.mse_loss(out, y, reduction="none").sum(-1)


def _data(kind: str, gen: torch.Generator):
    x = torch.randn(B, 5, generator=gen, dtype=torch.float64)
    if kind == "conv1d":
        return torch.randn(B, 2, 7, generator=gen, dtype=torch.float64), torch.randn(B, 2, generator=gen,
                                                                                     dtype=torch.float64)
    if kind == "conv2d":
        return torch.randn(B, 1, 5, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (B,), generator=gen)
    if kind == "tokens":
        ids = torch.randint(0, 11, (B, 4), generator=gen)
        mask = torch.ones(B, 4, dtype=torch.int64)
        mask[::2, -1] = 0
        return {"ids": ids, "mask": mask, "y": torch.randint(0, 3, (B,), generator=gen)}
    if kind == "image":
        return torch.randn(B, 64, generator=gen, dtype=torch.float64), torch.randint(0, 10, (B,), generator=gen)
    if kind == "softmax":
        return x, torch.randn(B, 2, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (B,), generator=gen)


# name -> (model, loss, params selected (None: all), data kind)
MODELS = {
    "linear-tanh-ce": (lambda: nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)), _ce, None, "x"),
    "linear-relu-ce-top": (lambda: nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)), _ce, ("2.",), "x"),
    "linear-gelu-ce": (lambda: nn.Sequential(nn.Linear(5, 4), nn.GELU(), nn.Linear(4, 3)), _ce, None, "x"),
    "conv1d-relu-mse": (lambda: nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(15, 2)),
                        _mse, None, "conv1d"),
    "conv2d-gelu-ce-frozen-head": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU(), nn.Flatten(),
                                                         nn.Linear(18, 3)), _ce, ("0.",), "conv2d"),
    "embedding-layernorm-sigmoid": (_Tokens, None, None, "tokens"),
    "embedding-frozen-layernorm": (_Tokens, None, ("norm.", "head.weight"), "tokens"),
    "softmax-mse": (_Softmax, _mse, None, "softmax"),
    # the digits CNN (Conv2d, ReLU, MaxPool2d, Linear, tanh) of benchmarks/hvp.py, narrower head
    "digits-cnn": (lambda: digits.make_model("cnn", hidden=8), _ce, None, "image"),
}


def _task(name: str) -> rayif.Task:
    build, loss, params, kind = MODELS[name]
    torch.manual_seed(0)
    model = build().double()
    if kind == "tokens":
        return rayif.Task(lambda: model, batch_loss=lambda f, b: _ce(f(b["ids"], b["mask"]), b["y"]),
                          weight_decay=1e-2, params=params)
    return rayif.Task(lambda: model, loss=loss, weight_decay=1e-2, params=params)


def per_vector_ops(obj: Objective, batch, curvature: str = "hessian", path: str = "batched") -> list[str]:
    """The operations (as the profiler sees them) whose count grows from a product of 2 vectors to one of 3."""
    counts = []
    for m in (2, 3):
        v = obj.theta.detach()[None].expand(m, -1).clone()
        with torch.autograd.profiler.profile(use_kineto=False) as prof:
            product(obj, v, batch, curvature, path=path)
        counts.append(collections.Counter(e.name for e in prof.function_events))
    return sorted(op for op, k in counts[1].items() if k > counts[0][op])


def _per_vector_hessian(obj: Objective, vectors, batch):
    """One double backward per vector: the reference."""
    theta = obj.theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(obj.train_losses(theta, batch).mean(), theta, create_graph=True)
    return torch.stack([torch.autograd.grad(g, theta, v, retain_graph=True)[0] for v in vectors])


def _per_vector_ggn(obj: Objective, vectors, batch):
    """``J^T H J v`` per vector from the Jacobian of the outputs and each example's loss Hessian in them."""
    theta = obj.theta.detach()
    out = obj.outputs(theta, batch).detach()
    jac = torch.autograd.functional.jacobian(lambda th: obj.outputs(th, batch), theta)  # [b, k, p]
    hess = torch.autograd.functional.hessian(lambda o: obj.output_losses(o, batch).sum(), out)  # [b,k,b,k]
    k = out[0].numel()
    jac, hess = jac.reshape(B, k, -1), hess.reshape(B, k, B, k)
    rows = []
    for v in vectors:
        jv = jac @ v  # [b, k]
        hjv = torch.einsum("akbl,bl->ak", hess, jv)
        rows.append(torch.einsum("akp,ak->p", jac, hjv) / B + obj.task.weight_decay * v)
    return torch.stack(rows)


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
@pytest.mark.parametrize("name", list(MODELS))
def test_batched_products_equal_one_double_backward_per_vector(name, curvature):
    obj = Objective(_task(name))
    gen = torch.Generator().manual_seed(1)
    batch = _data(MODELS[name][3], gen)
    v = torch.randn(M, obj.num_params, generator=gen, dtype=torch.float64)
    want = (_per_vector_hessian if curvature == "hessian" else _per_vector_ggn)(obj, v, batch)
    assert want.abs().max() > 1e-3  # a product that is zero would match anything
    for path in ("batched", "autograd"):
        torch.testing.assert_close(product(obj, v, batch, curvature, path=path), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(obj.product(v, batch, curvature), want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(obj.product(v[:1], batch, curvature), want[:1], rtol=1e-10, atol=1e-12)
    # batched means each operation runs once whatever the number of vectors; the old path loops for some
    assert per_vector_ops(obj, batch, curvature) == []
    assert unbatched_op(obj, batch, curvature) is None


def test_the_old_autograd_path_is_seen_to_loop_over_vectors():
    """The check that the batched path has no per-vector operation can fail: on the autograd path it finds
    the activation and loss backwards that run once per vector."""
    obj = Objective(_task("linear-tanh-ce"))
    batch = _data("x", torch.Generator().manual_seed(0))
    looped = set(per_vector_ops(obj, batch, path="autograd"))
    assert {"aten::tanh_backward", "aten::_log_softmax_backward_data"} <= looped, looped


def test_a_layer_without_a_batching_rule_still_gives_the_product_and_is_named_once(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.Upsample(scale_factor=2, mode="nearest-exact"), nn.Flatten(),
                          nn.Tanh(), nn.Linear(6, 3)).double()

    def unsqueezed(m):  # Upsample wants [b, channels, length]
        return lambda x: m[4](m[3](m[2](m[1](m[0](x).unsqueeze(1)))))

    task = rayif.Task(lambda: model, batch_loss=lambda f, b: _ce(f(b[0]), b[1]), weight_decay=1e-2)
    obj = Objective(task)
    obj.model.forward = unsqueezed(obj.model)
    batch = _data("x", torch.Generator().manual_seed(0))
    v = torch.randn(M, obj.num_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="rayif.curvature"):
        for _ in range(3):
            got = obj.product(v, batch)
    torch.testing.assert_close(got, _per_vector_hessian(obj, v, batch), rtol=1e-10, atol=1e-12)
    notes = [r.getMessage() for r in caplog.records if "once per vector" in r.getMessage()]
    assert len(notes) == 1, notes
    assert "aten::_upsample_nearest_exact1d" in notes[0] and "1 (Upsample)" in notes[0], notes
    assert unbatched_op(obj, batch) == "aten::_upsample_nearest_exact1d"


class _Cube(torch.autograd.Function):
    """x**3 with a backward and a vmap rule but no forward-mode rule (no jvp)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x * x


class _CubeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.b(_Cube.apply(self.a(x)))


def test_ggn_on_a_model_without_forward_mode_falls_back_to_reverse_mode_and_says_so(caplog):
    torch.manual_seed(0)
    model = _CubeNet().double()
    obj = Objective(rayif.Task(lambda: model, loss=_ce, weight_decay=1e-2))
    batch = _data("x", torch.Generator().manual_seed(0))
    v = torch.randn(M, obj.num_params, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="rayif.curvature"):
        got = [obj.product(v, batch, "ggn") for _ in range(2)]
    want = _per_vector_ggn(obj, v, batch)
    for g in got:
        torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)
    notes = [r.getMessage() for r in caplog.records if "cannot run this model" in r.getMessage()]
    assert len(notes) == 1 and "jvp" in notes[0], notes
    # the Hessian needs only reverse mode: still batched
    torch.testing.assert_close(obj.product(v, batch), _per_vector_hessian(obj, v, batch), rtol=1e-10, atol=1e-12)
    assert obj.product_paths["hessian"] == "batched"


def test_float32_products_match_float64():
    task = _task("conv2d-gelu-ce-frozen-head")
    obj64 = Objective(task)
    m32 = task.build_model().float()
    obj32 = Objective(task, model=m32)
    x, y = _data("conv2d", torch.Generator().manual_seed(0))
    v = torch.randn(M, obj64.num_params, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for curvature in ("hessian", "ggn"):
        want = obj64.product(v, (x, y), curvature)
        got = obj32.product(v.float(), (x.float(), y), curvature)
        assert np.allclose(got.double().numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_full_data_products_take_larger_chunks_only_where_activations_are_narrow(mlp, monkeypatch):
    """The row chunk of a full-data product grows with a narrow model and few vectors, never past what the
    widest activation allows, and the sum is the 256-row chunks' sum to rounding; a module whose own work no
    hook sees (parameters and children) keeps the chunk size."""
    task, sp = mlp
    obj = Objective(task)
    train = rayif.data.as_examples((sp.x_train, sp.y_train))
    assert obj.widest(train) == 64  # the digits' 64 pixels; the hidden layer is 32
    assert [obj.product_rows(m, 256, train) for m in (1, 50, 64)] == [2048, 1024, 1024]
    assert obj.product_rows(65, 256, train) == 512  # one more vector: 1024 rows would pass 2**22 values
    seen = []
    real = Objective.product

    def spy(self, vectors, batch, curvature="hessian"):
        seen.append(len(batch[0]))
        return real(self, vectors, batch, curvature)

    v = torch.randn(50, obj.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(Objective, "product", spy)
    got = obj.full_hvp(v, train, 256)
    assert seen == [1000]  # one chunk for the 1000 rows
    seen.clear()
    want = sum(obj.product(v, c.batch) * (len(c) / len(train)) for c in train.chunks(256))
    assert seen == [256, 256, 256, 232]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)

    class Owner(nn.Module):  # a parameter of its own beside a child: its internals could be wide
        def __init__(self):
            super().__init__()
            self.w, self.head = nn.Parameter(torch.randn(64, 64, dtype=torch.float64)), nn.Linear(64, 10).double()

        def forward(self, x):
            return self.head(torch.tanh(x @ self.w))

    owner = Objective(rayif.Task(lambda: Owner(), loss=digits.cross_entropy))
    assert owner.widest(train) == 0 and owner.product_rows(1, 256, train) == 256
