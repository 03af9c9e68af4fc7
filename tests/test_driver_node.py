"""iiwa_driver_node as a real process over loopback DDS, driven by an rclpy node in the test.

The test node plays the robot (publishes /joint_states at the home posture) and the policy
(targets, gripper, e-stop), and watches the JointTrajectory output and the JSON status.
"""
from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
from node_harness import NodeProcess, RosHarness, call_idempotent, write_params

from kuka_iiwa_driver.kinematics import Kinematics, load_model, matrix_to_quat
from kuka_iiwa_driver.safety import top_down

pytestmark = pytest.mark.ros

CONFIG = Path(__file__).resolve().parents[1] / "config" / "iiwa_driver.yaml"
NAMES = [f"lbr_A{i}" for i in range(1, 8)]
HOME = np.radians([0.0, 30.0, 0.0, -90.0, 0.0, 60.0, 0.0])
TRAJ = "/lbr/joint_trajectory_controller/joint_trajectory"


class Rig:
    """Test-side robot + policy around one driver process."""

    def __init__(self, tmp_path: Path, env: dict, **params):
        from geometry_msgs.msg import PoseStamped
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, String
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        self.h = RosHarness("driver_test")
        node = self.h.node
        self.trajs = self.h.collect(JointTrajectory, TRAJ)
        self.grippers = self.h.collect(Bool, "/gripper/command")
        self.statuses = self.h.collect(String, "/iiwa_driver_node/status")
        self.target_pub = node.create_publisher(PoseStamped, "/rcan/target_pose", 10)
        self.gripper_pub = node.create_publisher(Bool, "/rcan/target_gripper", 10)
        self.estop_pub = node.create_publisher(Bool, "/rcan/estop", 10)
        self.js_pub = node.create_publisher(JointState, "/joint_states", 10)
        self.release = node.create_client(Trigger, "/iiwa_driver_node/release_estop")
        self.js_names = list(NAMES)
        node.create_timer(0.02, self._publish_joint_states)
        overrides = write_params(tmp_path / "overrides.yaml", params)
        self.proc = NodeProcess("iiwa_driver_node", CONFIG, env, ("--params-file", str(overrides)))
        self.kin = Kinematics(load_model("iiwa14"), (0.0, 0.024, 0.217))
        self.home_p, _ = self.kin.fk(HOME)

    def _publish_joint_states(self) -> None:
        from sensor_msgs.msg import JointState

        msg = JointState(name=self.js_names, position=[float(v) for v in HOME])
        msg.header.stamp = self.h.node.get_clock().now().to_msg()
        self.js_pub.publish(msg)

    def status(self) -> dict:
        return json.loads(self.statuses[-1].data) if self.statuses else {}

    def wait(self, cond, timeout: float = 10.0) -> bool:
        return self.h.spin_until(cond, timeout, self.proc)

    def ready(self) -> bool:
        """The driver is idle (it has our joint states) and every topic between us is matched on our side;
        then a short spin, as the driver's side matches on its own (a volatile message sent before is lost)."""
        ok = self.wait(lambda: self.status().get("state") == "idle" and
                       self.h.connected(self.target_pub, self.gripper_pub, self.estop_pub), 20.0)
        self.h.spin_for(0.5)
        return ok

    def send_target(self, pos, yaw=math.pi, frame="lbr_link_0", quat=None, age=0.0):
        from geometry_msgs.msg import PoseStamped

        msg = PoseStamped()
        now_ns = self.h.node.get_clock().now().nanoseconds - int(age * 1e9)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now_ns, 1_000_000_000)
        msg.header.frame_id = frame
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pos)
        q = matrix_to_quat(top_down(yaw)) if quat is None else quat
        o = msg.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in q)
        self.target_pub.publish(msg)

    def counter(self, name: str) -> int:
        return self.status().get("counters", {}).get(name, 0)

    def close(self, sig=signal.SIGINT) -> int:
        """Stop the driver like Ctrl-C (or systemd's SIGTERM); a clean shutdown exits 0."""
        try:
            if self.proc.alive():
                self.proc.proc.send_signal(sig)
            return self.proc.wait_exit(10.0)
        finally:
            self.h.close()


def _assert_valid_trajectory(msg, limits_model="iiwa14"):
    m = load_model(limits_model)
    assert list(msg.joint_names) == NAMES
    assert len(msg.points) == 1
    pt = msg.points[0]
    q = np.array(pt.positions)
    assert q.shape == (7,) and np.all(np.isfinite(q))
    assert np.all(q >= m.lower) and np.all(q <= m.upper)
    t = pt.time_from_start.sec + pt.time_from_start.nanosec * 1e-9
    assert t > 0
    return q, t


def test_targets_are_checked_converted_and_watched(tmp_path, ros_env):
    # Slow moves (velocity_scale) so the watchdog sees a move in flight when targets stop.
    rig = Rig(tmp_path, ros_env, velocity_scale=0.05, command_timeout_s=0.6, joint_state_timeout_s=1.0,
              status_rate_hz=10.0)
    try:
        assert rig.ready(), rig.proc.output
        # 1. A good target -> one JointTrajectory reaching it, within joint and speed limits.
        goal = rig.home_p + [0.02, 0.0, -0.03]
        rig.send_target(goal)
        assert rig.wait(lambda: len(rig.trajs) == 1), rig.proc.output
        q, t = _assert_valid_trajectory(rig.trajs[0])
        np.testing.assert_allclose(rig.kin.fk(q)[0], goal, atol=1e-3)
        speed = np.abs(q - HOME) / t
        assert np.all(speed <= load_model("iiwa14").max_velocity * 0.05 + 1e-6)
        # 2. Watchdog: no further target while that move runs -> one hold at the measured posture.
        assert rig.wait(lambda: len(rig.trajs) == 2, 5.0), rig.proc.output
        hold, t_hold = _assert_valid_trajectory(rig.trajs[1])
        np.testing.assert_allclose(hold, HOME, atol=1e-9)
        assert t_hold == pytest.approx(0.2)
        assert rig.wait(lambda: "no target" in rig.status().get("watchdog", {}).get("last_hold_reason", ""))
        # 3. Out of the workspace -> clamped (still sent), with the reason in status.
        rig.send_target(rig.home_p + [0.0, 0.0, -1.0])
        assert rig.wait(lambda: len(rig.trajs) == 3)
        q, _ = _assert_valid_trajectory(rig.trajs[2])
        assert rig.kin.fk(q)[0][2] == pytest.approx(rig.home_p[2] - 0.05, abs=1e-3)  # step clamp
        assert rig.wait(lambda: "workspace clamp" in rig.status().get("last_clamp_reason", ""))
        assert rig.wait(lambda: len(rig.trajs) == 4, 5.0)  # the slow move is held again
        # 4. NaN, bad frame, zero quaternion, stale stamp -> rejected, nothing sent.
        bad = [dict(pos=(float("nan"), 0.0, 0.0)), dict(pos=rig.home_p, frame="world"),
               dict(pos=rig.home_p, quat=(0.0, 0.0, 0.0, 0.0)), dict(pos=rig.home_p, age=3.0)]
        for kw in bad:
            rig.send_target(**kw)
        assert rig.wait(lambda: rig.counter("rejected") == 4), rig.status()
        # 5. Malformed joint_states (joints missing) are counted, not fatal.
        rig.js_names = NAMES[:5] + ["x", "y"]
        assert rig.wait(lambda: rig.counter("joint_states_rejected") >= 3)
        assert rig.wait(lambda: rig.status().get("state") == "waiting_for_joint_states")
        rig.js_names = list(NAMES)
        rig.h.spin_for(0.3)
        assert len(rig.trajs) == 4
        # Still serving: a fresh good target is executed.
        rig.send_target(rig.home_p + [0.0, 0.01, 0.0])
        assert rig.wait(lambda: len(rig.trajs) == 5), rig.proc.output
        assert rig.proc.alive()
    finally:
        assert rig.close() == 0, rig.proc.output
    assert "target rejected: non-finite" in rig.proc.output


def test_estop_latches_blocks_and_releases_only_on_request(tmp_path, ros_env):
    from std_msgs.msg import Bool
    from std_srvs.srv import Trigger

    rig = Rig(tmp_path, ros_env, joint_state_timeout_s=1.0, status_rate_hz=10.0)
    try:
        assert rig.ready(), rig.proc.output
        rig.gripper_pub.publish(Bool(data=False))
        assert rig.wait(lambda: len(rig.grippers) == 1) and rig.grippers[0].data is False
        rig.estop_pub.publish(Bool(data=True))
        assert rig.wait(lambda: len(rig.trajs) == 1), rig.proc.output  # hold on latch
        np.testing.assert_allclose(rig.trajs[0].points[0].positions, HOME, atol=1e-9)
        assert rig.wait(lambda: rig.status().get("state") == "estop")
        rig.send_target(rig.home_p + [0.01, 0.0, 0.0])
        rig.gripper_pub.publish(Bool(data=True))
        assert rig.wait(lambda: "e-stop latched" in rig.status().get("last_reject_reason", ""))
        rig.h.spin_for(0.3)
        assert len(rig.trajs) == 1 and len(rig.grippers) == 1

        assert rig.release.wait_for_service(timeout_sec=5.0)

        def call_release():
            future = rig.release.call_async(Trigger.Request())
            assert rig.wait(future.done)
            return future.result()

        # refused while the input is asserted, so safe to resend until the first response gets through
        res = call_idempotent(rig.release, rig.h.executor, Trigger.Request())
        assert res is not None and not res.success and "still asserted" in res.message
        rig.estop_pub.publish(Bool(data=False))
        assert rig.wait(lambda: rig.status().get("estop", {}).get("input_asserted") is False)
        assert rig.status()["state"] == "estop"  # False alone does not release
        res = call_release()
        assert res.success, res.message
        assert rig.wait(lambda: rig.status().get("state") == "idle")
        rig.send_target(rig.home_p + [0.01, 0.0, 0.0])
        assert rig.wait(lambda: len(rig.trajs) == 2), rig.proc.output
        _assert_valid_trajectory(rig.trajs[1])
    finally:
        assert rig.close(signal.SIGTERM) == 0, rig.proc.output


@pytest.mark.parametrize("params,message", [
    ({"max_step_m": -0.1}, "invalid config field 'max_step_m': must be > 0"),
    ({"robot_model": 7}, "invalid config field 'robot_model'"),
])
def test_bad_parameters_stop_the_node_at_start_with_the_field_named(tmp_path, ros_env, params, message):
    overrides = write_params(tmp_path / "bad.yaml", params)
    proc = NodeProcess("iiwa_driver_node", CONFIG, ros_env, ("--params-file", str(overrides)))
    assert proc.wait_exit(30.0) == 1
    assert message in proc.output


def test_spoofed_joint_states_never_reach_a_trajectory(tmp_path, ros_env):
    """Issue 12.1: A1 = 1e30 / 3.1 rad / a 1 rad jump on /joint_states, then the e-stop at once:
    the hold is the last validated (real) state, and nothing out of limits is ever published."""
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool

    rig = Rig(tmp_path, ros_env, joint_state_timeout_s=1.0, status_rate_hz=10.0)
    try:
        assert rig.ready(), rig.proc.output
        spoofs = [1e30, 3.1, -3.1, HOME[0] + 1.0]
        for a1 in spoofs:
            q = [float(v) for v in HOME]
            q[0] = a1
            rig.js_pub.publish(JointState(name=NAMES, position=q))
        rig.estop_pub.publish(Bool(data=True))
        assert rig.wait(lambda: rig.counter("joint_states_rejected") >= len(spoofs)), rig.status()
        assert rig.wait(lambda: len(rig.trajs) == 1), rig.proc.output
        rig.h.spin_for(0.3)
        assert len(rig.trajs) == 1
        hold, _ = _assert_valid_trajectory(rig.trajs[0])
        np.testing.assert_allclose(hold, HOME, atol=1e-9)
    finally:
        assert rig.close() == 0, rig.proc.output
    # One line per cause, not per message.
    assert rig.proc.output.count("joint_states outside the joint limits") == 1, rig.proc.output
    assert rig.proc.output.count("joint_states jump implausibly") == 1, rig.proc.output


def test_unique_frame_ids_do_not_flood_the_log(tmp_path, ros_env):
    """Issue 12.3: 1000 targets with 1000 different frame_ids -> one log line for the cause."""
    rig = Rig(tmp_path, ros_env, status_rate_hz=10.0)
    n, batch = 1000, 10
    try:
        assert rig.ready(), rig.proc.output
        for start in range(0, n, batch):  # batches of the QoS depth, so none is dropped on the way
            for i in range(start, start + batch):
                rig.send_target(rig.home_p, frame=f"frame_{i}_{'x' * (i % 7)}")
            assert rig.wait(lambda s=start: rig.counter("rejected") >= s + batch), rig.status()
        assert rig.counter("rejected") == n and rig.counter("accepted") == 0
        assert "frame_999" in rig.status()["last_reject_reason"]
    finally:
        assert rig.close() == 0, rig.proc.output
    lines = [ln for ln in rig.proc.lines if "is not base_frame" in ln]
    assert len(lines) == 1, lines[:5]
    assert len(rig.proc.lines) < 20, rig.proc.output


def test_release_estop_stays_correct_under_a_burst_of_calls(tmp_path, ros_env):
    """Issue 12.7: 200 rapid release_estop calls.  With rclpy's default services QoS (depth 10)
    only about 10 were answered; the server now queues SERVICE_QOS_DEPTH requests.  Every answer
    is right: no release while the e-stop input is asserted, exactly one release after it clears."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool
    from std_srvs.srv import Trigger

    from rcan_common.ros_node import SERVICE_QOS_DEPTH

    rig = Rig(tmp_path, ros_env, joint_state_timeout_s=1.0, status_rate_hz=10.0)
    # The caller's side matters too: a client keeps only `depth` unread responses.
    deep = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=256, reliability=ReliabilityPolicy.RELIABLE)
    client = rig.h.node.create_client(Trigger, "/iiwa_driver_node/release_estop", qos_profile=deep)

    def burst(n=200):
        futures = [client.call_async(Trigger.Request()) for _ in range(n)]
        # Requests are served in order, so once a last call is answered every earlier one that
        # was going to be answered has been.
        last = client.call_async(Trigger.Request())
        assert rig.wait(last.done, 30.0), rig.proc.output
        return [f.result() for f in futures if f.done()] + [last.result()]

    try:
        assert rig.ready(), rig.proc.output
        assert client.wait_for_service(timeout_sec=10.0)
        rig.estop_pub.publish(Bool(data=True))
        assert rig.wait(lambda: rig.status().get("state") == "estop")
        answers = burst()
        assert len(answers) > 50, len(answers)
        assert all(not a.success and "still asserted" in a.message for a in answers)
        assert rig.wait(lambda: rig.status().get("state") == "estop")
        rig.estop_pub.publish(Bool(data=False))
        assert rig.wait(lambda: rig.status().get("estop", {}).get("input_asserted") is False)
        answers = burst()
        assert len(answers) > 50, len(answers)
        assert all(a.success for a in answers)
        assert [a.message for a in answers].count("e-stop released") == 1
        assert rig.wait(lambda: rig.status().get("state") == "idle")
        print(f"answered {len(answers)} of 201 (server depth {SERVICE_QOS_DEPTH})")
    finally:
        assert rig.close() == 0, rig.proc.output
