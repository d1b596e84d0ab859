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
