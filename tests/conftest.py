"""Shared test fixtures.

Every test that starts ROS 2 nodes uses `ros_env`: DDS stays on loopback and each test
gets its own ROS_DOMAIN_ID so parallel or consecutive tests never see each other.
"""
from __future__ import annotations

import itertools
import os

import pytest

# Domain ids 1..100, spread by pid so two pytest runs on one machine rarely collide.
_domain_ids = itertools.count((os.getpid() % 10) * 10)

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"


@pytest.fixture
def ros_env(monkeypatch) -> dict[str, str]:
    """Environment for node processes (and this process): loopback DDS, a private domain id."""
    domain = 1 + next(_domain_ids) % 100
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("RMW_IMPLEMENTATION", os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp"))
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    return dict(os.environ)


@pytest.fixture
def harness(ros_env):
    """An rclpy node in the test process on the test's own domain (see node_harness.RosHarness)."""
    from node_harness import RosHarness

    h = RosHarness()
    yield h
    h.close()
