"""Progress of long work: a bar when asked for (or on a terminal), log lines otherwise; never a change in results."""

from __future__ import annotations

import numpy as np

import rayif
from rayif import ExactConfig, LissaConfig, RunConfig
from rayif.progress import Progress, wanted


def test_bars_show_the_lissa_steps_the_batches_and_the_self_influence_rows(mlp, capfd):
    task, split = mlp
    train, test = (split.x_train[:200], split.y_train[:200]), (split.x_test[:4], split.y_test[:4])
    lissa = LissaConfig(depth=60, repetitions=1, batch_size=20, check_every=20, tol=None)
    quiet = rayif.explain(task, train, test, top=3, solver=lissa, run_config=RunConfig(test_batch_size=2,
                                                                                        progress=False))
    assert "LiSSA" not in capfd.readouterr().err
    shown = rayif.explain(task, train, test, top=3, solver=lissa, run_config=RunConfig(test_batch_size=2,
                                                                                        progress=True))
    err = capfd.readouterr().err
    assert "LiSSA repetition 0" in err and "60/60" in err  # every step of the recursion
    assert "rayif explain" in err and "2/2" in err  # both test batches
    np.testing.assert_array_equal(quiet["train_id"].to_numpy(), shown["train_id"].to_numpy())
    rayif.self_influence(task, train, solver=ExactConfig(curvature="ggn"),
                         run_config=RunConfig(chunk_size=64, progress=True))
    err = capfd.readouterr().err
    assert "rayif self-influence" in err and "200/200" in err


def test_no_bar_under_ci_or_without_a_terminal(monkeypatch, capfd):
    monkeypatch.setenv("CI", "true")
    assert not wanted(None) and wanted(True) and not wanted(False)
    monkeypatch.delenv("CI")
    assert wanted(None) is False  # pytest's stderr is not a terminal
    with Progress(10, "quiet", "unit") as bar:
        bar.update(10, "done")
    assert "quiet" not in capfd.readouterr().err
