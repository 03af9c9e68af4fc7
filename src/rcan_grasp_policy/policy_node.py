"""policy_node: [source, G(source)] + EE/gripper state -> CEM over the Q-network -> target EE pose.

Subscribes: ``/camera/image_raw`` and ``/rcan/canonical/image`` (paired by exact header
stamp), ``/rcan/ee_pose`` (PoseStamped, base frame), the driver's gripper state (Bool,
True = open).  Publishes: ``/rcan/target_pose`` (PoseStamped, absolute, frame
``lbr_link_0``), ``/rcan/gripper_command`` (Bool, True = open, as the driver takes it),
``/rcan/policy/markers`` (MarkerArray: action arrow + Q text), ``/rcan/policy/status``
(String JSON).  Serves ``~/start_episode`` (Trigger).  In sim mode it calls the sim node's
``reset`` and ``grasp_success`` Trigger services.

The episode logic lives in policy_core.EpisodeCore; this file is wiring only.  Stale or
missing inputs mean NO command (logged once per cause); malformed messages are rejected
(logged once per cause) and the node keeps running.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import Point, PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from rcan_common.config import ConfigError, require
from rcan_common.ros_image import COLOR_ENCODINGS, ImageError, check_image_header, image_msg_to_rgb
from rcan_common.ros_node import RELIABILITY, OnceLog, StartupError, qos_profile, service_qos, spin_node
from rcan_common.stamps import DEFAULT_MAX_FUTURE_S, FUTURE_STAMP, future_stamp_reason
from rcan_common.ros_params import declare_config
from rcan_grasp_policy.cem import CEMConfig
from rcan_grasp_policy.policy_core import (CoreConfig, EEState, EpisodeCore, GripperState, ImagePair,
                                           load_planner, resolve_inputs)
from rcan_grasp_policy.stamp_matcher import StampMatcher
from rcan_perception.runtime import RuntimeConfig
from rcan_common.action import ActionBounds

# Causes that are part of normal operation (waiting for the next frame), not problems.
_NORMAL_WAITS = {"waiting_for_images_after_settle"}


def _stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


@dataclass(frozen=True)
class PolicyNodeParams:
    """ROS parameters of policy_node (config/policy.yaml)."""

    model_path: str = "models/policy_rcan_64.onnx"
    image_inputs: str = "auto"
    provider: str = "cpu"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    fp16: bool = False
    warmup_runs: int = 2
    cem_samples: int = 64
    cem_elites: int = 6
    cem_iterations: int = 2
    seed: int = 0
    max_translation: float = 0.05
    max_rotation: float = 0.5
    control_rate_hz: float = 10.0
    act_on_new_pair: bool = True
    """Decide as soon as a new matched pair arrives instead of on the next timer tick (up to
    1 / control_rate_hz later); the timer still drives settling, lifting and timeouts."""
    max_steps: int = 20
    max_input_age: float = 0.5
    max_future_stamp_s: float = DEFAULT_MAX_FUTURE_S
    """Images and EE poses stamped more than this (s) ahead of this node's clock are rejected on receipt."""
    tray_bottom_z: float = -0.115
    lift_height: float = 0.2
    lift_step: float = 0.05
    settle_tolerance: float = 0.01
    still_time: float = 0.5
    still_tolerance: float = 0.001
    settle_timeout: float = 3.0
    gripper_timeout: float = 2.0
    sim_mode: bool = False
    autostart: bool = True
    max_episodes: int = 0
    matcher_capacity: int = 10
    base_frame: str = "lbr_link_0"
    source_topic: str = "/camera/image_raw"
    canonical_topic: str = "/rcan/canonical/image"
    ee_pose_topic: str = "/rcan/ee_pose"
    gripper_state_topic: str = "/iiwa_driver_node/gripper_state"
    target_pose_topic: str = "/rcan/target_pose"
    gripper_command_topic: str = "/rcan/gripper_command"
    markers_topic: str = "/rcan/policy/markers"
    status_topic: str = "/rcan/policy/status"
    reset_service: str = "/sim_node/reset"
    grasp_success_service: str = "/sim_node/grasp_success"
    qos_reliability: str = "reliable"
    image_qos_depth: int = 5
    qos_depth: int = 5

    def __post_init__(self) -> None:
        require(bool(self.model_path), "model_path", "must not be empty")
        require(self.control_rate_hz > 0, "control_rate_hz", "must be > 0")
        require(self.matcher_capacity >= 1, "matcher_capacity", "must be >= 1")
        require(0 <= self.max_future_stamp_s <= 10, "max_future_stamp_s", "must be in [0, 10]")
        require(self.qos_reliability in RELIABILITY, "qos_reliability", f"must be one of {list(RELIABILITY)}")
        require(self.image_qos_depth >= 1, "image_qos_depth", "must be >= 1")
        require(self.qos_depth >= 1, "qos_depth", "must be >= 1")
        self.runtime_config(), self.cem_config(), self.core_config()  # their own checks

    def runtime_config(self) -> RuntimeConfig:
        return RuntimeConfig(provider=self.provider, intra_op_threads=self.intra_op_threads,
                             inter_op_threads=self.inter_op_threads, fp16=self.fp16, warmup_runs=self.warmup_runs)

    def cem_config(self) -> CEMConfig:
        return CEMConfig(samples=self.cem_samples, elites=self.cem_elites, iterations=self.cem_iterations)

    def bounds(self) -> ActionBounds:
        return ActionBounds(max_translation=self.max_translation, max_rotation=self.max_rotation)

    def core_config(self) -> CoreConfig:
        return CoreConfig(
            max_steps=self.max_steps, max_input_age=self.max_input_age, tray_bottom_z=self.tray_bottom_z,
            lift_height=self.lift_height, lift_step=self.lift_step, settle_tolerance=self.settle_tolerance,
            settle_timeout=self.settle_timeout, still_time=self.still_time, still_tolerance=self.still_tolerance,
            gripper_timeout=self.gripper_timeout, sim_mode=self.sim_mode, autostart=self.autostart,
            max_episodes=self.max_episodes, bounds=self.bounds())


# Parameters the running node re-reads (act_on_new_pair, on every completed pair); a change is
# validated like a start-up value.  The rest (model, CEM, episode logic, topics, QoS, rates) are
# used at start-up: read-only.
RUNTIME_PARAMETERS = ("act_on_new_pair",)


class PolicyNode(Node):
    def __init__(self, **kwargs):
        super().__init__("policy_node", **kwargs)
        try:
            cfg = self.params = declare_config(self, PolicyNodeParams, RUNTIME_PARAMETERS, self._apply_params)
            model_path, self.base_frame, rate_hz = cfg.model_path, cfg.base_frame, cfg.control_rate_hz
            self.act_on_new_pair = cfg.act_on_new_pair
            runtime, cem, bounds, core_cfg = cfg.runtime_config(), cfg.cem_config(), cfg.bounds(), cfg.core_config()
            image_qos = qos_profile(cfg.qos_reliability, cfg.image_qos_depth)
            qos = qos_profile(cfg.qos_reliability, cfg.qos_depth)
            self.planner = load_planner(model_path, runtime, cem, bounds, cfg.seed, log=self.get_logger().info)
            inputs = resolve_inputs(cfg.image_inputs, self.planner.in_channels, self.planner.meta.get("variant"))
            self.matcher = StampMatcher(cfg.matcher_capacity, on_reset=self._on_matcher_reset)
        except (ValueError, ConfigError, RuntimeError) as exc:  # ModelError, PolicyLoadError
            raise StartupError(str(exc)) from exc
        self.core = EpisodeCore(core_cfg, self.planner.act, inputs, self.planner.image_size)
        self.uses = {"source": inputs != "canonical", "canonical": inputs != "source"}

        self.rejects = OnceLog(self.get_logger().warning)
        self.waits = OnceLog(self.get_logger().warning)
        self.events = OnceLog(self.get_logger().warning)
        self.ee: EEState | None = None
        self.gripper: GripperState | None = None
        self._pair_cache: ImagePair | None = None
        self._pair_cached_from = None  # the matcher Pair _pair_cache was converted from
        self._pending: dict[str, object] = {}
        self._waiting: str | None = None  # why the last control tick sent nothing

        self.target_pub = self.create_publisher(PoseStamped, cfg.target_pose_topic, qos)
        self.gripper_pub = self.create_publisher(Bool, cfg.gripper_command_topic, qos)
        self.marker_pub = self.create_publisher(MarkerArray, cfg.markers_topic, qos)
        self.status_pub = self.create_publisher(String, cfg.status_topic, qos)
        source_topic, canonical_topic = cfg.source_topic, cfg.canonical_topic
        self.create_subscription(Image, source_topic, lambda m: self._on_image("source", m), image_qos)
        self.create_subscription(Image, canonical_topic, lambda m: self._on_image("canonical", m), image_qos)
        self.create_subscription(PoseStamped, cfg.ee_pose_topic, self._on_ee, qos)
        self.create_subscription(Bool, cfg.gripper_state_topic, self._on_gripper, qos)
        self.sim_clients = {"reset": self.create_client(Trigger, cfg.reset_service),
                            "grasp_success": self.create_client(Trigger, cfg.grasp_success_service)}
        self.create_service(Trigger, "~/start_episode", self._on_start, qos_profile=service_qos())
        self.create_timer(1.0 / rate_hz, self._tick)
        self.create_timer(1.0, self._publish_status)
        mode = "sim" if core_cfg.sim_mode else "robot"
        self.get_logger().info(f"policy {model_path} ({self.planner.provider}, inputs {inputs}, "
                               f"{self.planner.image_size}px, CEM {cem.samples}/{cem.elites}/{cem.iterations}) "
                               f"at {rate_hz:g} Hz, {mode} mode")

    def _apply_params(self, params: PolicyNodeParams) -> None:
        self.params = params  # validated; only RUNTIME_PARAMETERS can differ
        self.act_on_new_pair = params.act_on_new_pair

    # -- inputs
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, stream: str, msg: Image) -> None:
        try:
            check_image_header(msg, COLOR_ENCODINGS, 3)
        except ImageError as exc:
            self.rejects(f"{stream}:{exc.reason}", f"rejected {stream} image: {exc}")
            return
        if self._future(msg.header.stamp, f"{stream} image"):
            return
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        if self.uses["source"] and self.uses["canonical"]:
            completed = self.matcher.add(stream, stamp_ns, msg)
        elif self.uses[stream]:  # a single-stream variant pairs the image with itself
            self.matcher.add("source", stamp_ns, msg)
            completed = self.matcher.add("canonical", stamp_ns, msg)
        else:
            return
        if self.act_on_new_pair and completed is not None:
            self._tick()  # this image completed the newest pair

    def _on_ee(self, msg: PoseStamped) -> None:
        pos = np.array([msg.pose.position.x, msg.pose.position.y, msg.pose.position.z])
        o = msg.pose.orientation
        quat = np.array([o.x, o.y, o.z, o.w])
        if msg.header.frame_id != self.base_frame:
            self.rejects("ee_frame", f"rejected EE pose in frame '{msg.header.frame_id}', expected "
                                     f"'{self.base_frame}'")
            return
        norm = np.linalg.norm(quat)
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat)) and norm > 1e-6):
            self.rejects("ee_values", f"rejected EE pose with non-finite values or a zero quaternion: {pos}, {quat}")
            return
        if self._future(msg.header.stamp, "EE pose"):
            return
        age = self._now() - _stamp_s(msg.header.stamp)
        if age > self.params.max_input_age:  # never usable: keep the fresh state it would replace
            self.rejects("ee_stale", f"rejected EE pose stamped {age:.3f} s ago (max_input_age "
                                     f"{self.params.max_input_age} s)")
            return
        self.ee = EEState(pos, quat / norm, _stamp_s(msg.header.stamp))

    def _future(self, stamp, what: str) -> bool:
        """Reject (log once per cause, count) an input stamped too far ahead of this node's clock."""
        reason = future_stamp_reason(_stamp_s(stamp), self._now(), self.params.max_future_stamp_s)
        if reason is not None:
            self.rejects(FUTURE_STAMP, f"rejected {what}: {reason}")
        return reason is not None

    def _on_matcher_reset(self, message: str) -> None:
        # Logged once (a sender replaying old pairs must not flood the log); status counts them all.
        self.events("matcher_reset", message)

    def _on_gripper(self, msg: Bool) -> None:
        self.gripper = GripperState(bool(msg.data), self._now())  # Bool has no header: stamp on receipt

    def _pair(self) -> ImagePair | None:
        pair = self.matcher.latest()
        if pair is None:
            return None
        stamp = pair.stamp_ns * 1e-9
        if self._pair_cached_from is not pair:  # a new pair (after a matcher reset its stamp may repeat)
            try:
                self._pair_cache = ImagePair(stamp, image_msg_to_rgb(pair.source), image_msg_to_rgb(pair.canonical))
                self._pair_cached_from = pair
            except ImageError as exc:  # headers were checked on receipt; keep the node up regardless
                self.rejects(f"pair:{exc.reason}", f"cannot convert image pair: {exc}")
                return None
        return self._pair_cache

    # -- control
    def _tick(self) -> None:
        now = self._now()
        try:
            d = self.core.tick(now, self.ee, self.gripper, self._pair())
        except Exception as exc:  # a planner failure must not kill the node; no command is sent
            self.waits(f"planner:{type(exc).__name__}", f"policy step failed, no command sent: {exc!r}")
            return
        self._waiting = d.wait
        if d.wait and d.wait not in _NORMAL_WAITS:
            self.waits(d.wait, f"no command: {d.wait.replace('_', ' ')}")
        if d.target is not None:
            for cause in list(self.waits.counts):
                self.waits.reset(cause)  # inputs are healthy again: log the next problem anew
            self._publish_target(*d.target)
            if d.action is not None:
                self._publish_markers(d.target[0], d.action, d.q)
        if d.gripper_open is not None:
            self.gripper_pub.publish(Bool(data=d.gripper_open))
        if d.service:
            self._call(d.service, now)
        if d.event:
            self.get_logger().info(d.event)
        if d.target is not None or d.event or d.service:
            self._publish_status()

    def _publish_target(self, pos: np.ndarray, quat: np.ndarray) -> None:
        msg = PoseStamped()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.base_frame
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pos)
        o = msg.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in quat)
        self.target_pub.publish(msg)

    def _publish_markers(self, target: np.ndarray, action: np.ndarray, q: float) -> None:
        stamp = self.get_clock().now().to_msg()
        start = self.ee.pos if self.ee is not None else target
        arrow = Marker(ns="rcan_action", id=0, type=Marker.ARROW, action=Marker.ADD)
        arrow.header.frame_id, arrow.header.stamp = self.base_frame, stamp
        arrow.points = [Point(x=float(start[0]), y=float(start[1]), z=float(start[2])),
                        Point(x=float(target[0]), y=float(target[1]), z=float(target[2]))]
        arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.005, 0.01, 0.01
        arrow.color.r, arrow.color.g, arrow.color.b, arrow.color.a = 1.0 - q, q, 0.2, 1.0
        arrow.pose.orientation.w = 1.0
        grip = "close" if action[5] > 0.5 else "open" if action[6] > 0.5 else "-"
        text = Marker(ns="rcan_q", id=1, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        text.header = arrow.header
        text.pose.position.x, text.pose.position.y = float(start[0]), float(start[1])
        text.pose.position.z = float(start[2]) + 0.08
        text.pose.orientation.w = 1.0
        text.scale.z = 0.03
        text.color.r = text.color.g = text.color.b = text.color.a = 1.0
        dtheta = math.degrees(math.atan2(action[3], action[4]))
        text.text = (f"Q={q:.3f} step {self.core.step}/{self.core.cfg.max_steps} "
                     f"dtheta={dtheta:+.0f}deg gripper={grip}{' TERMINATE' if action[7] > 0.5 else ''}")
        self.marker_pub.publish(MarkerArray(markers=[arrow, text]))

    def _call(self, name: str, now: float) -> None:
        client = self.sim_clients[name]
        if not client.service_is_ready():
            self.waits(f"service:{name}", f"service {client.srv_name} is not available; retrying")
            self.core.on_service_unavailable(name, now)
            return
        future = client.call_async(Trigger.Request())
        self._pending[name] = future  # keep a reference until it completes

        def done(fut, name=name):
            self._pending.pop(name, None)
            try:
                resp = fut.result()
                ok, message = bool(resp.success), resp.message
            except Exception as exc:
                ok, message = False, repr(exc)
            self.get_logger().info(self.core.on_service_result(name, ok, message, self._now()))
            self._publish_status()

        future.add_done_callback(done)

    def _on_start(self, request, response):
        response.success, response.message = self.core.start_episode(self._now())
        self.get_logger().info(f"start_episode: {response.message}")
        return response

    def _latest_pair_stamp(self) -> float | None:
        pair = self.matcher.latest()
        return None if pair is None else pair.stamp_ns * 1e-9

    def _publish_status(self) -> None:
        status = self.core.status()
        status.update(waiting=self._waiting, matched_pairs=self.matcher.matched, unmatched_dropped=self.matcher.dropped,
                      matcher_resets=self.matcher.resets, latest_pair_stamp=self._latest_pair_stamp(),
                      rejected=dict(self.rejects.counts), provider=self.planner.provider)
        self.status_pub.publish(String(data=json.dumps(status)))


def main(args=None) -> None:
    sys.exit(spin_node(PolicyNode, args))


if __name__ == "__main__":
    main()
