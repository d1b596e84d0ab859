"""The README stays short and its links resolve; the documentation site builds with every reference intact."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_its_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert len(links) >= 10
    missing = [link for link in links if "://" not in link and not (REPO / link).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


@pytest.mark.subprocess
def test_the_docs_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocstrings")
    got = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "rayif.explain" in api and "s_test" in api  # the docstrings made it, not only the headings
