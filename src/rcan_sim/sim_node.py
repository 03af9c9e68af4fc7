"""sim_node: the pybullet grasping world behind the same ROS interfaces as the real robot.

Subscribes to the joint_trajectory_controller command topic (trajectory_msgs/JointTrajectory)
and the gripper command; publishes /joint_states, /camera/image_raw (rgb8),
/camera/camera_info and the gripper state; serves ~/reset and ~/grasp_success
(std_srvs/Trigger).  All logic lives in rcan_sim.sim_core; this file is wiring only.

Topic names are the real robot's defaults; move them with remappings.  A trajectory starts
on receipt (as the JTC does for a zero header stamp) and replaces the one running.  A
malformed message is logged once per cause and dropped: the node keeps running.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rcan_common.config import ConfigError, require
from rcan_common.ros_image import rgb_to_image_msg
from rcan_common.ros_node import OnceLog, StartupError, qos_profile, service_qos, spin_node
from rcan_common.ros_params import declare_config
from rcan_common.domains import DOMAINS
from rcan_sim.sim_core import SimCore, TrajectoryError, arm_joint_names

TRAJECTORY_TOPIC = "/lbr/joint_trajectory_controller/joint_trajectory"
GRIPPER_COMMAND_TOPIC = "/rcan/gripper/command"


@dataclass(frozen=True)
class SimNodeParams:
    """ROS parameters of sim_node (config/sim.yaml)."""

    domain: str = "canonical"
    seed: int = 0
    object_split: str = "test"
    image_size: int = 472
    camera_rate_hz: float = 10.0
    joint_state_rate_hz: float = 50.0
    control_rate_hz: float = 100.0
    physics_hz: float = 120.0
    success_height: float = 0.08
    max_render_share: float = 0.5
    real_time_factor: float = 1.0
    joint_prefix: str = "lbr_"
    camera_frame: str = "camera_optical_frame"
    base_frame: str = "lbr_link_0"
    image_qos_reliability: str = "reliable"
    qos_depth: int = 5

    def __post_init__(self) -> None:
        require(self.domain in DOMAINS, "domain", f"must be one of {DOMAINS}")
        require(self.object_split in ("train", "test"), "object_split", "must be 'train' or 'test'")
        require(self.image_size >= 16, "image_size", "must be >= 16")
        for name in ("camera_rate_hz", "joint_state_rate_hz", "control_rate_hz", "physics_hz", "real_time_factor",
                     "success_height"):
            require(getattr(self, name) > 0, name, "must be > 0")
        require(0 < self.max_render_share <= 1, "max_render_share", "must be in (0, 1]")
        require(self.image_qos_reliability in ("reliable", "best_effort"), "image_qos_reliability",
                "must be 'reliable' or 'best_effort'")
        require(self.qos_depth >= 1, "qos_depth", "must be >= 1")


def make_world(params: SimNodeParams):
    """The pybullet world (DIRECT), configured for the node's camera size."""
    from rcan_sim.world import GraspWorld, WorldConfig

    return GraspWorld(WorldConfig(image_size=params.image_size, split=params.object_split,
                                  time_step=1.0 / params.physics_hz))


# Parameters the running node re-reads (from self.params, on every render, control step or
# grasp_success call); a change is validated like a start-up value.  The rest (image size, seed,
# split, rates, QoS, joint names) shape the world, timers and publishers at start-up: read-only.
RUNTIME_PARAMETERS = ("domain", "success_height", "max_render_share", "real_time_factor", "camera_frame")


class SimNode(Node):
    def __init__(self, world_factory=make_world, **kwargs):
        super().__init__("sim_node", **kwargs)
        try:
            self.params = declare_config(self, SimNodeParams, RUNTIME_PARAMETERS, self._apply_params)
        except ConfigError as exc:
            raise StartupError(f"sim_node: {exc}") from exc
        p = self.params
        self.world = world_factory(p)
        self.core = SimCore(self.world, arm_joint_names(p.joint_prefix), p.physics_hz, seed=p.seed)
        self.core.reset()
        self.log_once = OnceLog(self.get_logger().warning)

        image_qos = qos_profile(p.image_qos_reliability, p.qos_depth)
        self.image_pub = self.create_publisher(Image, "/camera/image_raw", image_qos)
        self.info_pub = self.create_publisher(CameraInfo, "/camera/camera_info", image_qos)
        self.joint_pub = self.create_publisher(JointState, "/joint_states", p.qos_depth)
        self.gripper_pub = self.create_publisher(Bool, "~/gripper_open", p.qos_depth)
        self.episode_pub = self.create_publisher(String, "~/episode", p.qos_depth)
        self.create_subscription(JointTrajectory, TRAJECTORY_TOPIC, self.on_trajectory, p.qos_depth)
        self.create_subscription(Bool, GRIPPER_COMMAND_TOPIC, self.on_gripper, p.qos_depth)
        self.create_service(Trigger, "~/reset", self.on_reset, qos_profile=service_qos())
        self.create_service(Trigger, "~/grasp_success", self.on_grasp_success, qos_profile=service_qos())

        self._last_wall = time.monotonic()
        self.create_timer(1.0 / p.control_rate_hz, self.on_control)
        self.create_timer(1.0 / p.joint_state_rate_hz, self.publish_joint_state)
        self.create_timer(1.0 / p.camera_rate_hz, self.publish_camera)
        self.frames = 0
        self._render_free_at = 0.0
        self.get_logger().info(
            f"sim_node: domain={p.domain} image={p.image_size}px camera={p.camera_rate_hz}Hz "
            f"rtf={p.real_time_factor} joints={list(self.core.joint_names)}")

    def close(self) -> None:
        self.world.close()

    def _apply_params(self, params: SimNodeParams) -> None:
        self.params = params  # validated; only RUNTIME_PARAMETERS can differ

    # --- commands -------------------------------------------------------------------------
    def on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            points = [(p.time_from_start.sec + p.time_from_start.nanosec * 1e-9, list(p.positions)) for p in msg.points]
            self.core.on_trajectory(list(msg.joint_names), points)
        except TrajectoryError as exc:
            self.log_once(f"trajectory:{exc.reason}", f"ignored joint trajectory: {exc}")

    def on_gripper(self, msg: Bool) -> None:
        # std_msgs/Bool: true = open, false = close (the driver's gripper output convention).
        self.core.on_gripper(bool(msg.data))

    # --- time -----------------------------------------------------------------------------
    def on_control(self) -> None:
        now = time.monotonic()
        wall_dt = now - self._last_wall
        self._last_wall = now
        # Catch up after a slow render; a longer stall (suspended process) is not replayed.
        self.core.advance(min(wall_dt, 0.5) * self.params.real_time_factor)

    def publish_joint_state(self) -> None:
        names, q, qd = self.core.joint_state()
        msg = JointState()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.name = list(names)
        msg.position = [float(v) for v in q]
        msg.velocity = [float(v) for v in qd]
        self.joint_pub.publish(msg)
        self.gripper_pub.publish(Bool(data=self.core.gripper_open()))

    def publish_camera(self) -> None:
        # Rendering shares this thread with physics and joint_states: when it is slow (472 px on
        # a busy CPU) the camera rate drops instead, so the arm keeps real time.
        t0 = time.monotonic()
        if t0 < self._render_free_at:
            return
        # Stamped at capture start, like a real camera's exposure time: latency downstream
        # then includes the render, as it would include exposure and readout.
        stamp = self.get_clock().now().to_msg()
        frame = self.world.render(self.params.domain, randomization_seed=self.core.seed + self.core.episode,
                                  labels=False)
        spent = time.monotonic() - t0
        share = self.params.max_render_share
        self._render_free_at = t0 + spent / share
        if spent / share > 1.0 / self.params.camera_rate_hz:
            self.log_once("camera_rate", f"camera limited to ~{share / spent:.1f} Hz (a render takes "
                                         f"{spent * 1000:.0f} ms, at most {share:.0%} of the time goes to rendering)")
        image = rgb_to_image_msg(frame.rgb)
        image.header.stamp = stamp
        image.header.frame_id = self.params.camera_frame
        self.image_pub.publish(image)
        self.info_pub.publish(camera_info(frame, stamp, self.params.camera_frame))
        self.frames += 1

    # --- services -------------------------------------------------------------------------
    def on_reset(self, request, response):
        info = self.core.reset()
        response.success = True
        response.message = json.dumps(info, default=str)
        self.episode_pub.publish(String(data=response.message))
        self.publish_joint_state()
        return response

    def on_grasp_success(self, request, response):
        success, detail = self.core.grasp_success(self.params.success_height)
        response.success = success
        response.message = json.dumps(detail)
        return response


def camera_info(frame, stamp, frame_id: str) -> CameraInfo:
    """CameraInfo from the world's pinhole intrinsics (no distortion)."""
    msg = CameraInfo()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    h, w = frame.rgb.shape[:2]
    msg.height, msg.width = int(h), int(w)
    k = [float(v) for v in frame.camera.K.reshape(-1)]
    msg.k = k
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [k[0], k[1], k[2], 0.0, k[3], k[4], k[5], 0.0, k[6], k[7], k[8], 0.0]
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    return msg


def main(argv: list[str] | None = None) -> int:
    return spin_node(SimNode, argv)


if __name__ == "__main__":
    sys.exit(main())
