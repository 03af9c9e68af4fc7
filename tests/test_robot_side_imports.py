"""The robot side runs without the simulator (issue 13 item 1).

Each deployed node module (every console-script node except sim_node and supervisor_node), and the graph description
the launch file builds them from, is imported in a fresh interpreter in which `rcan_sim` cannot be
imported: a meta-path finder raises ImportError for it and for every submodule.  A module that
needs the sim (directly or through anything it imports) fails here with the import chain.
"""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Installs a finder that makes rcan_sim unimportable, then runs the code after it.
BLOCK_SIM = """
import sys
class _NoSim:
    def find_spec(self, name, path=None, target=None):
        if name == "rcan_sim" or name.startswith("rcan_sim."):
            raise ImportError(f"rcan_sim is not installed on the robot (import of {name!r})")
        return None
sys.meta_path.insert(0, _NoSim())
"""

SIM_ONLY_NODES = {"sim_node", "supervisor_node"}


def _node_scripts() -> dict[str, str]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    return {name: target for name, target in scripts.items() if name.endswith("_node")}


def _run_without_sim(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_SIM + code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_the_deployed_nodes_are_the_expected_ones():
    """A new node must be classed as deployed (then it is checked below) or sim-only."""
    deployed = set(_node_scripts()) - SIM_ONLY_NODES
    assert deployed == {"camera_node", "perception_node", "policy_node", "iiwa_driver_node"}


def test_the_blocker_blocks():
    out = _run_without_sim("import rcan_sim.env")
    assert out.returncode != 0 and "rcan_sim is not installed on the robot" in out.stderr


@pytest.mark.parametrize("name", sorted(set(_node_scripts()) - SIM_ONLY_NODES))
def test_deployed_node_imports_without_rcan_sim(name):
    module, func = _node_scripts()[name].split(":")
    out = _run_without_sim(f"import importlib\n"
                           f"m = importlib.import_module({module!r})\n"
                           f"assert callable(m.{func})\n"
                           f"assert not any(k == 'rcan_sim' or k.startswith('rcan_sim.') for k in sys.modules)\n"
                           f"print('ok')\n")
    assert out.returncode == 0 and out.stdout.strip() == "ok", f"{name} ({module}) needs rcan_sim:\n{out.stderr}"


def test_graph_description_imports_without_rcan_sim():
    out = _run_without_sim("import rcan_bringup.graph as g\nprint(len(g.__name__) > 0)\n")
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


def test_policy_planner_runs_the_shipped_policy_without_rcan_sim():
    """Beyond the import: the node's model path (load_planner over ONNX Runtime, CEM, action
    decoding in the episode core) does not reach for the sim, or for torch, at run time either."""
    model = ROOT / "models" / "policy_rcan_64.onnx"
    if not model.is_file():
        pytest.skip(f"{model} not present")
    code = f"""
import numpy as np
from rcan_common.action import ActionBounds, decode_action
from rcan_grasp_policy.cem import CEMConfig
from rcan_grasp_policy.planner import load_planner
from rcan_perception.runtime import RuntimeConfig
p = load_planner({str(model)!r}, RuntimeConfig(warmup_runs=0), CEMConfig(), ActionBounds(), seed=0)
images = np.zeros((p.image_size, p.image_size, p.in_channels), np.uint8)
action, q = p.act(images, np.array([1.0, 0.2], np.float32), 20)
decode_action(action)
assert 0.0 <= q <= 1.0
assert 'torch' not in sys.modules  # the ONNX path starts without torch
print('ok')
"""
    out = _run_without_sim(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
