"""sim_node's parameters (config/sim.yaml) as one flat dataclass, and the world they configure.

Declared through rcan_common.ros_params.declare_config; QoS is not a field: every topic's
history, depth and reliability are rclpy QoS override parameters (``qos_overrides.<topic>...``).
"""
from __future__ import annotations

from dataclasses import dataclass

from rcan_common.config import require
from rcan_common.domains import DOMAINS


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

    def __post_init__(self) -> None:
        require(self.domain in DOMAINS, "domain", f"must be one of {DOMAINS}")
        require(self.object_split in ("train", "test"), "object_split", "must be 'train' or 'test'")
        require(self.image_size >= 16, "image_size", "must be >= 16")
        for name in ("camera_rate_hz", "joint_state_rate_hz", "control_rate_hz", "physics_hz", "real_time_factor",
                     "success_height"):
            require(getattr(self, name) > 0, name, "must be > 0")
        require(0 < self.max_render_share <= 1, "max_render_share", "must be in (0, 1]")


def make_world(params: SimNodeParams):
    """The pybullet world (DIRECT), configured for the node's camera size."""
    from rcan_sim.world import GraspWorld, WorldConfig

    return GraspWorld(WorldConfig(image_size=params.image_size, split=params.object_split,
                                  time_step=1.0 / params.physics_hz))


# Parameters the running node re-reads (from self.params, on every render, control step or
# grasp_success call); a change is validated like a start-up value.  The rest (image size, seed,
# split, rates, joint names) shape the world, timers and publishers at start-up: read-only.
RUNTIME_PARAMETERS = ("domain", "success_height", "max_render_share", "real_time_factor", "camera_frame")
