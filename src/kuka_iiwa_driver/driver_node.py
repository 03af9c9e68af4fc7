"""iiwa_driver_node: thin rclpy wiring around DriverCore (parameters, QoS, message conversion).

In: rcan/target_pose, rcan/target_gripper (Bool, True open), rcan/estop (Bool, True latches), joint_states.
Out: the controller's JointTrajectory, gripper/command (forwarded gripper target), rcan/ee_pose,
rcan/gripper_state, ~/status (JSON).  Serves ~/release_estop."""
from __future__ import annotations

import json
import sys

from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from rcan_common.config import ConfigError
from rcan_common.ros_params import declare_config
from rcan_common.ros_msgs import joint_trajectory_msg, pose_stamped_msg
from rcan_common.ros_node import OnceLog, StartupError, now_s, publisher, service_qos, spin_node, subscription
from rcan_common.stamps import stamp_to_s
from kuka_iiwa_driver.config import DriverConfig
from kuka_iiwa_driver.driver import DriverCore, JointCommand, cause_of  # noqa: F401 (re-exported)
from kuka_iiwa_driver.kinematics import ModelError, matrix_to_quat
from kuka_iiwa_driver.safety import Status

# Re-read on every IK solve (a validated change applies to the next target).  Everything else, the safety
# limits included, is read-only: SetParameters has no authentication, so limits change only with a restart.
RUNTIME_PARAMETERS = ("ik_max_iterations", "ik_position_tolerance_m", "ik_orientation_tolerance_deg")


class IiwaDriverNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("iiwa_driver_node", **kwargs)
        try:
            cfg = self.cfg = declare_config(self, DriverConfig, RUNTIME_PARAMETERS, self._apply_config)
            self.core = DriverCore(cfg)
        except (ConfigError, ModelError) as exc:
            raise StartupError(f"iiwa_driver_node: invalid configuration: {exc}") from exc
        self.log_once = OnceLog(self.get_logger().warning)
        # Reliable by default (matches reliable and best-effort peers); qos_overrides.<topic>.* change it.
        self.traj_pub = publisher(self, JointTrajectory, cfg.trajectory_topic, 10)
        self.gripper_pub = publisher(self, Bool, cfg.gripper_output_topic, 10)
        self.ee_pub = publisher(self, PoseStamped, cfg.ee_pose_topic, 10)
        self.gripper_state_pub = publisher(self, Bool, cfg.gripper_state_topic, 10)
        self.status_pub = publisher(self, String, cfg.status_topic, 10)
        for msg_type, topic, what, handle in (
                (PoseStamped, cfg.target_topic, "target", self._handle_target),
                (Bool, cfg.gripper_command_topic, "gripper command", self._handle_gripper),
                (JointState, cfg.joint_states_topic, "joint_states", self._handle_joint_state),
                (Bool, cfg.estop_topic, "e-stop", self._handle_estop)):
            subscription(self, msg_type, topic, lambda m, w=what, h=handle: self._guarded(w, h, m), 10)
        self.create_service(Trigger, "~/release_estop", self._on_release, qos_profile=service_qos())
        self.create_timer(1.0 / cfg.state_rate_hz, lambda: self._guarded("state timer", self._handle_state_timer))
        self.create_timer(1.0 / cfg.status_rate_hz, lambda: self._guarded("status timer", self._publish_status))
        self.get_logger().info(f"{self.core.model.description}: joints {self.core.joint_names}, base_frame "
                               f"'{cfg.base_frame}', targets on {cfg.target_topic} -> {cfg.trajectory_topic}")

    def _apply_config(self, cfg: DriverConfig) -> None:
        # Only RUNTIME_PARAMETERS can differ from the running config (the rest are read-only).
        self.cfg = self.core.cfg = cfg

    def _warn_once(self, reason: str, prefix: str = "") -> None:
        self.log_once(cause_of(reason), f"{prefix}{reason}")

    def _guarded(self, what: str, fn, *args) -> None:
        """Run a callback; an unexpected error is logged once and the node carries on."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - one bad message must not kill the node
            self.core.counters.rejected += 1
            self.log_once(f"internal_error:{what}", f"internal error handling {what}: {type(exc).__name__}: {exc}")

    def _handle_target(self, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        result = self.core.on_target((p.x, p.y, p.z), (o.x, o.y, o.z, o.w), msg.header.frame_id,
                                     stamp_to_s(msg.header.stamp), now_s(self))
        if result.status is Status.REJECTED:
            self._warn_once(result.reason, "target rejected: ")
        else:
            if result.status is Status.CLAMPED:
                self._warn_once(result.reason, "target clamped: ")
            self._send(result.command)
        self._publish_status()

    def _handle_gripper(self, msg: Bool) -> None:
        value, reason = self.core.on_gripper(msg.data)
        if value is None:
            return self._warn_once(reason)
        self.gripper_pub.publish(Bool(data=value))

    def _handle_joint_state(self, msg: JointState) -> None:
        reason = self.core.on_joint_state(list(msg.name), list(msg.position), now_s(self))
        if reason:
            self._warn_once(reason)

    def _handle_estop(self, msg: Bool) -> None:
        latched_before = self.core.estop.latched
        hold = self.core.on_estop(msg.data)
        if self.core.estop.latched and not latched_before:
            self.get_logger().error("E-STOP latched: holding position; release with ~/release_estop")
        if hold is not None:
            self._send(hold)
        self._publish_status()

    def _on_release(self, request, response):
        was_latched = self.core.estop.latched
        response.success, response.message = self.core.release_estop()
        # Log state changes only (a burst must not flood the log): refusals once, calls while unlatched never.
        if response.success and was_latched:
            self.get_logger().info(f"release_estop: {response.message}")
        elif not response.success:
            self.log_once("release_refused", f"release_estop refused: {response.message}")
        self._publish_status()
        return response

    def _handle_state_timer(self) -> None:
        hold = self.core.tick(now_s(self))
        if hold is not None:
            self.get_logger().warning(f"{hold.reason}: holding position")
            self._send(hold)
            self._publish_status()
        pose = self.core.fresh_ee_pose(now_s(self))
        if pose is not None:
            pos, rot, measured = pose  # stamped with the joint_states it was computed from
            self.ee_pub.publish(pose_stamped_msg(pos, matrix_to_quat(rot), self.cfg.base_frame,
                                                 Time(nanoseconds=int(measured * 1e9)).to_msg()))
        self.gripper_state_pub.publish(Bool(data=self.core.gripper))

    def _publish_status(self) -> None:
        self.status_pub.publish(String(data=json.dumps(self.core.status(now_s(self)))))

    def _send(self, cmd: JointCommand) -> None:
        # The core only returns checked commands; the last check before the wire holds regardless.
        blocked = self.core.check_command(cmd.positions)
        if blocked:
            self.core.counters.commands_blocked += 1
            return self._warn_once(blocked, f"{cmd.kind} not sent: ")
        self.traj_pub.publish(joint_trajectory_msg(self.core.joint_names, cmd.positions, cmd.duration))


def main(args=None) -> int:
    # SIGINT / SIGTERM end the spin; the controller keeps holding its last point.
    return spin_node(IiwaDriverNode, args)


if __name__ == "__main__":
    sys.exit(main())
