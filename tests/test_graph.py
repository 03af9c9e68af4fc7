"""The node graph description and the launcher's command lines (no processes started)."""
from __future__ import annotations

import signal
import sys
import time

import pytest
import yaml

from rcan_bringup.graph import (DEFAULT_CONTROLLER_TOPIC, LaunchArgs, build_graph, enabled_nodes, resolve,
                                share_dir)
from rcan_bringup.launcher import GraphProcesses, LaunchError, group_alive, node_command, param_text, runnable
from rcan_common.config import ConfigError


def names(args: LaunchArgs) -> list[str]:
    return [s.name for s in enabled_nodes(args)]


def test_conditions_select_robot_or_sim_and_rviz():
    assert names(LaunchArgs()) == ["camera_node", "perception_node", "policy_node", "iiwa_driver_node"]
    # In sim the supervisor runs the episodes (sim reset, policy start, grasp check); the robot has none.
    assert names(LaunchArgs(use_sim=True)) == ["sim_node", "perception_node", "policy_node", "iiwa_driver_node",
                                               "supervisor_node"]
    assert names(LaunchArgs(use_sim=True, rviz=True))[-1] == "rviz2"
    # build_graph lists every node whatever the arguments; conditions decide what runs.
    assert {s.name for s in build_graph(LaunchArgs())} == {
        "sim_node", "camera_node", "perception_node", "policy_node", "iiwa_driver_node", "supervisor_node", "rviz2"}


def test_arguments_reach_the_nodes():
    args = LaunchArgs(use_sim=True, namespace="robot1", controller_topic="/ctrl/jt", joint_prefix="iiwa_",
                      camera_source="/cam/color/image_raw", domain="randomized", image_size=64,
                      generator_model="/abs/g.onnx", policy_model="models/p.onnx")
    specs = {s.name: s for s in enabled_nodes(args)}
    assert all(s.namespace == "robot1" for s in specs.values())
    # One argument moves both ends of each connection.
    assert (DEFAULT_CONTROLLER_TOPIC, "/ctrl/jt") in specs["sim_node"].remappings
    assert (DEFAULT_CONTROLLER_TOPIC, "/ctrl/jt") in specs["iiwa_driver_node"].remappings
    for name in ("sim_node", "perception_node", "policy_node"):
        assert ("camera/image_raw", "/cam/color/image_raw") in specs[name].remappings
        assert ("camera/camera_info", "/cam/color/camera_info") in specs[name].remappings
    assert specs["sim_node"].parameters["joint_prefix"] == "iiwa_"
    assert specs["iiwa_driver_node"].parameters["joint_prefix"] == "iiwa_"
    assert specs["sim_node"].parameters["domain"] == "randomized"
    assert specs["policy_node"].parameters["autostart"] is False  # the supervisor starts each episode
    # Every node's names are relative: the namespace moves them all, no private name needs patching.
    assert specs["policy_node"].remappings == (("camera/image_raw", "/cam/color/image_raw"),
                                               ("camera/camera_info", "/cam/color/camera_info"))
    assert specs["perception_node"].parameters["model_path"] == "/abs/g.onnx"
    assert specs["policy_node"].parameters["model_path"] == str(share_dir() / "models/p.onnx")
    assert next(s for s in enabled_nodes(LaunchArgs()) if s.name == "policy_node").parameters["autostart"] is True
    # Defaults add no remappings at all.
    assert all(not s.remappings for s in enabled_nodes(LaunchArgs(use_sim=True)))


@pytest.mark.parametrize("bad", [dict(domain="nowhere"), dict(controller_topic="bad topic!"),
                                 dict(camera_source="/trailing/"),
                                 dict(image_size=8), dict(namespace="bad ns!")])
def test_invalid_arguments_name_the_field(bad):
    field = next(iter(bad))
    with pytest.raises(ConfigError, match=field):
        LaunchArgs(**bad)


def test_an_rcan_policy_runs_only_with_the_generator_it_was_trained_on(tmp_path):
    import json
    import shutil

    from rcan_grasp_policy.backends import generator_mismatch
    from rcan_common.provenance import file_sha256

    own, other = tmp_path / "g_own.onnx", tmp_path / "g_other.onnx"
    own.write_bytes(b"weights of the generator the policy was trained on")
    other.write_bytes(b"weights of another generator")
    policy = tmp_path / "policy.onnx"
    policy.write_bytes(b"onnx")

    def sidecar(**meta):
        policy.with_suffix(".json").write_text(json.dumps({"variant": "rcan", "qnet": {}, **meta}))

    sidecar(generator="elsewhere/g.onnx", generator_sha256=file_sha256(own))  # named by digest: the path may differ
    assert generator_mismatch(policy, own) is None
    copy = shutil.copy(own, tmp_path / "renamed.onnx")
    assert generator_mismatch(policy, copy) is None
    assert "not the generator policy.onnx was trained on" in generator_mismatch(policy, other)
    with pytest.raises(ConfigError, match="generator_model.*allow_generator_mismatch"):
        LaunchArgs(policy_model=str(policy), generator_model=str(other))
    assert LaunchArgs(policy_model=str(policy), generator_model=str(other), allow_generator_mismatch=True)
    sidecar(generator=str(own))  # exported before the digest was recorded: the file at the named path decides
    assert generator_mismatch(policy, own) is None and generator_mismatch(policy, other)
    sidecar(generator=str(tmp_path / "gone.onnx"))  # nothing to compare with
    assert generator_mismatch(policy, other) is None
    sidecar(generator=None, variant="canonical")  # reads no G
    assert generator_mismatch(policy, other) is None
    # The shipped pairs: the demo's policy with the shipped G (found under the share dir) passes.
    shipped = LaunchArgs()
    assert generator_mismatch(resolve(shipped.policy_model), resolve(shipped.generator_model), resolve) is None


def test_launch_strings_round_trip():
    args = LaunchArgs(use_sim=True, rviz=False, image_size=64, seed=7, domain="held-out")
    assert LaunchArgs.from_strings(args.as_strings()) == args
    assert LaunchArgs.from_strings({"use_sim": "True"}).use_sim is True
    with pytest.raises(ValueError, match="use_sim"):
        LaunchArgs.from_strings({"use_sim": "yes please"})
    with pytest.raises(ValueError, match="unknown launch argument"):
        LaunchArgs.from_strings({"sim": "true"})


def test_param_text_keeps_types():
    assert param_text(True) == "true"
    assert param_text(64) == "64"
    assert param_text(0.5) == "0.5"
    assert param_text("canonical") == "canonical"
    # Strings YAML would read as another type are quoted so they stay strings.
    for text in ("123", "true", "", "1.5"):
        assert yaml.safe_load(param_text(text)) == text
    assert param_text([1.0, 2.0]) == "[1.0, 2.0]"


def test_every_parameter_file_exists_and_addresses_its_node():
    root = share_dir()
    for spec in build_graph(LaunchArgs()):
        for rel in spec.parameter_files:
            path = resolve(rel, root)
            assert path.is_file(), f"{spec.name}: missing {rel}"
            data = yaml.safe_load(path.read_text())
            keys = set(data)
            assert keys & {spec.name, "/**", f"/{spec.name}"}, f"{rel} has no section for {spec.name}: {keys}"
            section = data.get(spec.name) or data.get("/**") or data.get(f"/{spec.name}")
            assert "ros__parameters" in section


def test_node_command_matches_launch_ros_conventions(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "sim.yaml").write_text("sim_node:\n  ros__parameters: {}\n")
    spec = next(s for s in build_graph(LaunchArgs(use_sim=True, namespace="r1", controller_topic="/x/jt",
                                                  image_size=64)) if s.name == "sim_node")
    argv = node_command(spec, tmp_path, executable="/bin/sim_node")
    assert argv[:5] == ["/bin/sim_node", "--ros-args", "-r", "__node:=sim_node", "-r"]
    assert argv[5] == "__ns:=/r1"
    assert argv[argv.index("--params-file") + 1] == str(tmp_path / "config" / "sim.yaml")
    assert "image_size:=64" in argv and "domain:=canonical" in argv
    assert f"{DEFAULT_CONTROLLER_TOPIC}:=/x/jt" in argv
    (tmp_path / "config" / "sim.yaml").unlink()
    with pytest.raises(LaunchError, match="parameter file"):
        node_command(spec, tmp_path, executable="/bin/sim_node")


def test_missing_rviz_is_skipped_with_a_warning(monkeypatch):
    monkeypatch.setattr("rcan_bringup.launcher.find_executable", lambda spec: None)
    specs, warnings = runnable(enabled_nodes(LaunchArgs(use_sim=True, rviz=True)))
    assert "rviz2" not in [s.name for s in specs] and len(specs) == 5
    assert warnings and "rviz2" in warnings[0]


def test_dry_run_prints_one_command_per_node(capsys):
    from rcan_bringup.launcher import main

    assert main(["--use-sim", "--image-size", "64", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0].rsplit("/", 1)[-1] for line in lines] == [
        "sim_node", "perception_node", "policy_node", "iiwa_driver_node", "supervisor_node"]


def test_graph_processes_stop_whole_groups(tmp_path, monkeypatch):
    """Children that ignore SIGINT and spawn grandchildren are still gone after shutdown."""
    from rcan_bringup.graph import NodeSpec

    script = tmp_path / "stubborn"
    script.write_text(
        f"#!{sys.executable}\nimport signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "subprocess.Popen(['sleep', '60'])\n"
        "print('ready', flush=True)\ntime.sleep(60)\n")
    script.chmod(0o755)
    monkeypatch.setattr("rcan_bringup.launcher.node_command", lambda spec, root=None, executable=None: [str(script)])
    with GraphProcesses(env={"PATH": "/usr/bin:/bin"}, log_dir=tmp_path / "logs", root=tmp_path) as graph:
        graph.start(NodeSpec(name="stubborn", executable="stubborn"))
        deadline = time.monotonic() + 10
        while "ready" not in graph.log_tail("stubborn") and time.monotonic() < deadline:
            time.sleep(0.05)
        pgid = graph.pid("stubborn")
        assert group_alive(pgid)
        t0 = time.monotonic()
        codes = graph.shutdown(sigint_timeout=0.5, sigterm_timeout=0.5)
        assert time.monotonic() - t0 < 5
        assert codes["stubborn"] == -signal.SIGTERM
        # SIGKILL is delivered asynchronously: on a loaded machine the grandchild may run a moment longer.
        deadline = time.monotonic() + 10
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not group_alive(pgid), "a grandchild survived the shutdown"
        assert graph.poll_deaths() == [("stubborn", -signal.SIGTERM)]
        assert graph.poll_deaths() == []


def test_every_launch_parameter_is_one_the_node_declares():
    """rclpy ignores `-p` values for undeclared names, so a typo here would pass silently:
    each parameter the graph sets must appear in that node's parameter file."""
    args = LaunchArgs(use_sim=True)
    specs = build_graph(args) + [s for s in build_graph(LaunchArgs()) if s.name == "camera_node"]
    for spec in specs:
        for rel in spec.parameter_files:
            declared = next(iter(yaml.safe_load(resolve(rel).read_text()).values()))["ros__parameters"]
            unknown = set(spec.parameters) - set(declared)
            assert not unknown, f"{spec.name}: {sorted(unknown)} are not in {rel}"


def test_every_default_name_is_relative_so_a_namespace_moves_the_whole_robot():
    import dataclasses

    from kuka_iiwa_driver.config import DriverConfig
    from rcan_grasp_policy.policy_params import PolicyNodeParams
    from rcan_perception.camera_node import CameraNodeParams
    from rcan_perception.perception_params import PerceptionNodeParams
    from rcan_sim import sim_node
    from rcan_sim.supervisor import SupervisorParams

    names = {f"{cls.__name__}.{f.name}": f.default for cls in (DriverConfig, PolicyNodeParams, CameraNodeParams,
                                                                PerceptionNodeParams, SupervisorParams)
             for f in dataclasses.fields(cls) if f.name.endswith(("_topic", "_service", "_prefix"))}
    names.update(sim_node=sim_node.TRAJECTORY_TOPIC, sim_gripper=sim_node.GRIPPER_COMMAND_TOPIC,
                 controller=DEFAULT_CONTROLLER_TOPIC)
    assert len(names) > 20
    assert not {k: v for k, v in names.items() if v.startswith("/")}, "absolute default names"
    # Only a node's own names start with ~.  The supervisor alone calls other nodes' services
    # (sim_node/reset, policy_node/start_episode, ...): relative, so in the same namespace.
    assert {k for k, v in names.items() if v.startswith("~")} == {"DriverConfig.status_topic",
                                                                  "SupervisorParams.result_topic"}
    others = {k: v for k, v in names.items() if v.split("/")[0].endswith("_node")}
    assert set(others) == {"SupervisorParams.reset_service", "SupervisorParams.start_episode_service",
                           "SupervisorParams.grasp_success_service"}, others
    assert PolicyNodeParams().episode_done_topic == SupervisorParams().episode_done_topic
    # The policy and the driver meet on public names.
    policy, driver = PolicyNodeParams(), DriverConfig()
    assert policy.gripper_state_topic == driver.gripper_state_topic == "rcan/gripper_state"
    assert policy.gripper_command_topic == driver.gripper_command_topic == "rcan/target_gripper"
    assert driver.gripper_output_topic == sim_node.GRIPPER_COMMAND_TOPIC == "gripper/command"
