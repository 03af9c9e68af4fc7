"""Small rclpy helpers shared by the rcan nodes: overridable QoS, log-once, the main() lifecycle."""
from __future__ import annotations

from typing import Callable

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions

from rcan_common.once_log import OnceLog  # noqa: F401 - the nodes' log-once, kept ROS-free

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


def spin_node(make_node: Callable[[], object], args=None) -> int:
    """ros2/demos-style main(): init, spin until SIGINT/SIGTERM, destroy, shut down.

    Start-up errors (bad parameters, bad model file) are printed as one line and return 1.
    """
    import sys

    import rclpy
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = None
    stopping = False
    try:
        node = make_node()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        stopping = True
    except StartupError as exc:
        print(f"[FATAL] {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception:
        # A SIGINT/SIGTERM shuts the context down under whatever runs (the constructor, a callback);
        # what that breaks is a clean stop, not a crash.  Anything else is a real error.
        if not _context_goes_down():
            raise
        stopping = True
    finally:
        if stopping:
            # Let rclpy's signal thread finish shutting the context down before anything is destroyed:
            # destroying entities while rcl_shutdown runs concurrently can fail (CI saw exit 1).
            _context_goes_down()
        _teardown(node)
    return 0


def _context_goes_down(timeout_s: float = 2.0) -> bool:
    """Whether the rclpy context is (or within `timeout_s` becomes) shut down.

    rclpy's signal handling raises KeyboardInterrupt in the main thread and shuts the context down on a
    thread of its own, so the main thread can see the effects of a stop before `rclpy.ok()` turns False
    (rcl_shutdown finalises the middleware before it marks the context invalid)."""
    import time

    import rclpy

    deadline = time.monotonic() + timeout_s
    while rclpy.ok():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


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
