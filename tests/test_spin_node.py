"""spin_node's teardown: a signal landing in it is a clean stop (exit 0); the node's own errors are not.

Each case runs a node in a fresh interpreter (rclpy's init and signal handlers are per process) and stops
it the way a SIGINT's races can: a KeyboardInterrupt raised inside destroy_node, rclpy's signal thread
shutting the context down between try_shutdown's check and its shutdown, or a callback failing on the stop
before that thread has marked the context down."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.ros

PRELUDE = """
import rclpy
from rclpy.node import Node
from rcan_common.ros_node import spin_node

class Stopping(Node):
    def __init__(self):
        super().__init__("stopping")
        self.create_timer(0.01, self.stop)

    def stop(self):
        self.context.try_shutdown()  # as rclpy's signal thread does on SIGINT
"""


def _run(body: str, ros_env) -> subprocess.CompletedProcess:
    code = PRELUDE + textwrap.dedent(body) + "\nraise SystemExit(spin_node(Node_))\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ros_env, timeout=60)


def test_keyboard_interrupt_inside_destroy_node_is_a_clean_stop(ros_env):
    done = _run("""
        class Node_(Stopping):
            def destroy_node(self):
                super().destroy_node()
                raise KeyboardInterrupt
        """, ros_env)
    assert done.returncode == 0, done.stderr
    assert "interrupted during destroy_node" in done.stderr


def test_shutdown_raced_by_the_signal_thread_is_a_clean_stop(ros_env):
    done = _run("""
        import rclpy.utilities
        from rclpy.impl.implementation_singleton import rclpy_implementation

        def racing_try_shutdown(**kwargs):  # found ok, then shut down by the other thread first
            raise rclpy_implementation.RCLError("rcl_shutdown already called on the given context")

        rclpy.try_shutdown = racing_try_shutdown
        Node_ = Stopping
        """, ros_env)
    assert done.returncode == 0, done.stderr
    assert "try_shutdown after rclpy shut down: RCLError" in done.stderr


def test_an_error_in_the_nodes_own_close_still_fails_after_the_rest_of_the_teardown(ros_env):
    done = _run("""
        class Node_(Stopping):
            def close(self):
                raise OSError("could not flush the recording")

            def destroy_node(self):
                super().destroy_node()
                print("destroyed", flush=True)
        """, ros_env)
    assert done.returncode == 1 and "could not flush the recording" in done.stderr
    assert "destroyed" in done.stdout


def test_an_error_seen_before_the_signal_thread_marks_the_context_down_is_a_clean_stop(ros_env):
    # rcl_shutdown finalises the middleware before it marks the context invalid, so a callback can fail
    # on the stop while rclpy.ok() is still True; the shutdown completes on another thread moments later.
    done = _run("""
        import threading
        import time

        class Node_(Node):
            def __init__(self):
                super().__init__("failing_on_stop")
                self.create_timer(0.01, self.fail)

            def fail(self):
                threading.Thread(target=lambda: (time.sleep(0.2), self.context.try_shutdown())).start()
                raise RuntimeError("publisher failed mid-shutdown")
        """, ros_env)
    assert done.returncode == 0, done.stderr


def test_an_error_while_the_context_stays_up_is_a_crash(ros_env):
    done = _run("""
        class Node_(Node):
            def __init__(self):
                super().__init__("failing")
                self.create_timer(0.01, self.fail)

            def fail(self):
                raise RuntimeError("a real bug")
        """, ros_env)
    assert done.returncode == 1 and "a real bug" in done.stderr
