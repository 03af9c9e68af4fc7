"""Small rclpy helpers shared by the rcan nodes: overridable QoS, log-once, the main() lifecycle."""
from __future__ import annotations

import threading
from typing import Callable

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions

RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}


def qos_profile(depth: int, reliability: str = "reliable") -> QoSProfile:
    """KEEP_LAST QoS; 'reliable' (rviz's default for images) or 'best_effort'."""
    if reliability not in RELIABILITY:
        raise ValueError(f"qos reliability must be one of {list(RELIABILITY)}, got {reliability!r}")
    if depth < 1:
        raise ValueError(f"qos depth must be >= 1, got {depth}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=RELIABILITY[reliability])


def publisher(node, msg_type, topic: str, depth: int, reliability: str = "reliable"):
    """A publisher whose QoS is overridable through rclpy's QoSOverridingOptions: the read-only
    parameters ``qos_overrides.<fully qualified topic>.publisher.<history|depth|reliability>``."""
    return node.create_publisher(msg_type, topic, qos_profile(depth, reliability),
                                 qos_overriding_options=QoSOverridingOptions.with_default_policies())


def subscription(node, msg_type, topic: str, callback, depth: int, reliability: str = "reliable"):
    """A subscription with QoS overridable as ``qos_overrides.<topic>.subscription.<policy>``."""
    return node.create_subscription(msg_type, topic, callback, qos_profile(depth, reliability),
                                    qos_overriding_options=QoSOverridingOptions.with_default_policies())


# Requests a service queues before DDS silently drops the oldest unserved ones (KEEP_LAST).
# rclpy's default services QoS keeps 10: of 200 rapid Trigger calls only about 10 were answered.
# The servers answer in microseconds to milliseconds, so a deeper queue costs little; a caller must
# still expect a burst's excess beyond this depth to go unanswered, and its client's response queue
# (rclpy default: 10) to drop responses it does not spin for in time.
SERVICE_QOS_DEPTH = 100


def service_qos(depth: int = SERVICE_QOS_DEPTH) -> QoSProfile:
    """QoS of every rcan service server: reliable, volatile, KEEP_LAST `depth` requests."""
    if depth < 1:
        raise ValueError(f"service qos depth must be >= 1, got {depth}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def now_s(node) -> float:
    """The node's clock (ROS time: sim time where use_sim_time is set) in seconds."""
    return node.get_clock().now().nanoseconds * 1e-9


_IN_FLIGHT: set = set()  # futures of call_trigger, referenced until they complete


def call_trigger(client, on_done: Callable[[bool | None, str], None]) -> None:
    """Call a std_srvs/Trigger service without blocking; then `on_done(success, message)`, where a
    call that failed without an answer gives success None and the error as the message."""
    from std_srvs.srv import Trigger
    future = client.call_async(Trigger.Request())
    _IN_FLIGHT.add(future)

    def done(fut) -> None:
        _IN_FLIGHT.discard(fut)
        try:
            ok, message = bool(fut.result().success), fut.result().message
        except Exception as exc:  # noqa: BLE001 - the caller decides what a failed call means
            ok, message = None, repr(exc)
        on_done(ok, message)

    future.add_done_callback(done)


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
        _teardown(node)
    return 0


def _teardown(node) -> None:
    """Close and destroy `node`, then shut rclpy down, so that a signal during the teardown cannot fail it.

    Two races can make a node stopped by SIGINT exit non-zero (CI saw exit 1, under load).  rclpy calls Python's
    own handler after its own, so a KeyboardInterrupt can land anywhere in here (ros-tooling/topic_tools#104:
    inside destroy_node); and rclpy's signal thread shuts the context down concurrently, so `try_shutdown`
    can find it ok and then fail with 'rcl_shutdown already called'.  Neither is an error of the node: every
    step still runs.  The node's own close() errors, and rclpy's while the context is up, are raised after."""
    import sys

    import rclpy

    close = getattr(node, "close", None) if node is not None else None
    errors = []
    for step in (close, getattr(node, "destroy_node", None), rclpy.try_shutdown):
        if step is None:
            continue
        try:
            step()
        except KeyboardInterrupt:
            print(f"[WARN] interrupted during {step.__name__} at shutdown", file=sys.stderr, flush=True)
        except Exception as exc:
            if step is close or rclpy.ok():
                errors.append(exc)
            else:
                print(f"[WARN] {step.__name__} after rclpy shut down: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)
    if errors:
        raise errors[0]


class StartupError(RuntimeError):
    """A node cannot start (bad parameter, missing/mismatched model); the message says why."""
