"""policy_node's parameters (config/policy.yaml) as one flat dataclass, ROS-free.

Declared through rcan_common.ros_params.declare_config; QoS is not a field: every topic's
history, depth and reliability are rclpy QoS override parameters (``qos_overrides.<topic>...``).
"""
from __future__ import annotations

from dataclasses import dataclass

from rcan_common.action import ActionBounds
from rcan_common.config import require
from rcan_common.stamps import DEFAULT_MAX_FUTURE_S
from rcan_grasp_policy.cem import CEMConfig
from rcan_grasp_policy.episode import CoreConfig
from rcan_perception.runtime import RuntimeConfig


@dataclass(frozen=True)
class PolicyNodeParams:
    """ROS parameters of policy_node (config/policy.yaml)."""

    model_path: str = "models/policy_rcan_128.onnx"
    image_inputs: str = "auto"
    provider: str = "cpu"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    fp16: bool = False
    warmup_runs: int = 2
    cem_samples: int = 64
    cem_elites: int = 6
    cem_iterations: int = 2
    cem_close_threshold: float = 0.0
    """CEMConfig.close_threshold (NOT in the paper; 0: off): the value the policy's card names, e.g. 0.55 for
    policy_canonical_128; the shipped RCAN policies use 0."""
    cem_close_gate_last_steps: int = 0
    """CEMConfig.close_gate_last_steps (NOT in the paper; 0: the gate holds to the end): the close gate stands down
    in an episode's last this many steps (of max_steps); the card names the value, e.g. 6 for policy_canonical_128."""
    cem_hold_check_threshold: float = 0.0
    """CEMConfig.hold_check_threshold (NOT in the paper; 0: off): lift a closed gripper 5 cm before terminating and
    reopen it if the network then gives terminating a Q below this; the card names the value, e.g. 0.1 for
    policy_canonical_128; the shipped RCAN policies use 0."""
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
    autostart: bool = True
    """Start the first episode at once; false: wait for ~/start_episode (the sim graph's supervisor calls it)."""
    matcher_capacity: int = 10
    base_frame: str = "lbr_link_0"
    # Relative names: a node namespace moves the whole robot's graph.
    source_topic: str = "camera/image_raw"
    canonical_topic: str = "rcan/canonical/image"
    ee_pose_topic: str = "rcan/ee_pose"
    gripper_state_topic: str = "rcan/gripper_state"
    target_pose_topic: str = "rcan/target_pose"
    gripper_command_topic: str = "rcan/target_gripper"
    markers_topic: str = "rcan/policy/markers"
    status_topic: str = "rcan/policy/status"
    episode_done_topic: str = "rcan/policy/episode_done"
    """One JSON record per finished episode (episode, steps, ended_by): the episode-end event."""

    def __post_init__(self) -> None:
        require(bool(self.model_path), "model_path", "must not be empty")
        require(self.control_rate_hz > 0, "control_rate_hz", "must be > 0")
        require(self.matcher_capacity >= 1, "matcher_capacity", "must be >= 1")
        require(0 <= self.max_future_stamp_s <= 10, "max_future_stamp_s", "must be in [0, 10]")
        self.runtime_config(), self.cem_config(), self.core_config()  # their own checks

    def runtime_config(self) -> RuntimeConfig:
        return RuntimeConfig(provider=self.provider, intra_op_threads=self.intra_op_threads,
                             inter_op_threads=self.inter_op_threads, fp16=self.fp16, warmup_runs=self.warmup_runs)

    def cem_config(self) -> CEMConfig:
        return CEMConfig(samples=self.cem_samples, elites=self.cem_elites, iterations=self.cem_iterations,
                         close_threshold=self.cem_close_threshold,
                         close_gate_last_steps=self.cem_close_gate_last_steps,
                         hold_check_threshold=self.cem_hold_check_threshold)

    def bounds(self) -> ActionBounds:
        return ActionBounds(max_translation=self.max_translation, max_rotation=self.max_rotation)

    def core_config(self) -> CoreConfig:
        return CoreConfig(
            max_steps=self.max_steps, max_input_age=self.max_input_age, tray_bottom_z=self.tray_bottom_z,
            lift_height=self.lift_height, lift_step=self.lift_step, settle_tolerance=self.settle_tolerance,
            settle_timeout=self.settle_timeout, still_time=self.still_time, still_tolerance=self.still_tolerance,
            gripper_timeout=self.gripper_timeout, autostart=self.autostart, bounds=self.bounds())


# Parameters the running node re-reads (act_on_new_pair, on every completed pair); a change is
# validated like a start-up value.  The rest (model, CEM, episode logic, topics, QoS, rates) are
# used at start-up: read-only.
RUNTIME_PARAMETERS = ("act_on_new_pair",)
