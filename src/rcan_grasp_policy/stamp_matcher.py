"""Exact-stamp pairing of two image streams (source camera + canonical G(x)), plain Python.

perception_node publishes G(x) with the SOURCE image's header, so a pair is two messages
with the same stamp.  Unmatched messages wait in small bounded buffers (the canonical one
arrives a few ms after its source); once a pair is complete, everything older in both
buffers can never be the newest pair and is dropped.  A thread lock makes add/latest safe
from concurrent subscription callbacks.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, NamedTuple

STREAMS = ("source", "canonical")


class Pair(NamedTuple):
    stamp_ns: int
    source: Any
    canonical: Any


class StampMatcher:
    def __init__(self, capacity: int = 10):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._buf: dict[str, OrderedDict[int, Any]] = {s: OrderedDict() for s in STREAMS}
        self._latest: Pair | None = None
        self._lock = threading.Lock()
        self.matched = 0
        self.dropped = 0  # unmatched messages evicted (buffer full, or older than a newer pair)

    def add(self, stream: str, stamp_ns: int, item: Any) -> Pair | None:
        """Add a message; returns the pair if it completed one (and it is the newest so far)."""
        if stream not in self._buf:
            raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
        other = STREAMS[1 - STREAMS.index(stream)]
        with self._lock:
            if self._latest is not None and stamp_ns <= self._latest.stamp_ns:
                self.dropped += 1  # older than (or a duplicate of) a pair we already have
                return None
            mate = self._buf[other].pop(stamp_ns, None)
            if mate is None:
                buf = self._buf[stream]
                buf[stamp_ns] = item
                buf.move_to_end(stamp_ns)
                while len(buf) > self.capacity:
                    buf.popitem(last=False)  # insertion order: the oldest arrival goes first
                    self.dropped += 1
                return None
            pair = Pair(stamp_ns, item, mate) if stream == "source" else Pair(stamp_ns, mate, item)
            self._latest = pair
            self.matched += 1
            for buf in self._buf.values():
                for old in [s for s in buf if s < stamp_ns]:
                    del buf[old]
                    self.dropped += 1
            return pair

    def latest(self, after_ns: int | None = None) -> Pair | None:
        """The newest pair, or None if there is none (or none stamped strictly after `after_ns`)."""
        with self._lock:
            pair = self._latest
        if pair is None or (after_ns is not None and pair.stamp_ns <= after_ns):
            return None
        return pair

    def pending(self) -> dict[str, int]:
        with self._lock:
            return {s: len(b) for s, b in self._buf.items()}
