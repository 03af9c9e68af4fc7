"""Exact-stamp pairing of two image streams (source camera + canonical G(x)), plain Python.

perception_node publishes G(x) with the SOURCE image's header, so a pair is two messages
with the same stamp.  Unmatched messages wait in small bounded buffers (the canonical one
arrives a few ms after its source); once a pair is complete, everything older in both
buffers can never be the newest pair and is dropped.  A thread lock makes add/latest safe
from concurrent subscription callbacks.

Stamps that go backwards (a sim reset that restarts its clock, a clock jump, a pair left
over from a bad stamp) must not freeze the matching: a message older than the newest pair
is kept like any other, and when it completes a pair both streams agree that time went
back.  The matcher then resets to that pair and says so (``resets``, ``last_reset`` and the
``on_reset`` callback).  Whether a pair is recent enough to act on is the caller's check
(|now - stamp| <= max_input_age); the matcher only pairs.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, NamedTuple

STREAMS = ("source", "canonical")


class Pair(NamedTuple):
    stamp_ns: int
    source: Any
    canonical: Any


class StampMatcher:
    def __init__(self, capacity: int = 10, on_reset: Callable[[str], None] | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.on_reset = on_reset
        self._buf: dict[str, OrderedDict[int, Any]] = {s: OrderedDict() for s in STREAMS}
        self._latest: Pair | None = None
        self._lock = threading.Lock()
        self.matched = 0
        self.dropped = 0  # unmatched messages evicted (buffer full, or older than a newer pair), duplicates
        self.resets = 0
        self.last_reset = ""
        self._converted: tuple[Pair, Any] | None = None

    def add(self, stream: str, stamp_ns: int, item: Any) -> Pair | None:
        """Add a message; returns the pair if it completed one (the newest pair from now on)."""
        if stream not in self._buf:
            raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
        other = STREAMS[1 - STREAMS.index(stream)]
        reset_message = None
        with self._lock:
            if self._latest is not None and stamp_ns == self._latest.stamp_ns:
                self.dropped += 1  # a duplicate of the newest pair's stamp
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
            if self._latest is not None and stamp_ns < self._latest.stamp_ns:
                # Both streams agree on a stamp before the newest pair: time went back.
                back_s = (self._latest.stamp_ns - stamp_ns) * 1e-9
                reset_message = (f"stamp matcher reset: a complete pair stamped {back_s:.3f} s before the "
                                 "newest one (stamps went backwards: sim reset or clock jump)")
                self.dropped += sum(len(b) for b in self._buf.values())
                for buf in self._buf.values():
                    buf.clear()
                self.resets += 1
                self.last_reset = reset_message
            self._latest = pair
            self.matched += 1
            for buf in self._buf.values():
                for old in [s for s in buf if s < stamp_ns]:
                    del buf[old]
                    self.dropped += 1
        if reset_message is not None and self.on_reset is not None:
            self.on_reset(reset_message)
        return pair

    def add_self_paired(self, stamp_ns: int, item: Any) -> Pair | None:
        """A single-stream variant: `item` is both halves of its pair (returned as `add` does)."""
        self.add("source", stamp_ns, item)
        return self.add("canonical", stamp_ns, item)

    def reset(self, why: str) -> None:
        """Forget every buffered message and the newest pair (e.g. the caller saw its clock jump)."""
        with self._lock:
            self.dropped += sum(len(b) for b in self._buf.values())
            for buf in self._buf.values():
                buf.clear()
            self._latest = None
            self.resets += 1
            self.last_reset = f"stamp matcher reset: {why}"
        if self.on_reset is not None:
            self.on_reset(self.last_reset)

    def latest(self, after_ns: int | None = None) -> Pair | None:
        """The newest pair, or None if there is none (or none stamped strictly after `after_ns`)."""
        with self._lock:
            pair = self._latest
        if pair is None or (after_ns is not None and pair.stamp_ns <= after_ns):
            return None
        return pair

    def latest_as(self, convert: Callable[[Pair], Any]) -> Any:
        """`convert` of the newest pair, computed once per pair (None while there is none); when
        `convert` raises, the next call tries again."""
        pair = self.latest()
        if pair is None:
            return None
        cached = self._converted
        if cached is None or cached[0] is not pair:  # a new pair (after a reset its stamp may repeat)
            cached = self._converted = (pair, convert(pair))
        return cached[1]

    def status(self) -> dict:
        """Counters for a status message (stamps in s)."""
        pair = self.latest()
        return {"matched_pairs": self.matched, "unmatched_dropped": self.dropped, "matcher_resets": self.resets,
                "latest_pair_stamp": None if pair is None else pair.stamp_ns * 1e-9}

    def pending(self) -> dict[str, int]:
        with self._lock:
            return {s: len(b) for s, b in self._buf.items()}
