"""Driver configuration: one flat dataclass, so every field maps 1:1 onto a ROS parameter.

Defaults match config/iiwa_driver.yaml.  Validation raises rcan_common.config.ConfigError
naming the field; the node refuses to start on a bad value instead of guessing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rcan_common.config import require

from kuka_iiwa_driver.kinematics import N_JOINTS, available_models

JOINT_SUFFIXES = tuple(f"A{i}" for i in range(1, N_JOINTS + 1))


@dataclass
class DriverConfig:
    robot_model: str = "iiwa14"
    """'iiwa7' (LBR iiwa 7 R800) or 'iiwa14' (LBR iiwa 14 R820; the sim's arm): limits and kinematics."""
    joint_prefix: str = "lbr_"
    """Joint names are <prefix>A1..<prefix>A7 unless joint_names is given."""
    joint_names: list[str] = field(default_factory=list)
    """Explicit joint names A1..A7 (overrides joint_prefix), e.g. for kuka_drivers / iiwa_ros2."""
    base_frame: str = "lbr_link_0"
    """Frame of target poses and of the published EE pose (the robot base)."""
    tool_offset: list[float] = field(default_factory=lambda: [0.0, 0.024, 0.217])
    """Flange (lbr_link_ee) -> fingertip centre [m], in the flange frame (default: the sim's gripper)."""

    # Relative names: a node namespace moves the whole robot's graph.
    target_topic: str = "rcan/target_pose"
    gripper_command_topic: str = "rcan/target_gripper"
    """The policy's gripper target (std_msgs/Bool, True = open)."""
    estop_topic: str = "rcan/estop"
    joint_states_topic: str = "joint_states"
    trajectory_topic: str = "lbr/joint_trajectory_controller/joint_trajectory"
    gripper_output_topic: str = "gripper/command"
    """The gripper (or sim_node): the target forwarded unless the e-stop is latched."""
    ee_pose_topic: str = "rcan/ee_pose"
    gripper_state_topic: str = "rcan/gripper_state"
    """The last forwarded gripper command (what the policy reads as the gripper state)."""
    status_topic: str = "~/status"

    workspace_min: list[float] = field(default_factory=lambda: [0.3, -0.25, -0.105])
    """Lower corner of the allowed tool-position box [m] in base_frame (targets are clamped)."""
    workspace_max: list[float] = field(default_factory=lambda: [0.8, 0.25, 0.35])
    max_step_m: float = 0.05
    """Largest tool translation per command, from the measured pose (longer steps are clamped)."""
    max_tilt_deg: float = 10.0
    """Targets whose tool axis is further than this from straight down are rejected."""
    max_joint_step_deg: float = 30.0
    """Largest joint change per command; more means an IK branch flip and is rejected."""
    joint_limit_margin_deg: float = 2.0
    """IK solutions stay this far inside the KUKA joint limits."""
    velocity_scale: float = 0.2
    """Fraction of the KUKA maximum joint speed used to time each move (0 < s <= 1)."""
    min_move_duration_s: float = 0.1
    hold_duration_s: float = 0.2
    """time_from_start of a hold trajectory (current position)."""
    max_command_age_s: float = 0.5
    """Targets whose header stamp is older than this are rejected as stale."""
    max_future_s: float = 0.1
    """Targets stamped further than this in the future are rejected (clock skew)."""
    command_timeout_s: float = 1.0
    """Watchdog: a move still executing with no new target for this long is stopped (hold)."""
    joint_state_timeout_s: float = 0.5
    """Watchdog: joint_states older than this stop motion and block new targets."""
    joint_state_max_jump_deg: float = 5.0
    """A joint_states message may move a joint at most 2x its KUKA speed times the time since the
    last validated state, plus this; larger jumps (spoofed or glitched states) are rejected.  After
    joint_state_timeout_s without a validated state the next in-limit state is the new reference.  Such a
    state, and one further than this from the last, stays disputed (nothing planned or held from it) until a
    second state agrees with it."""

    ik_max_iterations: int = 200
    ik_position_tolerance_m: float = 0.0005
    ik_orientation_tolerance_deg: float = 0.5
    rest_posture_deg: list[float] = field(default_factory=lambda: [0.0, 30.0, 0.0, -90.0, 0.0, 60.0, 0.0])
    """Second IK seed when the measured posture does not converge (tool pointing down)."""

    initial_gripper_open: bool = True
    """Gripper state reported before the first gripper command (open the gripper before starting)."""

    state_rate_hz: float = 20.0
    """Rate of the watchdog check and of the EE pose / gripper state publications."""
    status_rate_hz: float = 2.0

    def __post_init__(self) -> None:
        models = available_models()
        require(self.robot_model in models, "robot_model", f"must be one of {models}")
        require(len(self.joint_names) in (0, N_JOINTS), "joint_names", f"give {N_JOINTS} names or none")
        require(len(set(self.resolved_joint_names())) == N_JOINTS, "joint_names", "names must be distinct")
        require(bool(self.base_frame), "base_frame", "must not be empty")
        require(len(self.tool_offset) == 3, "tool_offset", "must be [x, y, z]")
        for name in ("target_topic", "gripper_command_topic", "estop_topic", "joint_states_topic",
                     "trajectory_topic", "gripper_output_topic", "ee_pose_topic",
                     "gripper_state_topic", "status_topic"):
            require(bool(getattr(self, name)), name, "must not be empty")
        require(len(self.workspace_min) == 3 and len(self.workspace_max) == 3, "workspace_min",
                "workspace_min and workspace_max must be [x, y, z]")
        require(all(lo < hi for lo, hi in zip(self.workspace_min, self.workspace_max)), "workspace_max",
                "must be greater than workspace_min on every axis")
        require(self.max_step_m > 0, "max_step_m", "must be > 0")
        require(0 < self.max_tilt_deg < 90, "max_tilt_deg", "must be in (0, 90)")
        require(0 < self.max_joint_step_deg <= 180, "max_joint_step_deg", "must be in (0, 180]")
        require(0 <= self.joint_limit_margin_deg < 30, "joint_limit_margin_deg", "must be in [0, 30)")
        require(0 < self.velocity_scale <= 1, "velocity_scale", "must be in (0, 1]")
        require(self.min_move_duration_s > 0, "min_move_duration_s", "must be > 0")
        require(self.hold_duration_s > 0, "hold_duration_s", "must be > 0")
        require(self.max_command_age_s > 0, "max_command_age_s", "must be > 0")
        require(self.max_future_s >= 0, "max_future_s", "must be >= 0")
        require(self.command_timeout_s > 0, "command_timeout_s", "must be > 0")
        require(self.joint_state_timeout_s > 0, "joint_state_timeout_s", "must be > 0")
        require(0 < self.joint_state_max_jump_deg <= 180, "joint_state_max_jump_deg", "must be in (0, 180]")
        require(self.ik_max_iterations >= 1, "ik_max_iterations", "must be >= 1")
        require(0 < self.ik_position_tolerance_m <= 0.01, "ik_position_tolerance_m", "must be in (0, 0.01]")
        require(0 < self.ik_orientation_tolerance_deg <= 5, "ik_orientation_tolerance_deg", "must be in (0, 5]")
        require(len(self.rest_posture_deg) == N_JOINTS, "rest_posture_deg", f"must have {N_JOINTS} values")
        require(self.state_rate_hz > 0, "state_rate_hz", "must be > 0")
        require(self.status_rate_hz > 0, "status_rate_hz", "must be > 0")

    def resolved_joint_names(self) -> list[str]:
        if self.joint_names:
            return list(self.joint_names)
        return [self.joint_prefix + s for s in JOINT_SUFFIXES]
