"""policy_node as a real process with a tiny exported (untrained) Q-network ONNX."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from rcan_common.ros_image import rgb_to_image_msg
from node_harness import NodeProcess, write_params
from tiny_models import export_tiny_qnet

pytestmark = pytest.mark.ros




@pytest.fixture(scope="module")
def tiny_q(tmp_path_factory):
    return export_tiny_qnet(tmp_path_factory.mktemp("pol") / "q.onnx")


BASE = "lbr_link_0"
EE_POS = (0.55, 0.0, 0.115)


def _params(model, **extra):
    return {"model_path": str(model), "control_rate_hz": 20.0, "cem_samples": 16, "cem_elites": 4,
            "cem_iterations": 2, "warmup_runs": 1, "intra_op_threads": 1, "max_input_age": 1.0,
            "settle_timeout": 0.3, "gripper_timeout": 0.3, **extra}


class Driver:
    """Plays the robot driver + camera + perception: EE pose, gripper state, image pairs."""

    def __init__(self, h):
        n = h.node
        self.h = h
        self.src = n.create_publisher(Image, "/camera/image_raw", 10)
        self.can = n.create_publisher(Image, "/rcan/canonical/image", 10)
        self.ee = n.create_publisher(PoseStamped, "/rcan/ee_pose", 10)
        self.grip = n.create_publisher(Bool, "/rcan/gripper_state", 10)
        self.targets = h.collect(PoseStamped, "/rcan/target_pose")
        self.markers = h.collect(MarkerArray, "/rcan/policy/markers")
        self.status = h.collect(String, "/rcan/policy/status")
        self.commands = h.collect(Bool, "/rcan/target_gripper")

    def now(self):
        return self.h.node.get_clock().now()

    def state(self, frame=BASE, stamp=None):
        msg = PoseStamped()
        msg.header.stamp = (stamp or self.now()).to_msg()
        msg.header.frame_id = frame
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = EE_POS
        msg.pose.orientation.x, msg.pose.orientation.w = 1.0, 0.0  # gripper pointing down
        self.ee.publish(msg)
        self.grip.publish(Bool(data=True))

    def image(self, pub, stamp, size=64, value=100):
        msg = rgb_to_image_msg(np.full((size, size, 3), value, np.uint8))
        msg.header.stamp, msg.header.frame_id = stamp.to_msg(), "cam"
        pub.publish(msg)
        return msg

    def pair(self, stamp=None):
        stamp = stamp or self.now()
        self.image(self.src, stamp, 96)
        self.image(self.can, stamp, 64, 200)

    def keep_alive_for(self, seconds, proc, pairs=True):
        """Publish fresh state (and pairs) for `seconds` while spinning."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.state()
            if pairs:
                self.pair()
            self.h.spin_for(0.05)
            assert proc.alive(), proc.output

    def publish_until(self, cond, timeout, proc):
        end = time.monotonic() + timeout
        while not cond() and time.monotonic() < end:
            self.keep_alive_for(0.1, proc)
        return cond()

    def last_status(self) -> dict:
        return json.loads(self.status[-1].data) if self.status else {}

    def wait_status(self, cond, timeout, proc, state=True) -> bool:
        """Spin (publishing fresh EE/gripper state when `state`) until the node's status satisfies `cond`.
        The status (1 Hz) reports what the node has processed: a positive event to wait for."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond(self.last_status()):
                return True
            if state:
                self.state()
            self.h.spin_for(0.05)
            assert proc.alive(), proc.output
        return cond(self.last_status())

    def wait_connected(self, proc):
        pubs = (self.src, self.can, self.ee, self.grip)
        assert self.h.spin_until(lambda: self.h.connected(*pubs), 30.0, proc), proc.output


def test_commands_only_from_fresh_matched_pairs(tmp_path, ros_env, harness, tiny_q):
    d = Driver(harness)
    node = NodeProcess("policy_node", write_params(tmp_path / "p.yaml", _params(tiny_q)), ros_env)
    try:
        d.wait_connected(node)
        # Fresh state, but only the source stream: no pair, no command.
        for _ in range(10):
            d.state()
            d.image(d.src, d.now(), 96)
            harness.spin_for(0.05)
        # Pairs whose stamps differ: no command either.
        for _ in range(5):
            t = d.now()
            d.state()
            d.image(d.src, t, 96)
            d.image(d.can, t.__class__(nanoseconds=t.nanoseconds + 1000), 64)
            harness.spin_for(0.05)
        # An exactly matched pair that is stale (5 s old): still nothing.  Once the node has matched it (the
        # images before it on both streams were processed first) and ticked on it, it says why it waits.
        old = d.now().__class__(nanoseconds=d.now().nanoseconds - 5_000_000_000)
        d.pair(old)
        assert d.wait_status(lambda s: s.get("matched_pairs") == 1 and s.get("waiting") == "images_stale", 15.0,
                             node), (d.last_status(), node.output)
        # Malformed messages: rejected, the node stays up.
        bad = rgb_to_image_msg(np.zeros((8, 8, 3), np.uint8))
        bad.step = 5
        d.src.publish(bad)
        bad2 = rgb_to_image_msg(np.zeros((8, 8, 3), np.uint8))
        bad2.encoding = "mono16"
        d.can.publish(bad2)
        d.state(frame="world")
        rejected = {"source:step": 1, "canonical:encoding": 1, "ee_frame": 1}
        assert d.wait_status(lambda s: s.get("rejected") == rejected, 15.0, node), d.last_status()
        # Everything above was processed (status) and none of it gave a command.
        assert d.last_status()["matched_pairs"] == 1
        assert d.targets == [] and d.markers == [], "a command was sent without a fresh matched pair"
        assert node.alive()
        # Fresh matched pairs with fresh state -> a command.
        assert d.publish_until(lambda: d.targets, 15.0, node), node.output
        # Stop the EE/gripper stream (pairs keep coming): once the node reports the EE pose stale ...
        def pairs_until(cond, timeout):
            end = time.monotonic() + timeout
            while not cond(d.last_status()) and time.monotonic() < end:
                d.pair()
                harness.spin_for(0.05)
                assert node.alive(), node.output
            return cond(d.last_status())

        assert pairs_until(lambda s: s.get("waiting") == "ee_pose_stale", 15.0), d.last_status()
        n_before, matched = len(d.targets), d.last_status()["matched_pairs"]
        # ... ten more pairs, each matched (and ticked on), give no command.
        for _ in range(10):
            d.pair()
            harness.spin_for(0.05)
        assert d.wait_status(lambda s: s.get("matched_pairs", 0) >= matched + 10, 15.0, node, state=False), \
            d.last_status()
        assert len(d.targets) == n_before, "a command was sent with a stale EE pose"
        status = d.last_status()
        assert status["waiting"] == "ee_pose_stale", status
    finally:
        assert node.stop() == 0, node.output
    target = d.targets[0]
    assert target.header.frame_id == BASE
    delta = np.array([target.pose.position.x, target.pose.position.y, target.pose.position.z]) - EE_POS
    assert np.all(np.abs(delta) <= 0.05 + 1e-9)  # clipped translation, absolute pose
    q = target.pose.orientation
    assert abs(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w - 1.0) < 1e-6
    yaw = 2 * np.arctan2(q.y, q.x)  # Rz(yaw) * (180 deg about x) = (cos(y/2), sin(y/2), 0, 0)
    assert abs(q.z) < 1e-9 and abs(q.w) < 1e-9 and abs(np.angle(np.exp(1j * yaw))) <= 0.5 + 1e-6
    arrow, text = d.markers[0].markers
    assert arrow.header.frame_id == BASE and len(arrow.points) == 2 and text.text.startswith("Q=")
    assert status["step"] >= 1 and status["image_inputs"] == "source+canonical"
    assert status["rejected"] == {"source:step": 1, "canonical:encoding": 1, "ee_frame": 1}
    out = node.output
    for cause in ("source:step", "canonical:encoding", "ee_frame", "ee_pose_stale"):
        assert sum(f"'{cause}' problems" in line for line in out.splitlines()) == 1, (cause, out)


def test_acts_when_a_pair_arrives_not_on_the_timer(tmp_path, ros_env, harness, tiny_q):
    # The control timer fires every 1000 s, so a command within the (generous) wait came from a new matched pair.
    d = Driver(harness)
    node = NodeProcess("policy_node", write_params(tmp_path / "p.yaml", _params(tiny_q, control_rate_hz=0.001)),
                       ros_env)
    try:
        d.wait_connected(node)
        assert d.publish_until(lambda: d.targets, 30.0, node), node.output
    finally:
        assert node.stop() == 0, node.output


def test_start_episode_runs_one_episode_and_publishes_its_end(tmp_path, ros_env, harness, tiny_q):
    """Without autostart the node waits for ~/start_episode, runs the episode, lifts, publishes the
    episode-end record on rcan/policy/episode_done and is ready for the next start.  It calls no service."""
    d = Driver(harness)
    ends = harness.collect(String, "/rcan/policy/episode_done")
    client = harness.node.create_client(Trigger, "/policy_node/start_episode")

    def start() -> tuple[bool, str]:
        future = client.call_async(Trigger.Request())
        assert harness.spin_until(future.done, 15.0, node), node.output
        return future.result().success, future.result().message

    params = _params(tiny_q, autostart=False, max_steps=2, settle_timeout=0.2)
    node = NodeProcess("policy_node", write_params(tmp_path / "p.yaml", params), ros_env)
    try:
        d.wait_connected(node)
        assert harness.spin_until(client.service_is_ready, 30.0, node), node.output
        # Idle: fresh inputs give no command until an episode is started.
        assert d.wait_status(lambda s: s.get("phase") == "idle", 15.0, node), d.last_status()
        d.keep_alive_for(0.5, node)
        assert d.targets == []
        assert start() == (True, "episode 1 started")
        assert start()[0] is False  # refused while it runs
        assert d.publish_until(lambda: ends, 30.0, node), (d.last_status(), node.output)
        assert d.wait_status(lambda s: s.get("phase") == "idle" and s.get("episodes_finished") == 1, 15.0, node), \
            d.last_status()
        end = json.loads(ends[0].data)
        assert end["episode"] == 1 and 1 <= end["steps"] <= 2 and end["ended_by"] in ("max_steps", "terminate")
        # At most two actions (max_steps), then the lift: 0.2 m straight up from the last action's target,
        # in four 5 cm increments (lift_step) the driver's step limit accepts; then nothing more.
        assert len(d.targets) in (5, 6)
        last, lifts = d.targets[-5].pose.position, [t.pose.position for t in d.targets[-4:]]
        for k, lift in enumerate(lifts, start=1):
            assert (lift.x, lift.y) == (last.x, last.y) and abs(lift.z - last.z - 0.05 * k) < 1e-9
        assert d.last_status()["last_result"] == end and "successes" not in d.last_status()
        # Ready for the next one.
        assert start() == (True, "episode 2 started")
        assert d.publish_until(lambda: len(ends) == 2, 30.0, node), node.output
        assert json.loads(ends[1].data)["episode"] == 2
    finally:
        assert node.stop() == 0, node.output
    assert len(ends) == 2


def test_bad_policy_model_fails_at_start(tmp_path, ros_env, tiny_q):
    q3 = export_tiny_qnet(tmp_path / "q3.onnx", in_channels=3, variant="canonical")
    node = NodeProcess("policy_node", write_params(tmp_path / "p.yaml", _params(q3, image_inputs="source+canonical")),
                       ros_env)
    assert node.wait_exit(30.0) == 1
    assert "gives 6 channels but the policy model takes 3" in node.output


def test_future_stamped_pair_is_rejected_and_matching_recovers_when_stamps_go_back(tmp_path, ros_env, harness,
                                                                                     tiny_q):
    """Issue 12.2: one pair stamped an hour ahead used to freeze the matcher for good."""
    from rclpy.time import Duration

    d = Driver(harness)
    # The timer fires every 1000 s: every command here comes from a newly matched pair.
    node = NodeProcess("policy_node", write_params(tmp_path / "p.yaml", _params(tiny_q, control_rate_hz=0.001)),
                       ros_env)

    def status():
        return json.loads(d.status[-1].data) if d.status else {}

    try:
        d.wait_connected(node)
        d.state()
        d.pair(d.now() + Duration(seconds=3600))
        assert harness.spin_until(lambda: status().get("rejected", {}).get("future_stamp") == 2, 10.0, node), \
            status()
        assert d.targets == [] and status()["matched_pairs"] == 0
        # Correctly stamped pairs are matched and acted on right after.
        assert d.publish_until(lambda: d.targets, 15.0, node), node.output
        # Stamps go backwards (a sim reset, a clock jump): the matcher resets, says so, and goes on.
        last = d.now()
        d.state()
        d.pair(last)
        # (wait until that pair is matched, so the older one cannot arrive first)
        assert harness.spin_until(lambda: (status().get("latest_pair_stamp") or 0) >= last.nanoseconds * 1e-9,
                                  10.0, node), status()
        assert status()["matcher_resets"] == 0
        d.pair(last - Duration(seconds=0.2))
        assert harness.spin_until(lambda: status().get("matcher_resets") == 1, 10.0, node), status()
        n = len(d.targets)
        assert d.publish_until(lambda: len(d.targets) > n, 15.0, node), node.output
    finally:
        assert node.stop() == 0, node.output
    out = node.output
    assert sum("in the future" in line for line in out.splitlines()) == 1, out
    assert "stamp matcher reset" in out and "went backwards" in out
