"""The README's main job, run the way a user runs it."""

from __future__ import annotations

import pyarrow.parquet as pq

from rayif.cli import main


def test_demo_prints_and_writes_ranked_influence(ray_local, tmp_path, capfd):
    assert main(["demo", "--test-points", "2", "--top", "3", "--solver", "exact", "--out", str(tmp_path)]) == 0
    out, err = capfd.readouterr()
    assert "max_restarts > 0" not in err  # Ray's core worker says it on every actor start (see executors/ray.py)
    assert out.count("most harmful:") == 2 and out.count("most helpful:") == 2
    assert out.count("ran on node") == 2  # the default runs on 2 Ray workers
    table = pq.read_table(tmp_path / "demo.parquet")
    assert table.num_rows == 2 * 2 * 3
    assert table.column_names == ["test_id", "kind", "rank", "train_id", "influence"]


def test_recall_writes_monotone_curves_for_both_index_kinds(ray_local, tmp_path, capsys):
    args = ["recall", "--test-points", "6", "--ks", "10,100,400,1000", "--out", str(tmp_path)]
    assert main(args) == 0
    table = pq.read_table(tmp_path / "recall.parquet").to_pylist()
    for name in ("feature kNN", "gradient sketch (d=256)"):
        mine = [r for r in table if r["index"] == name]
        assert [r["k"] for r in mine] == [10, 100, 400, 1000]
        for side in ("harmful", "helpful"):
            curve = [r[f"{side}_mean"] for r in mine]
            assert all(a <= b for a, b in zip(curve, curve[1:], strict=False)), (name, side, curve)
    knn = [r for r in table if r["index"] == "feature kNN"]
    assert knn[-1]["harmful_mean"] == 1.0  # the whole training set holds every harmful point
    sketch = [r for r in table if r["index"] != "feature kNN"]
    assert sketch[1]["harmful_mean"] > knn[1]["harmful_mean"]  # k = 100: the sketch finds more of them
    assert (tmp_path / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "recall of the true top-10 harmful and helpful" in capsys.readouterr().out
    # both indexes persisted where a second run finds them (reuse itself: test_explain_cli_on_parquet...)
    assert (tmp_path / "digits-mlp-features-flat-index" / "index.faiss").exists()
    assert (tmp_path / "digits-mlp-sketch-flat-index" / "sketch_basis.pt").exists()


def _digits_parquet(folder, n_test: int):
    import numpy as np
    import pyarrow as pa

    from rayif.digits import load_digits_split

    split = load_digits_split(dtype=np.float32)
    for name, x, y in (("train", split.x_train, split.y_train), ("test", split.x_test[:n_test], split.y_test[:n_test])):
        ids = np.arange(len(x)) + (0 if name == "train" else 5000)
        pq.write_table(pa.table({"id": ids, "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 64), "y": y}),
                       folder / f"{name}.parquet")
    return split


def test_explain_cli_on_parquet_equals_the_python_api(ray_local, tmp_path, capsys):
    import numpy as np

    import rayif
    from rayif import ExactConfig
    from rayif.digits import example_task

    split = _digits_parquet(tmp_path, n_test=4)
    common = ["explain", "--task", "rayif.digits:example_task", "--train", str(tmp_path / "train.parquet"),
              "--test", str(tmp_path / "test.parquet"), "--solver", "exact", "--solver-option", "damping=0.001",
              "--top", "3"]
    assert main([*common, "--out", str(tmp_path / "out")]) == 0
    got = pq.read_table(tmp_path / "out" / "influence.parquet")
    want = rayif.explain(example_task(), (split.x_train, split.y_train),
                         {"x": split.x_test[:4], "y": split.y_test[:4], "id": 5000 + np.arange(4)}, top=3,
                         solver=ExactConfig(damping=1e-3))
    assert got["test_id"].to_pylist() == want["test_id"].to_pylist()
    assert got["train_id"].to_pylist() == want["train_id"].to_pylist()
    np.testing.assert_allclose(got["influence"].to_numpy(), want["influence"].to_numpy(), rtol=1e-4)

    assert main([*common, "--k", "50", "--index-dir", str(tmp_path / "index"), "--out", str(tmp_path / "knn")]) == 0
    knn = pq.read_table(tmp_path / "knn" / "influence.parquet")
    index = rayif.FeatureIndex.load(tmp_path / "index", example_task())
    near = index.candidates(example_task(), (split.x_test[:4], split.y_test[:4]), 50)
    for row in range(4):
        ids = knn.filter(knn["test_id"].to_numpy() == 5000 + row)["train_id"].to_numpy()
        assert set(ids) <= set(near[row])
    assert "(feature kNN, k=50)" in capsys.readouterr().out

    sketch_dir = tmp_path / "sketch-index"  # rayif index, then explain reusing it
    assert main(["index", "--task", "rayif.digits:example_task", "--train", str(tmp_path / "train.parquet"),
                 "--out", str(sketch_dir), "--candidates", "sketch", "--sketch-dim", "64"]) == 0
    assert "sketch index (flat) of 1000 x 64" in capsys.readouterr().out
    assert main([*common, "--k", "100", "--candidates", "sketch", "--sketch-dim", "64", "--index-dir",
                 str(sketch_dir), "--out", str(tmp_path / "sk")]) == 0
    assert "(gradient-sketch candidates, k=100)" in capsys.readouterr().out
    sk = pq.read_table(tmp_path / "sk" / "influence.parquet")
    assert sk["test_id"].to_pylist() == want["test_id"].to_pylist()
    assert np.mean(np.array(sk["train_id"].to_pylist()) == np.array(want["train_id"].to_pylist())) >= 0.8


def test_a_user_mistake_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["explain", "--task", "nocolon", "--train", "a", "--test", "b"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rayif: error: --task must be 'module:callable'")
    assert main(["explain", "--task", "rayif.digits:example_task", "--train", str(tmp_path / "none.parquet"),
                 "--test", "b"]) == 2
    assert "no such parquet file" in capsys.readouterr().err
    _digits_parquet(tmp_path, n_test=2)
    assert main(["explain", "--task", "rayif.digits:example_task", "--train", str(tmp_path / "train.parquet"),
                 "--test", str(tmp_path / "test.parquet"), "--solver-option", "depth"]) == 2
    assert "--solver-option takes KEY=JSON" in capsys.readouterr().err
    assert main(["explain", "--task", "rayif.digits:example_task", "--train", str(tmp_path / "train.parquet"),
                 "--test", str(tmp_path / "test.parquet"), "--solver", "lissa", "--solver-option", "depht=3"]) == 2
    assert "unknown lissa option(s) ['depht']" in capsys.readouterr().err


def test_one_name_per_option_in_every_command_and_the_old_ones_warn(capsys):
    from rayif.cli import parser

    root, cmds = parser()
    for name in ("explain", "validate", "index"):
        flags = {s for a in cmds[name]._actions for s in a.option_strings}
        assert {"--candidates", "--index-kind", "--sketch-dim"} <= flags, name
    assert {"--candidates", "--index-kind"} <= {s for a in cmds["recall"]._actions for s in a.option_strings}
    new = root.parse_args(["index", "--task", "t:f", "--train", "x", "--out", "o", "--candidates", "sketch",
                           "--index-kind", "ivf_flat"])
    assert capsys.readouterr().err == ""
    old = root.parse_args(["index", "--task", "t:f", "--train", "x", "--out", "o", "--source", "sketch",
                           "--kind", "ivf_flat"])
    assert (old.candidates, old.index_kind) == (new.candidates, new.index_kind) == ("sketch", "ivf_flat")
    err = capsys.readouterr().err
    assert "--source is deprecated and goes in 0.10: use --candidates" in err and "use --index-kind" in err
    assert root.parse_args(["recall", "--sources", "sketch"]).candidates == "sketch"
    assert "--source" not in cmds["index"].format_help()  # the old spellings are not advertised


def test_only_rays_empty_notices_are_dropped():
    import logging

    from rayif.cli import RayNotices

    def record(message):
        return logging.LogRecord("ray._private.authentication", logging.WARNING, __file__, 1, message, None, None)

    notices = RayNotices()
    assert not notices.filter(record("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=..."))
    assert notices.filter(record("Token authentication is enabled but no authentication token was found"))
    assert notices.filter(record("Started a local Ray instance."))
