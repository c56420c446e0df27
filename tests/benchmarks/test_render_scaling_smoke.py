"""Smoke test of benchmarks/render_scaling.py at a tiny size: every child mode runs (the render's steps, the heap
run, the SDK floor, the profile, the whole command) and the report has its tables. No time is asserted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import render_scaling


def test_render_scaling_writes_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "render.md"
    assert render_scaling.main(["--sizes", "2", "--write", str(report), "--json", str(tmp_path / "r.json")]) == 0
    text = report.read_text()
    assert "| 2 | 24 | 18 |" in text  # users, registrations, objects (the egress policies add two)
    assert "SDK floor" in text and "| Pulumi SDK |" in text and "The whole command" in text
    assert "SCHEMA ERRORS" not in capsys.readouterr().out
    assert "![render time and memory by users](benchmarks/render.png)" in text
    assert (tmp_path / "benchmarks" / "render.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_keep_one_unit_per_axis(tmp_path: Path) -> None:
    """Seconds and MiB are never drawn against one axis (nor scaled to share one): a second axis carries them."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    made: list[Any] = []
    real_subplots = plt.subplots

    def keep(*args, **kwargs):
        fig, ax = real_subplots(*args, **kwargs)
        made.append(fig)
        return fig, ax

    plt.subplots = keep
    try:
        rows = [{"users": u, "total_s": u / 50, "rss_peak_mb": 150 + u / 2} for u in (10, 100, 1000)]
        render_scaling.plot(rows, [{"users": u, "wall_s": 2 + u / 50} for u in (10, 100, 1000)],
                            tmp_path / "render.png")
    finally:
        plt.subplots = real_subplots
    (fig,) = made
    left, right = fig.axes
    assert left.get_ylabel() == "seconds" and right.get_ylabel() == "MiB"
    assert {line.get_label() for line in left.get_lines()} == {"render total (s)", "whole command (s)"}
    assert [line.get_label() for line in right.get_lines()] == ["peak RSS (MiB)"]
    assert list(right.get_lines()[0].get_ydata()) == [155.0, 200.0, 650.0]  # in MiB, not rescaled
