"""Smoke test of benchmarks/render_scaling.py at a tiny size: every child mode runs (the render's steps, the heap
run, the SDK floor, the profile, the whole command) and the report has its tables. No time is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

import render_scaling


def test_render_scaling_writes_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "render.md"
    assert render_scaling.main(["--sizes", "2", "--write", str(report), "--json", str(tmp_path / "r.json")]) == 0
    text = report.read_text()
    assert "| 2 | 24 | 18 |" in text  # users, registrations, objects (the egress policies add two)
    assert "SDK floor" in text and "| Pulumi SDK |" in text and "The whole command" in text
    assert "SCHEMA ERRORS" not in capsys.readouterr().out
