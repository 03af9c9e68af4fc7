"""Helpers for tests that start real node processes: a params-file writer, a node subprocess
with collected output, and an in-process rclpy harness on the test's ROS_DOMAIN_ID."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent

def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` s pass; the result of a last call.  For waits on an
    event (a log line, a file, a counter) with a generous bound, in place of a fixed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def call_idempotent(client, executor, request, timeout: float = 20.0, resend_after: float = 3.0):
    """The response to `request` on a service `client`, spun by `executor` and resent every `resend_after` s until
    one comes or `timeout` s pass (rcan_common.ros_node.call_resending); None if none came.  Only for requests that
    are safe to repeat (parameter get/set, a refused command)."""
    from rcan_common.ros_node import call_resending

    return call_resending(client, request, lambda f, t: executor.spin_until_future_complete(f, timeout_sec=t),
                          timeout, resend_after)


class LineReader:
    """Collects a text stream's lines on a thread, so a test waits for a line with a timeout
    instead of blocking in readline() on a process that may print nothing."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def matching(self, text: str) -> list[str]:
        return [line for line in list(self.lines) if text in line]

    def wait_for(self, text: str, timeout: float, count: int = 1) -> list[str]:
        """The first `count` lines containing `text`, waiting up to `timeout` s; fewer if they never come."""
        wait_until(lambda: len(self.matching(text)) >= count, timeout)
        return self.matching(text)[:count]

    def join(self, timeout: float = 5.0) -> str:
        """Wait for the end of the stream (the process exited); all of it."""
        self._thread.join(timeout)
        return "\n".join(self.lines)


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return path


class NodeProcess:
    """A console-script node started with a params file; its output is collected for asserts."""

    def __init__(self, exe: str, params_file: Path, env: dict, extra_args: tuple[str, ...] = ()):
        self.proc = subprocess.Popen([str(BIN / exe), "--ros-args", "--params-file", str(params_file), *extra_args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_exit(self, timeout: float = 20.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(2.0)
        return rc

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT, like Ctrl-C; a clean shutdown exits 0."""
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"node did not stop on SIGINT within {timeout}s:\n{self.output}")


class RosHarness:
    """An rclpy node in the test process, in its own context (the ros_env domain)."""

    def __init__(self, name: str = "test_driver"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._collectors: list = []

    def collect(self, msg_type, topic: str, qos: int = 10) -> list:
        got: list = []
        self._collectors.append(self.node.create_subscription(msg_type, topic, got.append, qos))
        return got

    def connected(self, *publishers) -> bool:
        """Every `collect` subscription is matched with a publisher and every given publisher with a
        subscriber.  Outputs are volatile: a message sent before its subscriber is matched is lost, so
        a test waits for this (not only for its own publisher's match) before it sends input."""
        return (all(sub.get_publisher_count() > 0 for sub in self._collectors)
                and all(pub.get_subscription_count() > 0 for pub in publishers))

    def spin_until(self, cond, timeout: float, proc: NodeProcess | None = None) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            if proc is not None and not proc.alive():
                raise AssertionError(f"node exited with {proc.proc.returncode}:\n{proc.output}")
            self.executor.spin_once(timeout_sec=0.02)
        return cond()

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()
