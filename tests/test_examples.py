"""Each example's small mode, run as a user runs it; every example checks its own result and says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script, passed, pictures", [
    ("digits_quickstart.py", "quickstart check passed", ["quickstart.png"]),
    ("mislabel_detection.py", "mislabel check passed", ["mislabel.png", "mislabel.json"]),
    ("error_correction.py", "error correction check passed", ["error_correction.json"]),
    ("transformer_influence.py", "transformer check passed", []),
    ("bert_influence.py", "bert check passed", []),
])
def test_example_small_mode(script, passed, pictures, tmp_path):
    args = [sys.executable, str(EXAMPLES / script), "--small"]
    if pictures:
        args += ["--out", str(tmp_path)]
    got = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CI": "true"})
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-4000:]
    assert passed in got.stdout
    for name in pictures:
        data = (tmp_path / name).read_bytes()
        assert data[:4] == b"\x89PNG" if name.endswith(".png") else data.startswith(b"{")
