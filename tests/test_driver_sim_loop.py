"""Closed loop: iiwa_driver_node -> JointTrajectory -> sim_node (pybullet) -> /joint_states -> driver.

Both nodes are started from the bring-up graph with their shipped parameter files, so this
checks that the driver's output is something the sim's controller follows, and that the
driver's kinematics put the simulated fingertips where the target asked.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from rcan_bringup.graph import LaunchArgs, build_graph
from rcan_bringup.launcher import GraphProcesses

pytestmark = pytest.mark.ros


def _spec(name: str, **params):
    spec = next(s for s in build_graph(LaunchArgs(use_sim=True, image_size=32)) if s.name == name)
    return dataclasses.replace(spec, parameters={**spec.parameters, **params})


def test_driver_moves_the_simulated_arm_to_the_target(ros_env, tmp_path):
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import Bool, String

    from rcan_bringup.probe import Probe

    with GraphProcesses(ros_env, log_dir=tmp_path) as graph, Probe("driver_loop_probe") as probe:
        graph.start(_spec("sim_node", camera_rate_hz=2.0))
        graph.start(_spec("iiwa_driver_node"))
        probe.listen("/rcan/ee_pose", PoseStamped)
        probe.listen("/iiwa_driver_node/status", String)
        probe.listen("/sim_node/gripper_open", Bool)
        assert probe.wait_count("/rcan/ee_pose", 3, timeout=40), \
            graph.log_tail("iiwa_driver_node") + graph.log_tail("sim_node")

        start = probe.last("/rcan/ee_pose").msg
        p0 = np.array([start.pose.position.x, start.pose.position.y, start.pose.position.z])
        goal = p0 + np.array([0.03, -0.04, -0.06])  # 7.8 cm: two step-clamped commands at least

        def ee() -> np.ndarray:
            m = probe.last("/rcan/ee_pose").msg
            return np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z])

        def send() -> None:
            msg = PoseStamped()
            msg.header.stamp = probe.now_msg()
            msg.header.frame_id = "lbr_link_0"
            msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in goal)
            msg.pose.orientation = start.pose.orientation  # keep the current top-down yaw
            probe.publish("/rcan/target_pose", msg)

        # Stream the target (as the watchdog expects while moving) until the tip is there.
        def reached() -> bool:
            send()
            return bool(np.linalg.norm(ee() - goal) < 0.005)

        assert probe.wait_for(reached, timeout=30, interval=0.2), (ee(), goal, graph.log_tail("iiwa_driver_node"))
        status = json.loads(probe.last("/iiwa_driver_node/status").msg.data)
        assert status["counters"]["clamped"] >= 1, status
        # On a loaded machine the sim may pause its joint_states; nothing else may be rejected.
        assert status["counters"]["rejected"] == 0 or "joint_states" in status["last_reject_reason"], status

        # The gripper command goes through the driver to the sim's gripper.
        probe.publish("/rcan/target_gripper", Bool(data=False))
        assert probe.wait_for(lambda: probe.last("/sim_node/gripper_open") is not None
                              and probe.last("/sim_node/gripper_open").msg.data is False, timeout=10)
        assert sorted(graph.running()) == ["iiwa_driver_node", "sim_node"]
