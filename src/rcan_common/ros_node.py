"""Small rclpy helpers shared by the rcan nodes: QoS from parameters, log-once, the main() lifecycle."""
from __future__ import annotations

import threading
from typing import Callable

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}


def qos_profile(reliability: str, depth: int) -> QoSProfile:
    """KEEP_LAST QoS; 'reliable' (rviz's default for images) or 'best_effort'."""
    if reliability not in RELIABILITY:
        raise ValueError(f"qos reliability must be one of {list(RELIABILITY)}, got {reliability!r}")
    if depth < 1:
        raise ValueError(f"qos depth must be >= 1, got {depth}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=RELIABILITY[reliability])


# Requests a service queues before DDS silently drops the oldest unserved ones (KEEP_LAST).
# rclpy's default services QoS keeps 10: of 200 rapid Trigger calls only about 10 were answered.
# The servers here answer in microseconds to milliseconds, so a deeper queue costs little; a
# caller must still expect the excess of a burst beyond this depth to go unanswered, and its own
# client's response queue (rclpy default: 10) to drop responses it does not spin for in time.
SERVICE_QOS_DEPTH = 100


def service_qos(depth: int = SERVICE_QOS_DEPTH) -> QoSProfile:
    """QoS of every rcan service server: reliable, volatile, KEEP_LAST `depth` requests."""
    if depth < 1:
        raise ValueError(f"service qos depth must be >= 1, got {depth}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


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

    def reset(self, cause: str) -> None:
        """Forget `cause` so its next occurrence is logged again (the problem went away)."""
        with self._lock:
            self.counts.pop(cause, None)


def spin_node(make_node: Callable[[], object], args=None) -> int:
    """ros2/demos-style main(): init, spin until SIGINT/SIGTERM, destroy, shut down.

    Start-up errors (bad parameters, bad model file) are printed as one line and return 1.
    """
    import sys

    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except StartupError as exc:
        print(f"[FATAL] {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception:
        # A SIGINT/SIGTERM during start-up shuts the context down under the constructor;
        # that is a clean stop, not a crash.  Anything else is a real error.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


class StartupError(RuntimeError):
    """A node cannot start (bad parameter, missing/mismatched model); the message says why."""
