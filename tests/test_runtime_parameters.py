"""Issue 12.4: SetParameters on running nodes.

Every node declares its parameters through rcan_common.ros_params.declare_config: a parameter
the node only uses at start-up is read-only, one it re-reads at runtime is validated exactly like
a start-up value.  The hostile requests of the issue (driver max_step_m = NaN, sim image_size = -1,
perception model_path = /etc/passwd) must be refused with a reason and leave the old value.

The nodes run in this process in their own rclpy context on the test's ROS_DOMAIN_ID (loopback
only); the requests go through the nodes' real ~/set_parameters services from a second node.
One test does the same against the driver's console-script process.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
from node_harness import call_idempotent

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


class ParamRig:
    """A node under test plus a client node in one context, spun by one executor."""

    def __init__(self, context, node):
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node

        self.node = node
        self.client_node = Node("param_test_client", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(node)
        self.executor.add_node(self.client_node)

    def set(self, **values) -> list:
        """One SetParameters request (each value on its own, as `ros2 param set`); the results."""
        return call_set_parameters(self.client_node, self.executor, f"/{self.node.get_name()}", values)

    def set_atomically(self, **values) -> list:
        """One SetParametersAtomically request: all values or none; [the result]."""
        return call_set_parameters(self.client_node, self.executor, f"/{self.node.get_name()}", values,
                                   atomic=True)

    def value(self, name: str):
        return self.node.get_parameter(name).value

    def close(self) -> None:
        self.executor.shutdown()
        self.client_node.destroy_node()
        close = getattr(self.node, "close", None)
        if close:
            close()
        self.node.destroy_node()


def call_set_parameters(client_node, executor, node_fqn: str, values: dict, timeout: float = 20.0,
                        atomic: bool = False) -> list:
    from rcl_interfaces.srv import SetParameters, SetParametersAtomically
    from rclpy.parameter import Parameter

    srv, name = (SetParametersAtomically, "set_parameters_atomically") if atomic else (SetParameters, "set_parameters")
    client = client_node.create_client(srv, f"{node_fqn}/{name}")
    try:
        ready = client.wait_for_service(timeout_sec=timeout)
        assert ready, f"{node_fqn}/{name} not available"
        request = srv.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        response = call_idempotent(client, executor, request, timeout)
        assert response is not None, f"no answer from {node_fqn}/{name}"
        return [response.result] if atomic else list(response.results)
    finally:
        client_node.destroy_client(client)


def assert_rejected(results, *words: str) -> str:
    (result,) = results
    assert not result.successful, "the change was accepted"
    assert result.reason, "rejected without a reason"
    for word in words:
        assert word in result.reason, result.reason
    return result.reason


def assert_accepted(results) -> None:
    assert [r.successful for r in results] == [True] * len(results), [r.reason for r in results]


@pytest.fixture
def context(ros_env):
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
    yield ctx
    ctx.try_shutdown()


def _overrides(values: dict) -> list:
    from rclpy.parameter import Parameter

    return [Parameter(k, value=v) for k, v in values.items()]


@pytest.fixture
def rig_factory(context):
    rigs = []

    def make(node_cls, values: dict | None = None, **kwargs):
        node = node_cls(context=context, parameter_overrides=_overrides(values or {}), **kwargs)
        rig = ParamRig(context, node)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()


# -- the three requests of the issue, and a valid runtime change on each node ----------------------

def test_driver_refuses_nan_max_step_and_validates_ik_tolerances(rig_factory):
    from kuka_iiwa_driver.driver_node import IiwaDriverNode

    rig = rig_factory(IiwaDriverNode)
    node = rig.node
    assert_rejected(rig.set(max_step_m=NAN), "read-only", "max_step_m")
    assert rig.value("max_step_m") == 0.05
    assert_rejected(rig.set(max_step_m=0.2), "read-only")  # a valid value too: limits change on restart only
    assert rig.value("max_step_m") == 0.05 and node.core.safety.max_step == 0.05

    # A runtime parameter goes through DriverConfig's validation (plus finiteness).
    assert_rejected(rig.set(ik_orientation_tolerance_deg=NAN), "ik_orientation_tolerance_deg", "finite")
    assert_rejected(rig.set(ik_orientation_tolerance_deg=10.0), "ik_orientation_tolerance_deg", "(0, 5]")
    assert_rejected(rig.set(ik_orientation_tolerance_deg="1.0"), "ik_orientation_tolerance_deg", "number")
    assert_rejected(rig.set(ik_max_iterations=0), "ik_max_iterations", ">= 1")
    assert rig.value("ik_orientation_tolerance_deg") == 0.5 and node.core.cfg.ik_orientation_tolerance_deg == 0.5
    assert rig.value("ik_max_iterations") == 200

    assert_accepted(rig.set(ik_orientation_tolerance_deg=1.0, ik_max_iterations=50))
    assert rig.value("ik_orientation_tolerance_deg") == 1.0 and rig.value("ik_max_iterations") == 50
    assert node.core.cfg.ik_orientation_tolerance_deg == 1.0 and node.core.cfg.ik_max_iterations == 50
    assert node.cfg is node.core.cfg and node.cfg.max_step_m == 0.05

    # One bad value in an atomic request rejects the whole request.
    assert_rejected(rig.set_atomically(ik_max_iterations=80, ik_position_tolerance_m=NAN), "ik_position_tolerance_m")
    assert node.core.cfg.ik_max_iterations == 50 and rig.value("ik_max_iterations") == 50


def test_sim_refuses_negative_image_size_and_validates_runtime_parameters(rig_factory):
    from rcan_sim.sim_node import SimNode

    rig = rig_factory(SimNode, {"image_size": 64})
    node = rig.node
    assert_rejected(rig.set(image_size=-1), "read-only", "image_size")
    assert rig.value("image_size") == 64 and node.params.image_size == 64
    assert_rejected(rig.set(seed=3), "read-only")

    assert_rejected(rig.set(domain="nowhere"), "domain")
    assert_rejected(rig.set(real_time_factor=NAN), "real_time_factor", "finite")
    assert_rejected(rig.set(real_time_factor=-2.0), "real_time_factor", "> 0")
    assert_rejected(rig.set(max_render_share=1.5), "max_render_share")
    assert node.params.domain == "canonical" and node.params.real_time_factor == 1.0

    assert_accepted(rig.set(real_time_factor=2.0, domain="randomized"))
    assert node.params.real_time_factor == 2.0 and node.params.domain == "randomized"
    assert rig.value("real_time_factor") == 2.0 and node.params.image_size == 64
    assert_accepted(rig.set(real_time_factor=3))  # an integer for a double, as YAML would write it
    assert node.params.real_time_factor == 3.0


def test_perception_refuses_a_model_path_change_and_validates_output_size(rig_factory, tmp_path):
    from rcan_perception.perception_node import PerceptionNode
    from tiny_models import export_tiny_generator

    model = str(export_tiny_generator(tmp_path / "g.onnx"))
    rig = rig_factory(PerceptionNode, {"model_path": model, "warmup_runs": 0})
    node = rig.node
    assert_rejected(rig.set(model_path="/etc/passwd"), "read-only", "model_path")
    assert rig.value("model_path") == model
    assert_rejected(rig.set(max_input_pixels=2**40), "read-only")

    assert_rejected(rig.set(output_size=-1), "output_size")
    assert_rejected(rig.set(output_size=10**6), "output_size")
    assert node.output_size is None and rig.value("output_size") == 0

    assert_accepted(rig.set(output_size=32))
    assert node.output_size == (32, 32) and rig.value("output_size") == 32


def test_camera_and_policy_refuse_start_up_parameters_and_accept_their_runtime_ones(rig_factory, tmp_path):
    import cv2
    import numpy as np

    from rcan_grasp_policy.policy_node import PolicyNode
    from rcan_perception.camera_node import CameraNode
    from tiny_models import export_tiny_qnet

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    camera = rig_factory(CameraNode, {"source": str(tmp_path), "image_size": 32})
    assert_rejected(camera.set(image_size=-1), "read-only", "image_size")
    assert_rejected(camera.set(frame_id=""), "frame_id", "empty")
    assert camera.value("image_size") == 32 and camera.node.frame_id == "camera_color_optical_frame"
    assert_accepted(camera.set(frame_id="cam2_optical_frame"))
    assert camera.node.frame_id == "cam2_optical_frame"

    model = str(export_tiny_qnet(tmp_path / "q.onnx"))
    policy = rig_factory(PolicyNode, {"model_path": model, "warmup_runs": 0})
    assert_rejected(policy.set(model_path="/etc/passwd"), "read-only", "model_path")
    assert_rejected(policy.set(max_input_age=NAN), "read-only")
    assert_rejected(policy.set(act_on_new_pair="yes"))  # wrong type: refused by rclpy's typed parameter
    assert policy.value("model_path") == model and policy.node.params.act_on_new_pair is True
    assert_accepted(policy.set(act_on_new_pair=False))
    assert policy.node.params.act_on_new_pair is False and policy.value("act_on_new_pair") is False


# -- start-up uses the same validation -------------------------------------------------------------

def test_a_value_refused_at_runtime_also_stops_the_node_at_start(context):
    from rcan_common.ros_node import StartupError
    from rcan_sim.sim_node import SimNode

    with pytest.raises(StartupError, match="real_time_factor.*finite"):
        SimNode(context=context, parameter_overrides=_overrides({"image_size": 64, "real_time_factor": NAN}))


# -- the real console script, as in the issue ------------------------------------------------------

def test_driver_process_refuses_nan_max_step_over_dds(tmp_path, ros_env, harness):
    from node_harness import NodeProcess
    from rcl_interfaces.srv import GetParameters

    proc = NodeProcess("iiwa_driver_node", ROOT / "config" / "iiwa_driver.yaml", ros_env)
    try:
        results = call_set_parameters(harness.node, harness.executor, "/iiwa_driver_node", {"max_step_m": NAN})
        assert_rejected(results, "read-only", "max_step_m")
        results = call_set_parameters(harness.node, harness.executor, "/iiwa_driver_node",
                                      {"ik_position_tolerance_m": math.inf})
        assert_rejected(results, "ik_position_tolerance_m", "finite")
        client = harness.node.create_client(GetParameters, "/iiwa_driver_node/get_parameters")
        # a request sent before the client has discovered the service can be lost
        assert client.wait_for_service(timeout_sec=20.0), proc.output
        response = call_idempotent(client, harness.executor,
                                   GetParameters.Request(names=["max_step_m", "ik_position_tolerance_m"]))
        assert response is not None, proc.output
        assert [v.double_value for v in response.values] == [0.05, 0.0005]
        assert proc.alive(), proc.output
    finally:
        assert proc.stop() == 0, proc.output


# -- the README says which parameters are validated at runtime ---------------------------------------

def _readme_runtime_table() -> dict[str, set[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Runtime parameters"):]
    table: dict[str, set[str]] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[2] == "validated":
            table.setdefault(cells[0].strip("`"), set()).update(re.findall(r"`([a-z_0-9]+)`", cells[1]))
    return table


def test_readme_names_exactly_the_runtime_validated_parameters():
    from kuka_iiwa_driver import driver_node
    from rcan_grasp_policy import policy_node
    from rcan_perception import camera_node, perception_node
    from rcan_sim import sim_node

    expected = {
        "iiwa_driver_node": {"ik_max_iterations", "ik_position_tolerance_m", "ik_orientation_tolerance_deg"},
        "sim_node": {"domain", "success_height", "max_render_share", "real_time_factor", "camera_frame"},
        "perception_node": {"output_size"},
        "camera_node": {"frame_id"},
        "policy_node": {"act_on_new_pair"},
    }
    declared = {"iiwa_driver_node": driver_node.RUNTIME_PARAMETERS, "sim_node": sim_node.RUNTIME_PARAMETERS,
                "perception_node": perception_node.RUNTIME_PARAMETERS,
                "camera_node": camera_node.RUNTIME_PARAMETERS, "policy_node": policy_node.RUNTIME_PARAMETERS}
    assert {k: set(v) for k, v in declared.items()} == expected
    assert _readme_runtime_table() == expected


# -- build_config: the one validation behind start-up and runtime --------------------------------------

@pytest.mark.parametrize("values,words", [
    ({"tool_offset": [0.0, NAN, 0.2]}, ("tool_offset", "finite")),
    ({"workspace_max": [0.8, math.inf, 0.35]}, ("workspace_max", "finite")),
    ({"max_step_m": True}, ("max_step_m", "number")),
    ({"joint_names": ["a"] * 7}, ("joint_names", "distinct")),
    ({"ik_max_iterations": 1.5}, ("ik_max_iterations", "integer")),
])
def test_build_config_refuses_what_start_up_would(values, words):
    from kuka_iiwa_driver.config import DriverConfig
    from rcan_common.config import ConfigError, to_dict
    from rcan_common.ros_params import build_config

    with pytest.raises(ConfigError) as err:
        build_config(DriverConfig, {**to_dict(DriverConfig()), **values})
    for word in words:
        assert word in str(err.value)
    assert build_config(DriverConfig, {**to_dict(DriverConfig()), "max_step_m": 1}).max_step_m == 1.0


# -- QoS: rclpy's QoSOverridingOptions, the one way to change a topic's QoS --------------------------

def test_qos_is_set_through_rclpy_qos_overrides_and_is_read_only(rig_factory):
    from rclpy.qos import ReliabilityPolicy

    from kuka_iiwa_driver.driver_node import IiwaDriverNode

    key = "qos_overrides./rcan/target_pose.subscription"
    rig = rig_factory(IiwaDriverNode, {f"{key}.reliability": "best_effort", f"{key}.depth": 3})
    (sub,) = [s for s in rig.node.subscriptions if s.topic_name == "/rcan/target_pose"]
    assert sub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT and sub.qos_profile.depth == 3
    (ee,) = [p for p in rig.node.publishers if p.topic_name == "/rcan/ee_pose"]
    assert ee.qos_profile.reliability == ReliabilityPolicy.RELIABLE and ee.qos_profile.depth == 10  # defaults
    assert rig.value(f"{key}.depth") == 3
    assert_rejected(rig.set(**{f"{key}.depth": 7}), "read-only")


def test_no_node_has_qos_parameters_of_its_own():
    import dataclasses

    from kuka_iiwa_driver.config import DriverConfig
    from rcan_grasp_policy.policy_params import PolicyNodeParams
    from rcan_perception.camera_node import CameraNodeParams
    from rcan_perception.perception_params import PerceptionNodeParams
    from rcan_sim.sim_params import SimNodeParams

    for cls in (DriverConfig, PolicyNodeParams, CameraNodeParams, PerceptionNodeParams, SimNodeParams):
        assert not [f.name for f in dataclasses.fields(cls) if "qos" in f.name], cls.__name__


def test_a_namespace_moves_every_topic_of_a_node(rig_factory):
    from kuka_iiwa_driver.driver_node import IiwaDriverNode

    node = rig_factory(IiwaDriverNode, namespace="robot1").node
    topics = {e.topic_name for e in (*node.publishers, *node.subscriptions)} - {"/rosout", "/parameter_events"}
    assert topics and all(t.startswith("/robot1/") for t in topics), topics
    assert {"/robot1/rcan/gripper_state", "/robot1/gripper/command", "/robot1/rcan/target_gripper",
            "/robot1/lbr/joint_trajectory_controller/joint_trajectory"} <= topics
