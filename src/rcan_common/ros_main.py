"""The main() lifecycle of the rcan nodes: start, spin until SIGINT/SIGTERM, and stop cleanly whatever the signal
races (rclpy handles the signal on a thread of its own while the main thread runs a callback or tears down)."""
from __future__ import annotations

from typing import Callable


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
        # Let rclpy's signal thread finish shutting the context down before anything is destroyed:
        # destroying entities while rcl_shutdown runs concurrently can fail (CI saw exit 1).
        _context_goes_down()
    except StartupError as exc:
        print(f"[FATAL] {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception:
        # A SIGINT/SIGTERM shuts the context down under whatever runs (the constructor, a callback);
        # what that breaks is a clean stop, not a crash.  Anything else is a real error.
        if not _context_goes_down():
            raise
    finally:
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
