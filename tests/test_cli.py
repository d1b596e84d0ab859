"""The README's main job, run the way a user runs it."""

from __future__ import annotations

import pyarrow.parquet as pq

from rayif.cli import main


def test_demo_prints_and_writes_ranked_influence(ray_local, tmp_path, capsys):
    assert main(["demo", "--test-points", "2", "--top", "3", "--solver", "exact", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("most harmful:") == 2 and out.count("most helpful:") == 2
    assert out.count("ran on node") == 2  # the default runs on 2 Ray workers
    table = pq.read_table(tmp_path / "demo.parquet")
    assert table.num_rows == 2 * 2 * 3
    assert table.column_names == ["test_id", "kind", "rank", "train_id", "influence"]


def test_recall_writes_a_monotone_curve_that_reaches_one(ray_local, tmp_path, capsys):
    args = ["recall", "--test-points", "6", "--ks", "10,100,400,1000", "--out", str(tmp_path)]
    assert main(args) == 0
    table = pq.read_table(tmp_path / "recall.parquet").to_pydict()
    assert table["k"] == [10, 100, 400, 1000]
    assert all(a <= b for a, b in zip(table["recall_mean"], table["recall_mean"][1:], strict=False))
    assert table["recall_mean"][-1] == 1.0  # the whole training set holds every harmful point
    assert (tmp_path / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(args) == 0  # the second run reuses the persisted index
    assert capsys.readouterr().out.count("recall of the top-10 harmful") == 2
    assert (tmp_path / "digits-mlp-flat-index" / "index.faiss").exists()
