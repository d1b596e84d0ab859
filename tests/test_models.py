"""What users' models bring, each on a small model: outputs that are dicts, tuples or ``ModelOutput``s, losses
that read several outputs, Hessians that are indefinite, ``state_dict``s of every kind, replicas that fail."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rayif
from rayif import AutoConfig, CGConfig, ExactConfig, RayifError, ScalingConfig, SolverError, Task
from rayif.results import metadata
from rayif.task import model_fingerprint
from rayif.zoo import digits_images

DAMPING = 1e-3


class Heads(nn.Module):
    """A classifier with an auxiliary head; ``form`` says how it returns them."""

    def __init__(self, form: str = "dict"):
        super().__init__()
        self.form = form
        self.body = nn.Linear(64, 12)
        self.cls = nn.Linear(12, 10)
        self.aux = nn.Linear(12, 1)

    def forward(self, x):
        h = torch.tanh(self.body(x.flatten(1)))
        logits, aux = self.cls(h), self.aux(h)
        if self.form == "dict":
            return {"aux": aux, "logits": logits}
        if self.form == "tuple":
            return aux, logits
        if self.form == "hf":
            from transformers.modeling_outputs import SequenceClassifierOutput

            return SequenceClassifierOutput(logits=logits, hidden_states=(h,))
        return logits


class Factory:
    def __init__(self, form: str, state: dict):
        self.form, self.state = form, state

    def __call__(self) -> Heads:
        m = Heads(self.form).double()
        m.load_state_dict(self.state)
        return m


@pytest.fixture(scope="module")
def heads():
    """``(state, train, test)``: Heads trained a few AdamW steps on 200 digits: far from a minimum."""
    (x, y), (xt, yt) = digits_images(200, 4)
    torch.manual_seed(0)
    model = Heads("tensor").double()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        F.cross_entropy(model(torch.as_tensor(x)), torch.as_tensor(y)).backward()
        opt.step()
    return model.state_dict(), {"x": x, "y": y}, {"x": xt, "y": yt}


def _logits_loss(key):
    def loss(model, batch):
        out = model(batch["x"])
        return F.cross_entropy(out if key is None else out[key], batch["y"], reduction="none")
    return loss


def _task(form, state, key, **kw):
    return Task(model_factory=Factory(form, state), batch_loss=_logits_loss(key), **kw)


@pytest.mark.parametrize("form, key, output_key", [("dict", "logits", None), ("tuple", 1, 1), ("hf", "logits", None)])
def test_outputs_as_libraries_return_them_split_for_the_ggn(heads, form, key, output_key):
    """The GGN and EK-FAC-preconditioned CG on a dict, a tuple (``output_key=1``) and a ``ModelOutput`` give
    the tensor model's numbers."""
    if form == "hf":
        pytest.importorskip("transformers")
    state, train, test = heads
    want = rayif.influence_matrix(_task("tensor", state, None), train, test, ExactConfig(curvature="ggn"))
    task = _task(form, state, key, output_key=output_key)
    got = rayif.influence_matrix(task, train, test, ExactConfig(curvature="ggn"))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    pcg = rayif.influence_matrix(task, train, test, CGConfig(curvature="ggn", tol=1e-9))
    np.testing.assert_allclose(pcg, want, rtol=1e-5, atol=1e-7 * np.abs(want).max())


def test_a_loss_of_two_outputs_works_with_the_hessian_and_is_refused_by_the_ggn(heads):
    state, train, test = heads

    def two(model, batch):
        out = model(batch["x"])
        return F.cross_entropy(out["logits"], batch["y"], reduction="none") + 0.1 * out["aux"][:, 0] ** 2

    task = Task(model_factory=Factory("dict", state), batch_loss=two, weight_decay=0.1)
    with pytest.raises(RayifError, match=r"reads the model's outputs \['aux'\] besides 'logits'"):
        rayif.influence_matrix(task, train, test, ExactConfig(curvature="ggn"))
    exact = rayif.influence_matrix(task, train, test, ExactConfig())
    table = rayif.explain(task, train, test, top=3)  # auto: CG without a preconditioner
    meta = metadata(table)
    assert meta["solver"]["method"] == "cg" and meta["solver"]["preconditioner"] is None
    assert "no preconditioner" in meta["solver_choice"]["reason"]
    for row in range(len(test["y"])):
        got = table.filter((table["test_id"].to_numpy() == row) & (np.array(table["kind"].to_pylist()) == "harmful"))
        assert got["train_id"].to_pylist() == np.argsort(-exact[row])[:3].tolist()


def test_auto_answers_with_the_ggn_where_the_hessian_is_indefinite(heads, caplog):
    state, train, test = heads
    task = _task("tensor", state, None)
    with pytest.raises(SolverError, match="not positive definite"):
        rayif.influence_matrix(task, train, test, ExactConfig())  # asked for the Hessian: refused, as before
    with pytest.raises(SolverError, match="non-positive curvature"):
        rayif.influence_matrix(task, train, test, CGConfig())
    with caplog.at_level(logging.WARNING, logger="rayif"):
        table = rayif.explain(task, train, test, top=3)
    choice = metadata(table)["solver_choice"]
    assert choice["curvature"] == "ggn" and "indefinite" in choice["reason"], choice
    assert choice["smallest_hessian_eigenvalue"] + DAMPING < 0
    assert "proximal Bregman" in caplog.text
    ggn = rayif.influence_matrix(task, train, test, ExactConfig(curvature="ggn"))
    for row in range(len(test["y"])):
        got = table.filter((table["test_id"].to_numpy() == row) & (np.array(table["kind"].to_pylist()) == "harmful"))
        assert got["train_id"].to_pylist() == np.argsort(-ggn[row])[:3].tolist()
    # the Lanczos check is the user's to switch off; the exact solve's own check then still falls back
    off = rayif.explain(task, train, test, top=3, solver=AutoConfig(lanczos_steps=0))
    assert metadata(off)["solver_choice"]["curvature"] == "ggn"


def test_any_state_dict_fingerprints_and_persists(tmp_path):
    """0-dim integer buffers (BatchNorm's num_batches_tracked), bools, non-contiguous and tied tensors."""
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    model[2].weight = nn.Parameter(torch.randn(4, 3).T)  # a non-contiguous parameter
    model.register_buffer("flag", torch.tensor(True))
    model.register_buffer("t", torch.arange(6.0).reshape(2, 3).T)
    model.tied = model[0]  # the same module (and weights) under two names
    first = model_fingerprint(model)
    assert first == model_fingerprint(model) and len(first) == 64
    for change in (lambda: model[1].num_batches_tracked.add_(1), lambda: model.flag.fill_(False),
                   lambda: model.t.add_(1.0)):
        change()
        assert model_fingerprint(model) != first
        first = model_fingerprint(model)
    model.eval()
    (x, y), (xt, yt) = digits_images(40, 3)
    x, xt = x.reshape(40, 64)[:, :3], xt.reshape(3, 64)[:, :3]
    state = model.state_dict()
    task = Task(model_factory=lambda: _rebuilt(state), weight_decay=0.5,
                loss=lambda out, t: F.cross_entropy(out, t % 3, reduction="none"))
    run = rayif.RunConfig(output_dir=str(tmp_path / "job"), test_batch_size=1)
    a = rayif.explain(task, (x, y), (xt, yt), top=2, solver=CGConfig(curvature="ggn"), run_config=run)
    manifest = json.loads((tmp_path / "job" / "_rayif_job.json").read_text())
    assert manifest["model_fingerprint"] == model_fingerprint(_rebuilt(state))
    b = rayif.explain(task, (x, y), (xt, yt), top=2, solver=CGConfig(curvature="ggn"), run_config=run)  # resumed
    assert a["train_id"].to_pylist() == b["train_id"].to_pylist()
    assert (tmp_path / "job" / "_rayif_factors.pt").exists()


def _rebuilt(state):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    model[2].weight = nn.Parameter(torch.zeros(4, 3).T)
    model.register_buffer("flag", torch.tensor(True))
    model.register_buffer("t", torch.zeros(3, 2))
    model.tied = model[0]
    model.load_state_dict(state)
    return model.double()


class Broken:
    def __call__(self):
        raise FileNotFoundError("no checkpoint at /models/missing.pt")


def test_a_replica_that_cannot_be_built_raises_the_users_error_once(ray_local, heads, caplog):
    _, train, test = heads
    task = Task(model_factory=Broken(), batch_loss=_logits_loss(None))
    with caplog.at_level(logging.WARNING, logger="rayif"), pytest.raises(FileNotFoundError, match="missing.pt"):
        rayif.explain(task, train, test, scaling_config=ScalingConfig(num_workers=2))
    assert "died" not in caplog.text
