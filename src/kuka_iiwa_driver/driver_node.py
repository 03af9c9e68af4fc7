"""iiwa_driver_node: thin rclpy wiring around DriverCore (parameters, QoS, message conversion).

Subscribes: target pose (geometry_msgs/PoseStamped), gripper command (std_msgs/Bool,
True open / False closed), e-stop (std_msgs/Bool, True latches), joint_states.
Publishes: trajectory_msgs/JointTrajectory for a ros2_control joint_trajectory_controller,
the forwarded gripper command, EE pose, gripper state and a JSON status (std_msgs/String).
Serves: ~/release_estop (std_srvs/Trigger).
"""
from __future__ import annotations

import json
import sys

from builtin_interfaces.msg import Duration
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from rcan_common.config import ConfigError
from rcan_common.ros_params import declare_config
from rcan_common.ros_node import OnceLog, StartupError, qos_profile, service_qos, spin_node
from kuka_iiwa_driver.config import DriverConfig
from kuka_iiwa_driver.driver import DriverCore, JointCommand, cause_of  # noqa: F401 (re-exported)
from kuka_iiwa_driver.kinematics import ModelError, matrix_to_quat
from kuka_iiwa_driver.safety import Status

# Parameters the running node re-reads: DriverCore takes them from its cfg on every IK solve, so a
# change (validated as at start-up) applies to the next target.  Every other parameter, the safety
# limits included, is read-only: SetParameters carries no authentication, so the limits a running
# arm obeys change only with a restart.
RUNTIME_PARAMETERS = ("ik_max_iterations", "ik_position_tolerance_m", "ik_orientation_tolerance_deg")


def read_config(node: Node, on_change) -> DriverConfig:
    """Declare one ROS parameter per DriverConfig field and build the validated config;
    `on_change` receives each validated runtime change (see rcan_common.ros_params)."""
    return declare_config(node, DriverConfig, RUNTIME_PARAMETERS, on_change)


def _stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class IiwaDriverNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("iiwa_driver_node", **kwargs)
        try:
            self.cfg = read_config(self, self._apply_config)
            self.core = DriverCore(self.cfg)
        except (ConfigError, ModelError) as exc:
            raise StartupError(f"iiwa_driver_node: invalid configuration: {exc}") from exc
        cfg = self.cfg
        self.log_once = OnceLog(self.get_logger().warning)
        qos_in = qos_profile(cfg.qos_reliability, cfg.qos_depth)
        # Outputs and the e-stop are always reliable: that matches reliable and best-effort peers.
        qos_reliable = qos_profile("reliable", cfg.qos_depth)

        self.traj_pub = self.create_publisher(JointTrajectory, cfg.trajectory_topic, qos_reliable)
        self.gripper_pub = self.create_publisher(Bool, cfg.gripper_output_topic, qos_reliable)
        self.ee_pub = self.create_publisher(PoseStamped, cfg.ee_pose_topic, qos_reliable)
        self.gripper_state_pub = self.create_publisher(Bool, cfg.gripper_state_topic, qos_reliable)
        self.status_pub = self.create_publisher(String, cfg.status_topic, qos_reliable)
        self.create_subscription(PoseStamped, cfg.target_topic, self._on_target, qos_in)
        self.create_subscription(Bool, cfg.gripper_command_topic, self._on_gripper, qos_in)
        self.create_subscription(JointState, cfg.joint_states_topic, self._on_joint_state, qos_in)
        self.create_subscription(Bool, cfg.estop_topic, self._on_estop, qos_reliable)
        self.create_service(Trigger, "~/release_estop", self._on_release, qos_profile=service_qos())
        self.create_timer(1.0 / cfg.state_rate_hz, self._on_state_timer)
        self.create_timer(1.0 / cfg.status_rate_hz, self._publish_status)
        self.get_logger().info(
            f"{self.core.model.description}: joints {self.core.joint_names}, base_frame "
            f"'{cfg.base_frame}', targets on {cfg.target_topic} -> {cfg.trajectory_topic}")

    def _apply_config(self, cfg: DriverConfig) -> None:
        # Only RUNTIME_PARAMETERS can differ from the running config (the rest are read-only).
        self.cfg = self.core.cfg = cfg

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _warn_once(self, reason: str, prefix: str = "") -> None:
        self.log_once(cause_of(reason), f"{prefix}{reason}")

    def _guarded(self, what: str, fn, *args) -> None:
        """Run a callback; an unexpected error is logged once and the node carries on."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - one bad message must not kill the node
            self.core.counters.rejected += 1
            self.log_once(f"internal_error:{what}", f"internal error handling {what}: {type(exc).__name__}: {exc}")

    # -- subscriptions ---------------------------------------------------------------------
    def _on_target(self, msg: PoseStamped) -> None:
        self._guarded("target", self._handle_target, msg)

    def _handle_target(self, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        result = self.core.on_target((p.x, p.y, p.z), (o.x, o.y, o.z, o.w), msg.header.frame_id,
                                     _stamp_s(msg.header.stamp), self._now())
        if result.status is Status.REJECTED:
            self._warn_once(result.reason, "target rejected: ")
        else:
            if result.status is Status.CLAMPED:
                self._warn_once(result.reason, "target clamped: ")
            self._send(result.command)
        self._publish_status()

    def _on_gripper(self, msg: Bool) -> None:
        self._guarded("gripper command", self._handle_gripper, msg)

    def _handle_gripper(self, msg: Bool) -> None:
        value, reason = self.core.on_gripper(msg.data)
        if value is None:
            self._warn_once(reason)
            return
        self.gripper_pub.publish(Bool(data=value))

    def _on_joint_state(self, msg: JointState) -> None:
        self._guarded("joint_states", self._handle_joint_state, msg)

    def _handle_joint_state(self, msg: JointState) -> None:
        reason = self.core.on_joint_state(list(msg.name), list(msg.position), self._now())
        if reason:
            self._warn_once(reason)

    def _on_estop(self, msg: Bool) -> None:
        self._guarded("e-stop", self._handle_estop, msg)

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
        # Only a state change is logged each time; a burst of calls must not flood the log: a
        # refusal is logged once (the caller has the reason in the response), a call while not
        # latched is only answered.
        if response.success and was_latched:
            self.get_logger().info(f"release_estop: {response.message}")
        elif not response.success:
            self.log_once("release_refused", f"release_estop refused: {response.message}")
        self._publish_status()
        return response

    # -- timers ----------------------------------------------------------------------------
    def _on_state_timer(self) -> None:
        self._guarded("state timer", self._handle_state_timer)

    def _handle_state_timer(self) -> None:
        hold = self.core.tick(self._now())
        if hold is not None:
            self.get_logger().warning(f"{hold.reason}: holding position")
            self._send(hold)
            self._publish_status()
        pose = self.core.fresh_ee_pose(self._now())
        if pose is not None:
            pos, rot, measured = pose
            msg = PoseStamped()
            msg.header.stamp = Time(nanoseconds=int(measured * 1e9)).to_msg()
            msg.header.frame_id = self.cfg.base_frame
            msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pos)
            q = matrix_to_quat(rot)
            o = msg.pose.orientation
            o.x, o.y, o.z, o.w = (float(v) for v in q)
            self.ee_pub.publish(msg)
        self.gripper_state_pub.publish(Bool(data=self.core.gripper))

    def _publish_status(self) -> None:
        self.status_pub.publish(String(data=json.dumps(self.core.status(self._now()))))

    def _send(self, cmd: JointCommand) -> None:
        # The core only returns checked commands; the last check before the wire holds regardless.
        blocked = self.core.check_command(cmd.positions)
        if blocked:
            self.core.counters.commands_blocked += 1
            self._warn_once(blocked, f"{cmd.kind} not sent: ")
            return
        msg = JointTrajectory()
        # A zero stamp means "start now" to joint_trajectory_controller.
        msg.joint_names = list(self.core.joint_names)
        point = JointTrajectoryPoint()
        point.positions = [float(v) for v in cmd.positions]
        point.velocities = [0.0] * len(cmd.positions)
        sec, nanosec = divmod(int(round(cmd.duration * 1e9)), 1_000_000_000)
        point.time_from_start = Duration(sec=sec, nanosec=nanosec)
        msg.points = [point]
        self.traj_pub.publish(msg)


def main(args=None) -> int:
    # SIGINT / SIGTERM end the spin; the controller keeps holding its last point.
    return spin_node(IiwaDriverNode, args)


if __name__ == "__main__":
    sys.exit(main())
