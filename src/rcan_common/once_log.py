"""OnceLog: a node's log-once-per-cause bookkeeping (no ROS: the nodes pass their logger's method)."""
from __future__ import annotations

import threading
from typing import Callable


class OnceLog:
    """Log a problem the first time each cause occurs and count every occurrence.

    A cause is a key from the caller's fixed vocabulary (never text a sender controls: that
    belongs in `message`).  The bookkeeping is bounded regardless: once `max_causes` distinct
    causes are held, any further new cause is counted, and logged once, under OVERFLOW.
    """

    OVERFLOW = "other_causes"

    def __init__(self, log: Callable[[str], None], max_causes: int = 64):
        if max_causes < 1:
            raise ValueError(f"max_causes must be >= 1, got {max_causes}")
        self._log = log
        self._lock = threading.Lock()
        self.max_causes = max_causes
        self.counts: dict[str, int] = {}

    def __call__(self, cause: str, message: str) -> None:
        with self._lock:
            if cause not in self.counts and len(self.counts) >= self.max_causes:
                cause = self.OVERFLOW
            first = cause not in self.counts
            self.counts[cause] = self.counts.get(cause, 0) + 1
        if first:
            self._log(f"{message} (logged once; further '{cause}' problems are only counted)")

    def reset_all(self) -> None:
        """Forget every cause (the problems went away): each is logged again when it recurs."""
        with self._lock:
            self.counts.clear()

    def reset(self, cause: str) -> None:
        """Forget `cause` so its next occurrence is logged again (the problem went away)."""
        with self._lock:
            self.counts.pop(cause, None)
