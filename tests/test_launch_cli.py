"""`rcan launch` as a user runs it: starts the graph, reports a death, stops everything on Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rcan_bringup.launcher import group_alive

pytestmark = [pytest.mark.ros, pytest.mark.slow]


def test_rcan_launch_reports_deaths_and_forwards_ctrl_c(ros_env, tmp_path, tmp_path_factory):
    from rcan_bringup.untrained import ensure_untrained_models

    generator, policy = ensure_untrained_models(tmp_path_factory.getbasetemp() / "untrained_models", 64)
    logs = tmp_path / "logs"
    cmd = [str(Path(sys.executable).parent / "rcan"), "launch", "--use-sim", "--image-size", "64",
           "--generator-model", str(generator), "--policy-model", str(policy),
           "--domain-id", ros_env["ROS_DOMAIN_ID"], "--log-dir", str(logs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ros_env)
    try:
        pids = {}
        for _ in range(4):
            line = proc.stdout.readline()
            name, pid = line.split("started ")[1].split(" (pid ")
            pids[name] = int(pid.rstrip(")\n"))
        assert sorted(pids) == ["iiwa_driver_node", "perception_node", "policy_node", "sim_node"]
        policy_log = logs / "policy_node.log"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "episode 1 started" not in (
                policy_log.read_text() if policy_log.is_file() else ""):
            time.sleep(0.5)
        assert "episode 1 started" in policy_log.read_text(), "the launched graph never ran an episode"

        os.kill(pids["perception_node"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        reported = ""
        while time.monotonic() < deadline and "perception_node" not in reported:
            reported = proc.stdout.readline()
        assert "exited with code -9" in reported, reported

        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "shutting down" in out
    assert proc.returncode == 1  # a node died during the run
    assert not [n for n, pid in pids.items() if group_alive(pid)], "stray processes after rcan launch"
    for name in ("sim_node", "policy_node", "iiwa_driver_node"):
        assert "Traceback" not in (logs / f"{name}.log").read_text()
