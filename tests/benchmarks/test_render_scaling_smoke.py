"""Smoke test of benchmarks/render_scaling.py at a tiny size: every child mode runs (the render's steps, the heap
run, the SDK floor, the profile, the whole command) and the report has its tables. No time is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import render_scaling  # noqa: E402


def test_render_scaling_writes_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "render.md"
    assert render_scaling.main(["--sizes", "2", "--write", str(report), "--json", str(tmp_path / "r.json")]) == 0
    text = report.read_text()
    assert "| 2 | 24 | 18 |" in text  # users, registrations, objects (the egress policies add two)
    assert "SDK floor" in text and "| Pulumi SDK |" in text and "The whole command" in text
    assert "SCHEMA ERRORS" not in capsys.readouterr().out
