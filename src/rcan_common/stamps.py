"""Header-stamp checks shared by the nodes, in plain Python (seconds on the receiver's clock).

Every age check bounds |now - stamp|: a message stamped in the future (clock skew, a clock that
jumped back, a hostile stamp) is no fresher than one as far in the past.  Inputs stamped more
than a small tolerance ahead are rejected on receipt, before anything copies their header.
"""
from __future__ import annotations

FUTURE_STAMP = "future_stamp"  # the log-once cause of a rejected future stamp
DEFAULT_MAX_FUTURE_S = 0.1  # default tolerance, as the driver's max_future_s for targets


def stamp_to_s(stamp) -> float:
    """A builtin_interfaces/Time or Duration (anything with sec and nanosec) in seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def future_stamp_reason(stamp_s: float, now_s: float, tolerance_s: float) -> str | None:
    """Why a message stamped `stamp_s` is refused on receipt at `now_s`, or None if it is not
    stamped more than `tolerance_s` in the future."""
    ahead = stamp_s - now_s
    if ahead > tolerance_s:
        return f"header stamp {ahead:.3f} s in the future (tolerance {tolerance_s:g} s)"
    return None
