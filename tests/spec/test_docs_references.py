"""The documentation names only files that exist, and speaks of this repository only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
DOCS = sorted([PROJECT / "README.md", *PROJECT.glob("docs/*.md")])
# A path of this repository, as docs write them: `components/azure/fleet.py`, `tests/runtime/`, ...
_REPO_PATH = re.compile(r"`((?:components|copilot_fleet|docs|scripts|stacks|tests|images|smoke_tests|benchmarks)"
                        r"/[A-Za-z0-9_./-]*)`")


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_named_files_exist(doc: Path) -> None:
    text = doc.read_text()
    missing = sorted({m.group(1) for m in _REPO_PATH.finditer(text)
                      if "<" not in m.group(1) and "*" not in m.group(1)
                      and not (PROJECT / m.group(1).rstrip("/")).exists()})
    assert missing == [], f"{doc.name} names files that do not exist"
    outside = [ref for ref in ("shared/design.md", "shared/facts", "../shared", "shared/seeds") if ref in text]
    assert outside == [], f"{doc.name} cites material outside this repository"
