"""The store-mode block of the sessions-per-replica benchmark in docs/benchmarks.md: written between its markers by
`benchmarks/scale.py --store`, and kept as it is by benchmarks/run_all.py, which does not measure it."""

from __future__ import annotations

from pathlib import Path

import common
import run_all
import scale


def _result() -> scale.ScaleResult:
    send = {"n": 10.0, "p50": 0.5, "p95": 0.9, "p99": 1.0}
    levels = [scale.Level(10, send, 0, 300.0, 1.0, 60.0, 3.0),
              scale.Level(25, {**send, "p99": 2.5}, 0, 330.0, 2.0, 61.0, 6.0)]
    return scale.ScaleResult(idle_rss_mib=330.0, store=True, idle_redis_mib=1.0, levels=levels,
                             stopped_because="p99 send 2.50 s > 2.0 s at 25 sessions")


def test_store_report_has_provider_and_redis_per_session() -> None:
    r = _result()
    text = scale.report(r)
    assert "provider VmRSS MiB" in text and "Redis KiB per session over the start" in text
    assert "**10 sessions**" in text
    # (330 + 61 - 330) / 25 MiB per session; (6 - 1) MiB * 1024 / 25 KiB per session
    assert "| 25 | 2.000 s | 500.0 | 2500.0 | 0 | 330.0 | 61.0 | 2.440 | 6.000 | 204.8 |" in text
    assert r.redis_kib_per_session() == 5 * 1024 / 25


def test_the_block_replaces_only_itself_and_run_all_keeps_it(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nbefore\n\n{scale.STORE_BEGIN}\nold\n{scale.STORE_END}\n\nafter\n")
    block = scale.store_block(_result(), "2026-12-06 17:00 UTC", "9.0/9.0/9.0", "8.0/9.0/9.0", "benchmarks/x.png")
    common.write_marked_block(doc, scale.STORE_BEGIN, scale.STORE_END, block, scale.STORE_HEADING)
    text = doc.read_text()
    assert "old" not in text and text.startswith("# Benchmarks\n\nbefore") and text.endswith("after\n")
    assert "load average 9.0/9.0/9.0 at the start" in text
    run_all.write_doc(run_all.Results(load_start=(0.0, 0.0, 0.0)), doc, quick=True)
    kept = doc.read_text()
    assert kept.count(scale.STORE_BEGIN) == 1 and scale.STORE_HEADING in kept
    assert common.marked_block(doc, scale.STORE_BEGIN, scale.STORE_END) == block
