"""The session store benchmark's block of docs/benchmarks.md: written between its markers by
benchmarks/session_store.py, and by benchmarks/run_all.py, which keeps the last one when it did not measure it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import run_all
import session_store


def _stats(p50: float) -> dict[str, float]:
    return {"n": 20.0, "p50": p50, "p95": p50 * 1.5, "p99": p50 * 2}


def _results(ratio: float) -> dict[str, Any]:
    arm = {"stats": {op: _stats(100.0) for op in session_store.OPS}, "errors": []}
    return {"when": "2026-12-06 15:00 UTC", "load": "1.0/1.0/1.0", "load_end": "1.2/1.0/1.0",
            "cycles": {"arms": {"volume": arm, "store": arm, "store, Nagle on": arm}, "ratio_store_volume": ratio,
                       "ratio_nagle_volume": 1.7, "fs_requests_per_cycle": 49.0,
                       "provider_rss_mib": {"idle": {}, "after": {}}, "session": {"keys": 6}}}


def test_the_block_replaces_only_itself(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nbefore\n\n{session_store.BEGIN}\nold\n{session_store.END}\n\nafter\n")
    session_store.write_block(doc, session_store.doc_block(_results(1.105)))
    text = doc.read_text()
    assert "old" not in text and text.startswith("# Benchmarks\n\nbefore") and text.endswith("after\n")
    assert "store / volume, TCP_NODELAY on every connection: **1.105** (target <= 1.25: met)" in text


def test_a_missed_ratio_says_so(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    session_store.write_block(doc, session_store.doc_block(_results(1.4)))
    assert "**1.400** (target <= 1.25: **MISSED**)" in doc.read_text()


def test_run_all_measures_it_into_the_targets_or_keeps_the_last_block(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    measured = run_all.Results(load_start=(0.0, 0.0, 0.0), store=_results(1.1))
    run_all.write_doc(measured, doc, quick=True)
    text = doc.read_text()
    assert "| p50 ratio <= 1.25 | 1.100 | met |" in text
    assert text.count(session_store.BEGIN) == 1
    run_all.write_doc(run_all.Results(load_start=(0.0, 0.0, 0.0)), doc, quick=True)
    kept = doc.read_text()
    assert "Not measured in this run" in kept and "**1.100** (target <= 1.25: met)" in kept
    assert kept.count(session_store.BEGIN) == 1
