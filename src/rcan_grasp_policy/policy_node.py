"""policy_node: [source, G(source)] + EE/gripper state -> CEM over the Q-network -> target EE pose.

Topics and services: docs/ros.md.  Wiring only: planner.py picks actions, episode.py decides; an
episode starts on ~/start_episode (or at once with autostart) and its end is published on
rcan/policy/episode_done: the node knows nothing of who resets or judges the scene (in sim the
supervisor_node, on the robot an operator).  Stale inputs mean no command, malformed messages are
rejected (logged once per cause), and the node keeps running.
"""
from __future__ import annotations

import json
import sys

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from rcan_common.config import ConfigError
from rcan_common.ros_image import ImageError, image_msg_to_rgb, receipt_problem
from rcan_common.ros_msgs import pose_arrays, pose_stamped_msg
from rcan_common.ros_node import OnceLog, StartupError, now_s, publisher, service_qos, spin_node, subscription
from rcan_common.ros_params import declare_config
from rcan_common.stamps import FUTURE_STAMP, stamp_to_s
from rcan_grasp_policy.episode import NORMAL_WAITS, EpisodeCore, GripperState, ImagePair, check_ee_pose
from rcan_grasp_policy.markers import action_markers
from rcan_grasp_policy.planner import load_planner, resolve_inputs
from rcan_grasp_policy.policy_params import RUNTIME_PARAMETERS, PolicyNodeParams  # noqa: F401 (re-exported)
from rcan_grasp_policy.stamp_matcher import StampMatcher


class PolicyNode(Node):
    def __init__(self, **kwargs):
        super().__init__("policy_node", **kwargs)
        try:
            cfg = self.params = declare_config(self, PolicyNodeParams, RUNTIME_PARAMETERS,
                                                 lambda p: setattr(self, "params", p))  # act_on_new_pair
            cem = cfg.cem_config()
            self.planner = load_planner(cfg.model_path, cfg.runtime_config(), cem, cfg.bounds(), cfg.seed,
                                        log=self.get_logger().info)
            inputs = resolve_inputs(cfg.image_inputs, self.planner.in_channels, self.planner.meta.get("variant"))
            self.matcher = StampMatcher(cfg.matcher_capacity, on_reset=lambda m: self.events("matcher_reset", m))
        except (ValueError, ConfigError, RuntimeError) as exc:  # ModelError, PolicyLoadError
            raise StartupError(str(exc)) from exc
        self.core = EpisodeCore(cfg.core_config(), self.planner.act, inputs, self.planner.image_size,
                                self.planner.contract.center_crop, self.planner.yaw_state)
        self.uses = {"source": inputs != "canonical", "canonical": inputs != "source"}
        self.rejects, self.waits, self.events = (OnceLog(self.get_logger().warning) for _ in range(3))
        self.ee = self.gripper = self._waiting = None  # EEState, GripperState, why the last tick sent nothing
        self.target_pub = publisher(self, PoseStamped, cfg.target_pose_topic, 5)
        self.gripper_pub = publisher(self, Bool, cfg.gripper_command_topic, 5)
        self.marker_pub = publisher(self, MarkerArray, cfg.markers_topic, 5)
        self.status_pub = publisher(self, String, cfg.status_topic, 5)
        self.done_pub = publisher(self, String, cfg.episode_done_topic, 5)
        subscription(self, Image, cfg.source_topic, lambda m: self._on_image("source", m), 5)
        subscription(self, Image, cfg.canonical_topic, lambda m: self._on_image("canonical", m), 5)
        subscription(self, PoseStamped, cfg.ee_pose_topic, self._on_ee, 5)
        subscription(self, Bool, cfg.gripper_state_topic,  # Bool has no header: stamped on receipt
                     lambda m: setattr(self, "gripper", GripperState(bool(m.data), now_s(self))), 5)
        self.create_service(Trigger, "~/start_episode", self._on_start, qos_profile=service_qos())
        self.create_timer(1.0 / cfg.control_rate_hz, self._tick)
        self.create_timer(1.0, self._publish_status)
        self.get_logger().info(f"policy {cfg.model_path} ({self.planner.provider}, inputs {inputs}, {self.planner.image_size}"
                               f"px, CEM {cem.samples}/{cem.elites}/{cem.iterations}{cem.acting_summary()}) at {cfg.control_rate_hz:g} Hz, "
                               f"{'episode 1 started' if cfg.autostart else 'waiting for start_episode'}")

    def _on_image(self, stream: str, msg: Image) -> None:
        problem = receipt_problem(msg, now_s(self), self.params.max_future_stamp_s)
        if problem is not None:
            cause, detail = problem
            return self.rejects(cause if cause == FUTURE_STAMP else f"{stream}:{cause}", f"rejected {stream} image: {detail}")
        if not self.uses[stream]:
            return
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        both = self.uses["source"] and self.uses["canonical"]
        completed = self.matcher.add(stream, stamp_ns, msg) if both else self.matcher.add_self_paired(stamp_ns, msg)
        if self.params.act_on_new_pair and completed is not None:
            self._tick()  # this image completed the newest pair

    def _on_ee(self, msg: PoseStamped) -> None:
        p = self.params
        ee, cause, problem = check_ee_pose(*pose_arrays(msg), msg.header.frame_id, stamp_to_s(msg.header.stamp),
                                           now_s(self), p.base_frame, p.max_future_stamp_s, p.max_input_age)
        if ee is None:
            return self.rejects(cause, problem)
        self.ee = ee

    def _pair(self) -> ImagePair | None:
        try:  # converted once per pair; headers were checked on receipt, keep the node up regardless
            return self.matcher.latest_as(lambda p: ImagePair(p.stamp_ns * 1e-9, image_msg_to_rgb(p.source),
                                                              image_msg_to_rgb(p.canonical)))
        except ImageError as exc:
            return self.rejects(f"pair:{exc.reason}", f"cannot convert image pair: {exc}")

    def _tick(self) -> None:
        now = now_s(self)
        try:
            d = self.core.tick(now, self.ee, self.gripper, self._pair())
        except Exception as exc:  # a planner failure must not kill the node; no command is sent
            return self.waits(f"planner:{type(exc).__name__}", f"policy step failed, no command sent: {exc!r}")
        self._waiting = d.wait
        if d.wait and d.wait not in NORMAL_WAITS:
            self.waits(d.wait, f"no command: {d.wait.replace('_', ' ')}")
        if d.target is not None:
            self.waits.reset_all()  # inputs are healthy again: log the next problem anew
            stamp, frame = self.get_clock().now().to_msg(), self.params.base_frame
            self.target_pub.publish(pose_stamped_msg(*d.target, frame, stamp))
            if d.action is not None:
                self.marker_pub.publish(action_markers(self.ee.pos if self.ee else d.target[0], d.target[0], d.action,
                                                       d.q, self.core.step, self.core.cfg.max_steps, frame, stamp))
        if d.gripper_open is not None:
            self.gripper_pub.publish(Bool(data=d.gripper_open))
        if d.episode_done is not None:
            self.done_pub.publish(String(data=json.dumps(d.episode_done)))
        if d.event:
            self.get_logger().info(d.event)
        if d.target is not None or d.event:
            self._publish_status()

    def _on_start(self, request, response):
        response.success, response.message = self.core.start_episode(now_s(self))
        self.get_logger().info(f"start_episode: {response.message}")
        return response

    def _publish_status(self) -> None:
        status = {**self.core.status(), "waiting": self._waiting, **self.matcher.status(),
                  "rejected": dict(self.rejects.counts), "provider": self.planner.provider}
        self.status_pub.publish(String(data=json.dumps(status)))


def main(args=None) -> None:
    sys.exit(spin_node(PolicyNode, args))


if __name__ == "__main__":
    main()
