"""`rcan launch` as a user runs it: starts the graph, reports a death, stops everything on Ctrl-C."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node_harness import LineReader, wait_until
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
    out_lines = LineReader(proc.stdout)  # never block in readline(): a silent launcher fails on a timeout
    try:
        started = out_lines.wait_for("[rcan launch] started ", timeout=60, count=5)
        assert len(started) == 5, out_lines.lines
        pids = {}
        for line in started:
            name, pid = line.split("started ")[1].split(" (pid ")
            pids[name] = int(pid.rstrip(")"))
        assert sorted(pids) == ["iiwa_driver_node", "perception_node", "policy_node", "sim_node", "supervisor_node"]
        policy_log = logs / "policy_node.log"
        assert wait_until(lambda: policy_log.is_file() and "episode 1 started" in policy_log.read_text(), 120,
                          interval=0.5), "the launched graph never ran an episode"

        os.kill(pids["perception_node"], signal.SIGKILL)
        reported = out_lines.wait_for("exited with code", timeout=30)
        assert reported and "perception_node" in reported[0] and "exited with code -9" in reported[0], out_lines.lines

        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        out = out_lines.join()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "shutting down" in out
    assert proc.returncode == 1  # a node died during the run
    assert not [n for n, pid in pids.items() if group_alive(pid)], "stray processes after rcan launch"
    for name in ("sim_node", "policy_node", "iiwa_driver_node", "supervisor_node"):
        assert "Traceback" not in (logs / f"{name}.log").read_text()
