"""Faults injected into the running graph (real processes, loopback DDS, untrained models):
perception killed and restarted, e-stop, unsafe targets, malformed messages on every topic.

The tests share one graph (starting it costs ~15 s on 2 cores) and run in file order.
"""
from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from rcan_bringup.graph import sim_graph
from rcan_bringup.launcher import GraphProcesses, group_alive, ros_environment

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.ros, pytest.mark.slow]

MAX_INPUT_AGE = 0.5  # policy_node max_input_age (s), set below
TRAJECTORY = "/lbr/joint_trajectory_controller/joint_trajectory"
DRIVER_STATUS = "/iiwa_driver_node/status"


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    from rcan_bringup.loop_monitor import LoopMonitor
    from rcan_bringup.probe import Probe
    from rcan_bringup.untrained import ensure_untrained_models
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import String

    generator, policy = ensure_untrained_models(tmp_path_factory.getbasetemp() / "untrained_models", 64)
    # A private domain outside the 1..100 that tests/conftest.py hands out.
    env = ros_environment(101 + os.getpid() % 100)
    saved = {k: os.environ.get(k) for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    os.environ.update(ROS_DOMAIN_ID=env["ROS_DOMAIN_ID"], ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    specs = sim_graph(generator, policy, image_size=64, seed=200, overrides={
        "sim_node": {"camera_rate_hz": 10.0},
        "policy_node": {"max_steps": 20, "max_input_age": MAX_INPUT_AGE},
    })
    logs = tmp_path_factory.mktemp("fault_logs")
    with GraphProcesses(env, log_dir=logs) as procs, Probe("fault_probe") as probe:
        monitor = LoopMonitor(probe)
        probe.listen("/sim_node/episode", String)
        probe.listen("/rcan/ee_pose", PoseStamped)
        probe.listen(DRIVER_STATUS, String)
        procs.start_all(specs)
        assert probe.wait_for(lambda: len(monitor.steps) >= 2, 90), {n: procs.log_tail(n) for n in procs.children}
        pgids = [procs.pid(n) for n in procs.children]
        yield procs, probe, monitor
        running = procs.running()
        codes = procs.shutdown()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert all(codes[name] == 0 for name in running), (codes, {  # clean exit on SIGINT
        name: procs.log_tail(name) for name in running if codes[name] != 0})
    assert not [p for p in pgids if group_alive(p)], "stray processes after teardown"


def joint_positions(probe, t0: float, t1: float) -> np.ndarray:
    return np.array([r.msg.position for r in probe.received("/joint_states") if t0 <= r.t <= t1])


def resets_between(probe, t0: float, t1: float) -> list[float]:
    return [r.t for r in probe.received("/sim_node/episode") if t0 <= r.t <= t1]


def assert_still(probe, since: float, duration: float, timeout: float = 10.0, tol: float = 2e-3) -> None:
    """The arm holds still for `duration` s, judged on joint_states after `since`.  A sim reset
    (an episode ending) teleports the arm; only what follows it counts, so wait past it."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        resets = resets_between(probe, since, now)
        start = max(since, resets[-1] + 0.5) if resets else since
        if now - start >= duration or now > deadline:
            break
        time.sleep(0.2)
    q = joint_positions(probe, now - duration, now)
    assert now - start >= duration, f"no {duration} s window without a sim reset"
    assert len(q) >= 5, f"too few joint_states in the window ({len(q)})"
    assert np.abs(q - q[0]).max() < tol, f"the arm moved by {np.abs(q - q[0]).max():.4f} rad"


def statuses(probe, topic: str, since: float = 0.0) -> list[dict]:
    return [json.loads(r.msg.data) for r in probe.received(topic, since=since)]


def driver_counters(probe) -> dict:
    last = probe.last(DRIVER_STATUS)
    return json.loads(last.msg.data)["counters"] if last else {}


def wait_for_mid_episode_action(monitor, probe, timeout: float = 60.0):
    """Wait for an action that neither terminates nor ends the episode (no lift will follow)."""
    seen = len(monitor.steps)

    def ok() -> bool:
        for step in monitor.steps[seen:]:
            s = step.status
            if s and s["last_action"][7] <= 0.5 and s["step"] < s["max_steps"] - 1:
                return True
        return False

    assert probe.wait_for(ok, timeout), "no mid-episode action"


def test_policy_goes_quiet_and_driver_holds_when_perception_dies(graph):
    procs, probe, monitor = graph
    wait_for_mid_episode_action(monitor, probe)
    t_kill, t_kill_wall = time.monotonic(), time.time()
    procs.kill("perception_node", signal.SIGKILL)
    # The policy finishes the move in flight (arrival or its 3 s settle timeout), then waits for
    # images newer than the settle time, which never come.
    acting = lambda: any(r.t > t_kill + 0.2 and json.loads(r.msg.data)["phase"] == "act"  # noqa: E731
                         for r in probe.received("/rcan/policy/status"))
    assert probe.wait_for(acting, 8), monitor.statuses[-3:]
    # The driver's watchdog (command_timeout_s = 1 s) has stopped any move 2.5 s after the kill.
    assert_still(probe, since=t_kill + 2.5, duration=1.0)
    # The policy is still deciding, and says why it sends nothing: a status from well after the kill
    # in the act phase with a wait reason (the positive event behind "no action").
    quiet = lambda: any(s["phase"] == "act" and s.get("waiting")  # noqa: E731
                        for s in statuses(probe, "/rcan/policy/status", since=t_kill + MAX_INPUT_AGE + 1.0))
    assert probe.wait_for(quiet, 10), monitor.statuses[-3:]
    # Images from before the kill may still be used while younger than max_input_age, no later.
    late = [s.marker_t for s in monitor.steps if s.marker_t > t_kill_wall + MAX_INPUT_AGE + 0.3]
    assert not late, "the policy acted on stale images"
    assert sorted(procs.running()) == ["iiwa_driver_node", "policy_node", "sim_node", "supervisor_node"]


def test_loop_resumes_after_perception_restarts(graph):
    procs, probe, monitor = graph
    before = len(monitor.steps)
    procs.restart("perception_node")
    assert probe.wait_for(lambda: len(monitor.steps) > before, 60), procs.log_tail("perception_node")
    assert len(procs.running()) == 5


def test_estop_stops_motion_until_released(graph):
    from std_msgs.msg import Bool

    procs, probe, monitor = graph
    wait_for_mid_episode_action(monitor, probe)
    probe.publish("/rcan/estop", Bool(data=True))
    t_stop = time.monotonic()
    # The policy keeps proposing targets; the latched driver refuses them.
    assert_still(probe, since=t_stop + 0.5, duration=2.5)
    assert "E-STOP latched" in procs.log_tail("iiwa_driver_node", 200_000)

    t_clear = time.monotonic()
    probe.publish("/rcan/estop", Bool(data=False))
    # The driver has seen the input go low (its status says so) before the release is asked for.
    cleared = lambda: any(s["estop"]["latched"] and not s["estop"]["input_asserted"]  # noqa: E731
                          for s in statuses(probe, DRIVER_STATUS, since=t_clear))
    assert probe.wait_for(cleared, 10), statuses(probe, DRIVER_STATUS)[-1:]
    ok, message = probe.trigger("/iiwa_driver_node/release_estop")
    assert ok, message
    t_release = time.monotonic()

    def moved() -> bool:
        q = joint_positions(probe, t_release, time.monotonic())
        return len(q) > 2 and np.abs(q - q[0]).max() > 0.01

    assert probe.wait_for(moved, 40), "motion did not resume after the e-stop release"


def test_unsafe_targets_are_clamped_or_rejected(graph):
    from geometry_msgs.msg import PoseStamped

    procs, probe, monitor = graph

    def target(x, y, z):
        msg = PoseStamped()
        msg.header.stamp = probe.now_msg()
        msg.header.frame_id = "lbr_link_0"
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = x, y, z
        msg.pose.orientation.x, msg.pose.orientation.w = 1.0, 0.0  # tool pointing down
        return msg

    t0 = time.monotonic()
    before = driver_counters(probe)
    for _ in range(3):
        probe.publish("/rcan/target_pose", target(math.nan, 0.0, 0.2))
        probe.publish("/rcan/target_pose", target(5.0, -4.0, 3.0))
    # The driver publishes its status after each target it handles: wait until it counts all six.
    handled = lambda: (driver_counters(probe).get("rejected", 0) >= before.get("rejected", 0) + 3  # noqa: E731
                       and driver_counters(probe).get("clamped", 0) >= before.get("clamped", 0) + 3)
    assert probe.wait_for(handled, 15), (before, driver_counters(probe))
    # Then watch the arm for 30 EE poses (1.5 s at the driver's 20 Hz) after the clamped moves were sent.
    t_handled = time.monotonic()
    assert probe.wait_count("/rcan/ee_pose", 30, timeout=30, since=t_handled)
    log = procs.log_tail("iiwa_driver_node", 300_000)
    assert "target rejected" in log and "target clamped" in log
    # Whatever was sent, the tool stayed inside the workspace box (config/iiwa_driver.yaml) + 2 cm.
    box = yaml.safe_load((ROOT / "config" / "iiwa_driver.yaml").read_text())["iiwa_driver_node"]["ros__parameters"]
    lo, hi = np.array(box["workspace_min"]) - 0.02, np.array(box["workspace_max"]) + 0.02
    poses = [r.msg.pose.position for r in probe.received("/rcan/ee_pose", since=t0)]
    assert poses
    for p in poses:
        xyz = np.array([p.x, p.y, p.z])
        assert np.all(xyz >= lo) and np.all(xyz <= hi), xyz
    assert len(procs.running()) == 5


def test_malformed_messages_on_every_topic_are_dropped(graph):
    from builtin_interfaces.msg import Duration
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    procs, probe, monitor = graph

    def image(encoding="rgb8", size=8, data_len=None):
        msg = Image(height=size, width=size, encoding=encoding, step=size * 3)
        msg.data = bytes(data_len if data_len is not None else size * size * 3)
        msg.header.stamp = probe.now_msg()
        return msg

    bad_pose = PoseStamped()
    bad_pose.header.frame_id = "map"
    bad_pose.header.stamp = probe.now_msg()
    nan_pose = PoseStamped()
    nan_pose.header.frame_id = "lbr_link_0"
    nan_pose.pose.position.x = math.nan
    bad_joints = JointState(name=["lbr_A1", "lbr_A2"], position=[0.0])
    short_joints = JointState(name=["lbr_A1"], position=[0.0])
    bad_traj = JointTrajectory(joint_names=["joint_1"], points=[
        JointTrajectoryPoint(positions=[0.0], time_from_start=Duration(sec=1))])
    nan_traj = JointTrajectory(joint_names=[f"lbr_A{i}" for i in range(1, 8)], points=[
        JointTrajectoryPoint(positions=[math.nan] * 7, time_from_start=Duration(sec=1))])
    sends = [
        ("/camera/image_raw", image(encoding="16UC1")),  # perception + policy
        ("/camera/image_raw", image(data_len=10)),
        ("/rcan/canonical/image", image(data_len=10)),  # policy
        ("/rcan/canonical/image", image(encoding="yuv422")),
        ("/rcan/ee_pose", bad_pose),  # policy
        ("/rcan/ee_pose", nan_pose),
        ("/rcan/target_pose", bad_pose),  # driver
        ("/rcan/target_pose", nan_pose),
        ("/joint_states", bad_joints),  # driver
        ("/joint_states", short_joints),
        (TRAJECTORY, bad_traj),  # sim
        (TRAJECTORY, nan_traj),
        ("/rcan/policy/episode_done", String(data="not json")),  # supervisor
        ("/rcan/policy/episode_done", String(data='{"episode": "one"}')),
    ]
    def policy_rejected() -> int:
        last = probe.last("/rcan/policy/status")
        return sum(json.loads(last.msg.data)["rejected"].values()) if last else 0

    p0, d0 = policy_rejected(), driver_counters(probe)
    for k in range(1, 6):
        for topic, msg in sends:
            probe.publish(topic, msg)
        # One round at a time (the policy keeps 5 images per topic): the policy's status (1 Hz) has counted
        # this round's 6 rejections (2 source, 2 canonical, 2 EE) before the next is sent.
        assert probe.wait_for(lambda: policy_rejected() >= p0 + 6 * k, 15, interval=0.1), (k, policy_rejected() - p0)
    # Each cause is logged once however often it recurs (5 sends each).
    expect = {
        "perception_node": ["rejected image"],
        "policy_node": ["rejected source image", "rejected canonical image", "rejected EE pose in frame",
                        "rejected EE pose with non-finite"],
        "iiwa_driver_node": ["joint_states"],
        "sim_node": ["ignored joint trajectory"],
        "supervisor_node": ["malformed episode_done"],
    }

    def all_handled() -> bool:
        # Counters: the policy's 30 (2 x 5 source, canonical, EE), the driver's 10 targets and 10 joint_states;
        # log lines: every node reported its causes.
        d = driver_counters(probe)
        if (policy_rejected() < p0 + 30 or d.get("rejected", 0) < d0.get("rejected", 0) + 10
                or d.get("joint_states_rejected", 0) < d0.get("joint_states_rejected", 0) + 10):
            return False
        return all(phrase in procs.log_tail(name, 1_000_000) for name, phrases in expect.items() for phrase in phrases)

    assert probe.wait_for(all_handled, 30, interval=0.2), (policy_rejected() - p0, d0, driver_counters(probe))
    assert len(procs.running()) == 5, procs.poll_deaths()
    logs = {name: procs.log_tail(name, 1_000_000) for name in procs.children}
    for name, log in logs.items():
        assert "Traceback" not in log, f"{name}:\n{log[-3000:]}"
    for name, phrases in expect.items():
        for phrase in phrases:
            assert phrase in logs[name], f"{name} did not report '{phrase}'"
    assert logs["sim_node"].count("ignored joint trajectory") == 2  # joint_names, non_finite
    assert logs["policy_node"].count("rejected canonical image") == 2  # data_length, encoding
    assert logs["supervisor_node"].count("malformed episode_done") == 1  # one cause, logged once
    # The loop still works after the garbage.
    before = len(monitor.steps)
    assert probe.wait_for(lambda: len(monitor.steps) > before, 40)
    status = json.loads(probe.last("/rcan/policy/status").msg.data)
    assert status["rejected"], status
