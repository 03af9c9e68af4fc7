"""Small rclpy helpers shared by the rcan nodes: overridable QoS, log-once, service calls; the main() lifecycle
is ros_main's, re-exported here."""
from __future__ import annotations

import time
from typing import Any, Callable

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions

from rcan_common.once_log import OnceLog  # noqa: F401 - the nodes' log-once, kept ROS-free
from rcan_common.ros_main import StartupError, spin_node  # noqa: F401 - the nodes' main() lifecycle

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


def call_resending(client, request, wait: Callable[[Any, float], None], timeout: float,
                   resend_after: float | None = None):
    """The first response to `request` on a service `client` within `timeout` s (None if none came).  `wait(future,
    seconds)` blocks until the future is done or the seconds pass (spinning an executor, or on an event).  With
    `resend_after`, for a request that is safe to repeat (a query, a parameter get/set, a refused command), the
    request is sent again at that interval: wait_for_service() says the server reads requests, not that its answers
    reach this client yet, so the first answer after discovery can be lost."""
    deadline, futures = time.monotonic() + timeout, []
    try:
        while (left := deadline - time.monotonic()) > 0:
            futures.append(client.call_async(request))
            wait(futures[-1], min(left, resend_after) if resend_after else left)
            answered = next((f for f in futures if f.done()), None)  # a late answer to an earlier send counts too
            if answered is not None:
                return answered.result()
        return None
    finally:
        # The client keeps every send's future until its answer's done-callback runs on a later spin; the sends not
        # answered by now never will be read, so a long-lived client (the probe's, a node's) would otherwise keep one
        # per resend.  Removing an answered one early is harmless.
        for future in futures:
            client.remove_pending_request(future)
            if not future.done():
                future.cancel()
