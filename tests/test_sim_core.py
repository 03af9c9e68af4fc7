"""sim_node's plain core: trajectory following like the JTC, and the world clock."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rcan_sim.sim_core import SimCore, TrajectoryError, TrajectoryFollower, arm_joint_names

NAMES = arm_joint_names("lbr_")
ZERO = np.zeros(7)


def q(v: float, joint: int = 0) -> list[float]:
    out = [0.0] * 7
    out[joint] = v
    return out


def test_follower_interpolates_from_current_position_and_holds_the_end():
    f = TrajectoryFollower(NAMES, ZERO)
    f.set_trajectory(10.0, NAMES, [(1.0, q(1.0)), (3.0, q(-1.0))])
    assert f.setpoint(10.0)[0] == pytest.approx(0.0)
    assert f.setpoint(10.5)[0] == pytest.approx(0.5)
    assert f.setpoint(11.0)[0] == pytest.approx(1.0)
    assert f.setpoint(12.0)[0] == pytest.approx(0.0)
    assert f.setpoint(20.0)[0] == pytest.approx(-1.0)
    assert not f.active and f.setpoint(30.0)[0] == pytest.approx(-1.0)


def test_new_trajectory_replaces_the_old_one_without_a_jump():
    f = TrajectoryFollower(NAMES, ZERO)
    f.set_trajectory(0.0, NAMES, [(2.0, q(2.0))])
    assert f.setpoint(1.0)[0] == pytest.approx(1.0)
    f.set_trajectory(1.0, NAMES, [(1.0, q(0.0))])  # go back instead, from where we are
    assert f.setpoint(1.0)[0] == pytest.approx(1.0)
    assert f.setpoint(1.5)[0] == pytest.approx(0.5)
    assert f.setpoint(5.0)[0] == pytest.approx(0.0)


def test_joint_order_follows_names_not_message_order():
    f = TrajectoryFollower(NAMES, ZERO)
    shuffled = list(reversed(NAMES))
    f.set_trajectory(0.0, shuffled, [(0.0, [7.0 - i - 1.0 for i in range(7)])])  # A7=6 ... A1=0
    assert f.setpoint(0.1).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


@pytest.mark.parametrize("names,points,reason", [
    (NAMES[:6], [(1.0, [0.0] * 6)], "joint_names"),
    (("A1",) + NAMES[1:], [(1.0, q(0))], "joint_names"),
    (NAMES[:6] + (NAMES[0],), [(1.0, q(0))], "duplicate_joints"),
    (NAMES, [], "empty"),
    (NAMES, [(1.0, [0.0] * 6)], "point_size"),
    (NAMES, [(1.0, q(math.nan))], "non_finite"),
    (NAMES, [(math.inf, q(0))], "non_finite"),
    (NAMES, [(1.0, q(100.0))], "out_of_range"),
    (NAMES, [(1.0, q(0)), (1.0, q(1))], "time_order"),
    (NAMES, [(-1.0, q(0))], "time_order"),
])
def test_malformed_trajectories_are_rejected_with_a_reason(names, points, reason):
    f = TrajectoryFollower(NAMES, ZERO)
    f.set_trajectory(0.0, NAMES, [(1.0, q(0.5))])
    with pytest.raises(TrajectoryError) as err:
        f.set_trajectory(0.5, names, points)
    assert err.value.reason == reason
    # The previous trajectory keeps running.
    assert f.setpoint(1.0)[0] == pytest.approx(0.5)


class FakeWorld:
    def __init__(self):
        self.q = np.zeros(7)
        self.targets: list[np.ndarray] = []
        self.steps = 0
        self.object_ids = [1, 2]
        self.open = True

    def joint_positions(self):
        return self.q.copy()

    def joint_velocities(self):
        return np.zeros(7)

    def set_arm_joint_targets(self, q7):
        self.targets.append(np.array(q7))

    def step_physics(self, n):
        self.steps += n
        self.q = self.targets[-1].copy()  # an ideal position controller

    def reset(self, seed):
        self.seed = seed
        self.q = np.full(7, 0.1)

    def set_gripper(self, open_):
        self.open = open_

    def gripper_is_open(self):
        return self.open

    def held_objects(self):
        return [1]

    def object_heights(self):
        return np.array([0.01, 0.12])


def test_core_clock_is_exact_over_many_small_advances():
    world = FakeWorld()
    core = SimCore(world, NAMES, physics_hz=120.0, seed=5)
    for _ in range(1000):
        core.advance(0.001)  # much smaller than one physics step
    assert world.steps == 120
    assert core.time == pytest.approx(1.0)


def test_core_reset_seeds_episodes_and_holds_position():
    world = FakeWorld()
    core = SimCore(world, NAMES, physics_hz=100.0, seed=5)
    assert core.reset()["seed"] == 5
    info = core.reset()
    assert info == {"episode": 1, "seed": 6, "object_ids": [1, 2]}
    core.on_trajectory(NAMES, [(1.0, q(1.0))])
    core.advance(0.5)
    assert world.q[0] == pytest.approx(0.1 + 0.45, abs=0.02)
    core.reset(seed=42)
    core.advance(0.2)
    assert world.seed == 42 and world.q[0] == pytest.approx(0.1)  # the trajectory was dropped


def test_core_grasp_success_uses_held_objects_above_threshold():
    core = SimCore(FakeWorld(), NAMES, physics_hz=100.0)
    ok, detail = core.grasp_success(0.08)
    assert ok and detail["held"] == [1]
    ok, _ = core.grasp_success(0.2)
    assert not ok


def test_core_on_real_world_moves_the_arm():
    from rcan_sim.world import GraspWorld, WorldConfig

    world = GraspWorld(WorldConfig(image_size=32, split="test"))
    try:
        core = SimCore(world, NAMES, physics_hz=1.0 / world.cfg.time_step, seed=3)
        core.reset()
        start = core.arm_positions()
        goal = start.copy()
        goal[0] += 0.3
        core.on_trajectory(NAMES, [(0.5, goal)])
        core.advance(1.0)
        assert np.allclose(core.arm_positions(), goal, atol=0.01)
        assert core.grasp_success(0.08)[0] is False
    finally:
        world.close()
