"""OnceLog: one line per cause, bounded bookkeeping whatever the callers feed it (issue 12.3)."""
from __future__ import annotations

from rcan_common.once_log import OnceLog


def test_one_line_per_cause_and_every_occurrence_counted():
    lines: list[str] = []
    log = OnceLog(lines.append)
    for i in range(5):
        log("stale", f"image {i} is stale")
    log("encoding", "bad encoding 'evil'")
    assert len(lines) == 2 and "image 0 is stale" in lines[0]
    assert log.counts == {"stale": 5, "encoding": 1}
    log.reset("stale")
    log("stale", "stale again")
    assert len(lines) == 3


def test_bookkeeping_and_log_lines_stay_bounded_for_unbounded_causes():
    lines: list[str] = []
    log = OnceLog(lines.append, max_causes=16)
    for i in range(1000):
        log(f"frame:{i}", f"rejected a message in frame {i}")  # a caller misusing sender text as a key
    assert len(log.counts) <= 17 and len(lines) <= 17
    assert log.counts[OnceLog.OVERFLOW] == 1000 - 16
    assert sum(log.counts.values()) == 1000
