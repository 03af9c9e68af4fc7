"""`rcan demo` end to end as a user runs it (subprocess, Ctrl-C), with untrained models."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NODES = ("sim_node", "perception_node", "policy_node", "iiwa_driver_node", "supervisor_node")


def node_processes(domain_id: str) -> list[int]:
    """Node processes (any owner) running on ROS_DOMAIN_ID `domain_id`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(n in cmdline for n in NODES) and f"ROS_DOMAIN_ID={domain_id}".encode() in environ:
            found.append(int(entry))
    return found


def test_demo_runs_attempts_writes_outputs_and_stops_cleanly_on_ctrl_c(ros_env, tmp_path, tmp_path_factory):
    import cv2
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    from rcan_bringup.untrained import ensure_untrained_models

    generator, policy = ensure_untrained_models(tmp_path_factory.getbasetemp() / "untrained_models", 64)
    out = tmp_path / "demo"
    domain = ros_env["ROS_DOMAIN_ID"]
    cmd = [str(Path(sys.executable).parent / "rcan"), "demo", "--attempts", "5", "--max-steps", "2",
           "--out-dir", str(out), "--domain-id", domain, "--generator-model", str(generator),
           "--policy-model", str(policy), "--no-allow-untrained"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ros_env)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("attempt 2/5"):
                break
        assert any(line.startswith("attempt 2/5") for line in lines), "".join(lines)
        assert node_processes(domain), "the demo's nodes are not visible"
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines) + rest
    assert proc.returncode == 0, text
    assert "stopping" in text and "success rate: " in text and "camera to trajectory" in text

    summary = json.loads((out / "demo.json").read_text())
    assert summary["interrupted"] and summary["attempts_finished"] >= 2 and not summary["node_deaths"]
    assert summary["untrained_models"] is False  # explicit model paths were given
    assert summary["latency"]["camera_to_canonical"]["count"] > 0

    strip = cv2.imread(str(out / "strip.png"))
    assert strip is not None and strip.shape[1] == 3 * 128 and strip.shape[0] >= 18 + 128

    with open(out / "demo.mcap", "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        topics = {channel.topic for _, channel, _, _ in reader.iter_decoded_messages()}
    for needed in ("/camera/image_raw", "/rcan/canonical/image", "/rcan/target_pose",
                   "/lbr/joint_trajectory_controller/joint_trajectory", "/joint_states"):
        assert needed in topics
    for node in NODES:
        assert (out / "logs" / f"{node}.log").is_file()

    # Nothing left running on the demo's domain.
    deadline = time.monotonic() + 5
    while node_processes(domain) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not node_processes(domain)


def test_demo_refuses_missing_models_when_untrained_is_not_allowed(tmp_path):
    from rcan_bringup.demo import DemoConfig, resolve_models

    cfg = DemoConfig(generator_model=str(tmp_path / "none.onnx"), allow_untrained=False, out_dir=tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="none.onnx"):
        resolve_models(cfg, log=lambda m: None)


def test_demo_camera_renders_at_the_policy_size_unless_told(tmp_path):
    from rcan_bringup.demo import DemoConfig, camera_size
    from rcan_bringup.untrained import make_untrained_policy
    from rcan_common.config import ConfigError

    policy = make_untrained_policy(tmp_path / "p96.onnx", image_size=96)
    assert camera_size(DemoConfig(), policy) == 96  # read from the policy's contract, as the policy node reads it
    assert camera_size(DemoConfig(image_size=64), policy) == 64
    with pytest.raises(ConfigError, match="image_size"):
        DemoConfig(image_size=16)
