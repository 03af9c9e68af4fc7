"""An in-process rclpy observer of a running graph, shared by the demo, the benchmark and
the integration/fault tests: it records what arrives on topics (with receive times),
publishes test inputs and calls Trigger services, spinning in a background thread.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from rcan_common.ros_node import call_resending


@dataclass
class Received:
    msg: Any
    t: float  # time.monotonic() at receipt
    wall: float  # time.time() at receipt (compare with header stamps of other processes)


def _wait_on_event(future, seconds: float) -> None:
    """Block until `future` is done (the probe's executor thread completes it) or `seconds` pass."""
    done = threading.Event()
    future.add_done_callback(lambda _f: done.set())
    done.wait(seconds)


def best_effort(depth: int = 10) -> QoSProfile:
    """Matches both reliable and best-effort publishers (images use best effort)."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)


class Probe:
    """Context manager: ``with Probe("probe") as p: p.listen("/joint_states", JointState)``."""

    def __init__(self, name: str = "rcan_probe", keep: int = 2000):
        self._owns_context = not rclpy.ok()
        if self._owns_context:
            from rclpy.signals import SignalHandlerOptions

            # Signals belong to the program using the probe (demo, bench, pytest), not to rclpy.
            rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node(name)
        self.keep = keep
        self.messages: dict[str, deque[Received]] = {}
        self._callbacks: dict[str, list[Callable[[Received], None]]] = {}
        self._publishers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except Exception:  # executor shutdown while a callback is pending
            pass

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        if self._owns_context:
            rclpy.try_shutdown()
        self._thread.join(timeout=2.0)

    def listen(self, topic: str, msg_type: Any, qos: QoSProfile | int | None = None,
               callback: Callable[[Received], None] | None = None) -> None:
        """Record every message on `topic` (best-effort QoS by default: matches any publisher).
        Listening again to a topic only adds `callback`: messages are recorded once."""
        with self._lock:
            subscribed = topic in self.messages
            self.messages.setdefault(topic, deque(maxlen=self.keep))
            if callback is not None:
                self._callbacks.setdefault(topic, []).append(callback)
        if subscribed:
            return

        def on_msg(msg, topic=topic):
            rec = Received(msg, time.monotonic(), time.time())
            with self._lock:
                self.messages[topic].append(rec)
                callbacks = list(self._callbacks.get(topic, ()))
            for cb in callbacks:
                cb(rec)

        self.node.create_subscription(msg_type, topic, on_msg, qos if qos is not None else best_effort())

    def received(self, topic: str, since: float = 0.0) -> list[Received]:
        with self._lock:
            return [r for r in self.messages.get(topic, ()) if r.t >= since]

    def last(self, topic: str) -> Received | None:
        with self._lock:
            q = self.messages.get(topic)
            return q[-1] if q else None

    def count(self, topic: str, since: float = 0.0) -> int:
        return len(self.received(topic, since))

    def wait_for(self, predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return predicate()

    def wait_count(self, topic: str, n: int, timeout: float, since: float = 0.0) -> bool:
        return self.wait_for(lambda: self.count(topic, since) >= n, timeout)

    def publish(self, topic: str, msg: Any, qos: QoSProfile | int = 10) -> None:
        pub = self._publishers.get(topic)
        if pub is None:
            pub = self._publishers[topic] = self.node.create_publisher(type(msg), topic, qos)
        pub.publish(msg)

    def trigger(self, service: str, timeout: float = 10.0, resend_after: float | None = None) -> tuple[bool, str]:
        """Call a std_srvs/Trigger service; raises TimeoutError if it is not there or not answering.
        `resend_after` (s): resend until answered, for a service that is safe to call twice (call_resending)."""
        from std_srvs.srv import Trigger

        client = self.node.create_client(Trigger, service)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {service} not available after {timeout:.0f} s")
            result = call_resending(client, Trigger.Request(), _wait_on_event, timeout, resend_after)
            if result is None:
                raise TimeoutError(f"service {service} did not answer within {timeout:.0f} s")
            return bool(result.success), str(result.message)
        finally:
            self.node.destroy_client(client)

    def now_msg(self):
        return self.node.get_clock().now().to_msg()
