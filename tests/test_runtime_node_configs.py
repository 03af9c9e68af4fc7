"""config/{camera,perception,policy,supervisor}.yaml name exactly the parameters the nodes declare.

rclpy silently ignores unknown keys in a params file, so a typo there would never be noticed.
The nodes are built in-process (no DDS traffic beyond loopback, own domain) with the YAML values.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _yaml(name: str) -> tuple[str, dict]:
    data = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
    (node_name, body), = data.items()
    return node_name, body["ros__parameters"]


@pytest.fixture
def context(ros_env):
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
    yield ctx
    ctx.try_shutdown()


def _check(node_cls, name: str, context, overrides: dict) -> None:
    from rclpy.parameter import Parameter

    node_name, params = _yaml(name)
    params.update(overrides)
    node = node_cls(context=context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    try:
        assert node.get_name() == node_name
        # rclpy's own: built-ins and the QoS override parameters of every publisher / subscription.
        declared = {p for p in node._parameters if not p.startswith("qos_overrides.")} - {
            "use_sim_time", "start_type_description_service"}
        assert declared == set(params), f"config/{name}.yaml differs: extra {set(params) - declared}, " \
                                        f"missing {declared - set(params)}"
        for key, value in params.items():
            assert node.get_parameter(key).value == value, key
    finally:
        close = getattr(node, "close", None)
        if close:
            close()
        node.destroy_node()


def test_camera_yaml(context, tmp_path):
    import cv2
    import numpy as np

    from rcan_perception.camera_node import CameraNode

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    _check(CameraNode, "camera", context, {"source": str(tmp_path)})


def test_perception_yaml(context, tmp_path):
    from rcan_perception.perception_node import PerceptionNode
    from tiny_models import export_tiny_generator

    model = export_tiny_generator(tmp_path / "g.onnx")
    _check(PerceptionNode, "perception", context, {"model_path": str(model), "warmup_runs": 0})


def test_policy_yaml(context, tmp_path):
    from rcan_grasp_policy.policy_node import PolicyNode
    from tiny_models import export_tiny_qnet

    model = export_tiny_qnet(tmp_path / "q.onnx")
    _check(PolicyNode, "policy", context, {"model_path": str(model), "warmup_runs": 0})


def test_supervisor_yaml(context):
    from rcan_sim.supervisor_node import SupervisorNode

    _check(SupervisorNode, "supervisor", context, {})
