"""The ranked Arrow table: schema, order, ids, parquet round trip."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

import rayif
from rayif import ExactConfig


def test_explain_ranks_match_the_influence_matrix(logistic, tmp_path):
    task, sp = logistic
    ids = np.arange(5000, 5000 + len(sp.x_train))
    train = {"x": sp.x_train, "y": sp.y_train, "id": ids}
    test = {"x": sp.x_test[:3], "y": sp.y_test[:3], "id": np.array([7, 8, 9])}
    table = rayif.explain(task, train, test, top=5, solver=ExactConfig())
    full = rayif.influence_matrix(task, train, test, ExactConfig())

    assert table.schema.equals(rayif.SCHEMA, check_metadata=False)
    assert table.num_rows == 3 * 2 * 5
    for row, test_id in enumerate([7, 8, 9]):
        for kind, order in (("harmful", np.argsort(-full[row])), ("helpful", np.argsort(full[row]))):
            rows = table.filter(pc.and_(pc.equal(table["test_id"], test_id), pc.equal(table["kind"], kind))).to_pydict()
            assert rows["rank"] == [1, 2, 3, 4, 5]
            assert rows["train_id"] == list(ids[order[:5]])
            np.testing.assert_allclose(rows["influence"], full[row, order[:5]], rtol=1e-10)
    assert (np.array(table.filter(pc.equal(table["kind"], "harmful"))["influence"]) > 0).all()

    path = rayif.write_parquet(table, tmp_path / "out" / "explain.parquet")
    back = pq.read_table(path)
    assert back.equals(table)
    assert b"positive = harmful" in back.schema.metadata[b"rayif.convention"]
    assert b'"method": "exact"' in back.schema.metadata[b"rayif.solver"]


def test_group_rows_carry_the_group_id(logistic):
    task, sp = logistic
    table = rayif.explain(task, (sp.x_train, sp.y_train), (sp.x_test[:4], sp.y_test[:4]), top=3,
                          solver=ExactConfig(), group=True)
    assert set(table["test_id"].to_pylist()) == {rayif.results.GROUP_TEST_ID}
    assert table.num_rows == 6
