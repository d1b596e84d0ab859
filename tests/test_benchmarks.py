"""The FastIF reproduction's quick mode, as CI runs it: every section writes its tables and plots, and its checks
(agreement with exact at the thresholds the ground-truth tests use) pass. Timings are reported, never asserted."""

from __future__ import annotations

import copy
import json
import math

import pytest

from benchmarks.fastif.__main__ import SECTIONS, run
from benchmarks.fastif.report import checks
from benchmarks.fastif.workload import Settings

pytestmark = [pytest.mark.retrain]

HEADINGS = ("## Table 1", "## Table 2", "## Fig. 3a", "## Fig. 3b", "## Fig. 3c", "## Scale", "## Checks")
PLOTS = ("fig3a_recall.png", "fig3b_s_test.png", "fig3c_retrain.png")


def _numbers(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(x, float):
        yield path, x


def test_fastif_quick_mode_is_complete_and_its_checks_pass(tmp_path, ray_local):
    run(Settings.quick_mode(), tmp_path, log=lambda *_: None)
    md = (tmp_path / "RESULTS.md").read_text()
    assert [h for h in HEADINGS if h not in md] == []
    for name in PLOTS:
        assert (tmp_path / "img" / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"img/{name}" in md
    data = json.loads((tmp_path / "RESULTS.json").read_text())
    assert [s for s in SECTIONS if not data.get(s)] == []
    assert len(data["speed"]["rows"]) == 7 and len(data["recall"]["rows"]) == 2 * 5
    assert data["s_test"]["grid"] and data["s_test"]["solvers"] and data["scale"]["runs"]
    assert set(data["retrain"]) == {"logistic", "mlp"}
    bad = [p for p, v in _numbers(data) if not math.isfinite(v)]
    assert bad == [], bad
    failed = [c for c in data["checks"] if not c["passed"]]
    assert failed == [], failed
    assert len(data["checks"]) >= 12
    assert "**FAIL**" not in md

    # the checks can fail: a wrong answer, a missing section and a diverged solver are each flagged
    broken = copy.deepcopy(data)
    broken["speed"]["rows"][-1]["pearson"] = 95.0
    broken["retrain"]["logistic"]["plain_lissa_pearson"] = float("nan")
    del broken["scale"]
    names = [c["name"] for c in checks(broken) if not c["passed"]]
    assert len(names) == 3, names
    assert any("full influence" in n for n in names) and any("plain LiSSA" in n for n in names)
    assert any("missing: scale" in n for n in names)
