"""rayif self-influence, validate, show and --config, run as a user runs them: subprocesses on parquet files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

import rayif
from rayif.digits import example_task

from .test_cli import _digits_parquet

pytestmark = [pytest.mark.subprocess]

TASK = "rayif.digits:example_task"


def rayif_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "true"}  # no bars in a captured stream
    return subprocess.run([sys.executable, "-m", "rayif", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    return folder, _digits_parquet(folder, n_test=4)


def test_self_influence_of_a_sample_equals_the_python_api(files):
    folder, split = files
    got = rayif_cli("self-influence", "--task", TASK, "--train", "train.parquet", "--out", "si", "--sample", "64",
                    "--seed", "3", "--solver", "exact", "--workers", "0", cwd=folder)
    assert got.returncode == 0, got.stderr
    assert "self-influence of 64 of 1000 training examples" in got.stdout
    table = pq.read_table(folder / "si" / "self_influence.parquet")
    values = table["self_influence"].to_numpy()
    assert table.num_rows == 64 and (np.diff(values) <= 0).all()  # largest first
    ids = np.sort(np.random.default_rng(3).choice(np.arange(1000), size=64, replace=False))
    assert sorted(table["train_id"].to_pylist()) == ids.tolist()
    want = rayif.self_influence(example_task(), (split.x_train, split.y_train), solver="exact", train_ids=ids)
    assert table["train_id"].to_pylist() == want["train_id"].to_pylist()
    np.testing.assert_allclose(values, want["self_influence"].to_numpy(), rtol=1e-4)
    bad = rayif_cli("self-influence", "--task", TASK, "--train", "train.parquet", "--sample", "5000",
                    "--workers", "0", cwd=folder)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--sample" in bad.stderr


def test_config_file_gives_every_option_and_flags_override_it(files, capsys):
    folder, _ = files
    (folder / "rayif.toml").write_text(
        f'workers = 0\nseed = 0\n[explain]\ntask = "{TASK}"\ntrain = "train.parquet"\ntest = "test.parquet"\n'
        'solver = "exact"\nsolver-option = ["damping=0.001"]\ntop = 2\nout = "from-config"\n')
    ok = rayif_cli("explain", "--config", "rayif.toml", "--top", "3", cwd=folder)
    assert ok.returncode == 0, ok.stderr
    table = pq.read_table(folder / "from-config" / "influence.parquet")
    assert table.num_rows == 4 * 2 * 3  # top from the flag, everything else from the file
    # the show command reads that folder back, with the training labels beside each row
    shown = rayif_cli("show", "from-config", "--test-id", "5001", "--train", "train.parquet", cwd=folder)
    assert shown.returncode == 0, shown.stderr
    mine = [r for r in table.to_pylist() if r["test_id"] == 5001]
    for r in mine:
        assert f"train {r['train_id']}" in shown.stdout
    assert shown.stdout.count(" y=") == 6 and "most harmful" in shown.stdout
    # user mistakes stop before any work: in process (the CLI's own entry point), one line and exit 2 each
    from rayif.cli import main

    assert main(["show", str(folder / "from-config"), "--test-id", "7"]) == 2
    assert "test point 7 is not in" in capsys.readouterr().err
    for text, said in (('workers = "two"\n', "workers = 'two': expected an integer"),
                       ('[explain]\nsolvr = "cg"\n', "[explain] solvr is not an option of `rayif explain`"),
                       ('[explain]\nsolver = "newton"\n', "expected one of"),
                       ('[explan]\ntop = 3\n', "[explan] is not a command"),
                       ("top = \n", "not valid TOML")):
        (folder / "bad.toml").write_text(text)
        assert main(["explain", "--config", str(folder / "bad.toml")]) == 2, text
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, (text, err)


@pytest.mark.retrain
def test_validate_on_the_convex_digits_model_matches_leave_one_out(tmp_path):
    got = rayif_cli("validate", "--digits", "logistic", "--solver", "cg", "--test-points", "6",
                    "--loo-train-points", "20", "--lds-subsets", "12", "--out", "v", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    report = json.loads((tmp_path / "v" / "validate.json").read_text())
    assert report["loo"]["pairs"] == 3 * 20 and report["loo"]["pearson"] >= 0.99
    assert report["lds"]["reference"]["mean"] > 0.8  # measured 0.96 at 20 subsets
    assert report["fast_vs_full"]["solver"]["pearson"]["min"] > 0.999  # CG to its tolerance: the same numbers
    assert (tmp_path / "v" / "validate.png").read_bytes()[:4] == b"\x89PNG"
    assert "leave-one-out, 20 models retrained, 60 (test, train) pairs" in got.stdout


def test_validate_reports_a_fast_pipeline_against_full_and_its_recall(ray_local, tmp_path, capsys):
    from rayif.cli import main

    args = ["validate", "--digits", "mlp", "--solver", "cg",
            "--k", "100", "--candidates", "features", "--test-points", "5", "--lds-subsets", "0",
            "--loo-train-points", "6", "--out", str(tmp_path)]
    assert main(args) == 0
    report = json.loads((tmp_path / "validate.json").read_text())
    assert "loo" in report and "lds" not in report
    pipe = report["fast_vs_full"]["pipeline"]
    assert pipe["k"] == 100 and 0 <= pipe["top10_harmful_overlap"]["mean"] <= 1
    recall = {r["k"]: r["harmful_mean"] for r in report["recall"]}
    assert sorted(recall) == [25, 50, 100, 200] and recall[25] <= recall[200]
    # the pipeline ranks only its candidates: it cannot hold more of the full top than the candidates do
    assert pipe["top10_harmful_overlap"]["mean"] <= recall[100] + 1e-9
    assert (tmp_path / "recall.png").exists() and "recall of the full top among k=100" in capsys.readouterr().out
