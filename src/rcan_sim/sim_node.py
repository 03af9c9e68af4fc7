"""sim_node: the pybullet grasping world behind the same ROS interfaces as the real robot.

Subscribes to the controller's JointTrajectory and gripper/command (Bool, True open); publishes
joint_states, camera/image_raw (rgb8), camera/camera_info, ~/gripper_open, ~/episode; serves
~/reset and ~/grasp_success (std_srvs/Trigger), the supervision of sim episodes.  The logic lives
in rcan_sim.sim_core; this file is wiring only.  Topic names are the real robot's (relative: a
namespace moves them); a trajectory starts on receipt and replaces the one running; a malformed
message is logged once per cause and dropped.
"""
from __future__ import annotations

import json
import sys
import time

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rcan_common.config import ConfigError
from rcan_common.ros_image import camera_info_msg, rgb_to_image_msg
from rcan_common.ros_node import OnceLog, StartupError, publisher, service_qos, spin_node, subscription
from rcan_common.ros_params import declare_config
from rcan_common.stamps import stamp_to_s
from rcan_sim.sim_core import SimCore, TrajectoryError, arm_joint_names
from rcan_sim.sim_params import RUNTIME_PARAMETERS, SimNodeParams, make_world  # noqa: F401 (re-exported)

TRAJECTORY_TOPIC = "lbr/joint_trajectory_controller/joint_trajectory"
GRIPPER_COMMAND_TOPIC = "gripper/command"


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

        # Reliable (matches reliable and best-effort subscribers, rviz included); qos_overrides.<topic>.* change it.
        self.image_pub = publisher(self, Image, "camera/image_raw", 5)
        self.info_pub = publisher(self, CameraInfo, "camera/camera_info", 5)
        self.joint_pub = publisher(self, JointState, "joint_states", 5)
        self.gripper_pub = publisher(self, Bool, "~/gripper_open", 5)
        self.episode_pub = publisher(self, String, "~/episode", 5)
        subscription(self, JointTrajectory, TRAJECTORY_TOPIC, self.on_trajectory, 5)
        subscription(self, Bool, GRIPPER_COMMAND_TOPIC, self.on_gripper, 5)
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
            points = [(stamp_to_s(p.time_from_start), list(p.positions)) for p in msg.points]
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
        self.info_pub.publish(camera_info_msg(frame.camera.K, *frame.rgb.shape[:2], image.header))
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


def main(argv: list[str] | None = None) -> int:
    return spin_node(SimNode, argv)


if __name__ == "__main__":
    sys.exit(main())
