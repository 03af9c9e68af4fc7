"""sim_node memory benchmark; writes bench/results/memory.json.

The sim node's RSS used to grow by 3-8 MB per episode (issue 12, item 5).  Measured here in one
process, without ROS, on the node's own world (rcan_sim.sim_node.make_world with the node's
default parameters: 472 px camera, test objects, canonical domain) driven like the node drives
it: SimCore.reset() for a new episode, some physics, a camera frame.  The row is RSS after 200
resets against RSS after 10, in the same run (goal <= 1.1x).  A second row does the same for a
GraspEnv in the randomized domain at 64 px (datagen/training: ~50 new textures per episode).
Each row runs in a fresh process of its own, since RSS is a per-process figure.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from rcan_common.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
CHECKPOINTS = (1, 10, 25, 50, 100, 150, 200)
GOAL_RATIO = 1.1


def rss_mb() -> float:
    """Resident set size of this process (MB), from /proc (Linux) or ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _row(step, world, resets: int) -> dict:
    rss, t0 = {}, time.perf_counter()
    for k in range(1, resets + 1):
        step(k)
        if k in CHECKPOINTS:
            rss[str(k)] = round(rss_mb(), 1)
            print(f"    {k:4d} resets: RSS {rss[str(k)]:.1f} MB  scene {world.scene_stats()}", flush=True)
    return {"resets": resets, "rss_mb": rss, "ratio_200_over_10": rss["200"] / rss["10"],
            "scene_at_end": world.scene_stats(), "seconds": time.perf_counter() - t0}


def sim_node_row(resets: int = 200) -> dict:
    from rcan_sim.sim_core import SimCore, arm_joint_names
    from rcan_sim.sim_node import SimNodeParams, make_world

    p = SimNodeParams()
    world = make_world(p)
    core = SimCore(world, arm_joint_names(p.joint_prefix), p.physics_hz, seed=p.seed, object_split=p.object_split)

    def step(k: int) -> None:
        core.reset()
        core.advance(0.5)
        world.render(p.domain, randomization_seed=k, labels=False)  # the node's camera frame

    try:
        return {"config": {"image_size": p.image_size, "domain": p.domain, "object_split": p.object_split},
                **_row(step, world, resets)}
    finally:
        world.close()


def env_row(resets: int = 200) -> dict:
    from rcan_sim.env import EnvConfig, GraspEnv
    from rcan_sim.world import WorldConfig

    env = GraspEnv(EnvConfig(world=WorldConfig(image_size=64), domain="randomized"))

    def step(k: int) -> None:
        env.reset(k)
        env.render_pair(1)

    try:
        return {"config": {"image_size": 64, "domain": "randomized", "object_split": "train"},
                **_row(step, env.world, resets)}
    finally:
        env.close()


ROWS = {"sim_node_472_canonical": sim_node_row, "env_64_randomized": env_row}


def _run_row(name: str) -> dict:
    """One row in a fresh interpreter (its progress goes to our stdout, its result comes back as JSON)."""
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "bench.bench_memory", "--row", name], cwd=root,
                          stdout=subprocess.PIPE, text=True, check=True)
    *progress, last = proc.stdout.rstrip("\n").splitlines()
    print("\n".join(line for line in progress if not line.startswith("pybullet build time")), flush=True)
    return json.loads(last)


def main() -> dict:
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    result: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1m_start": load0[0]}}
    print("  sim_node world (472 px, canonical, test objects):", flush=True)
    result["sim_node_472_canonical"] = _run_row("sim_node_472_canonical")
    print("  GraspEnv (64 px, randomized, train objects):", flush=True)
    result["env_64_randomized"] = _run_row("env_64_randomized")
    ratio = result["sim_node_472_canonical"]["ratio_200_over_10"]
    result["goal_sim_node_rss_200_within_1_1x_of_10"] = ratio <= GOAL_RATIO
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    result["seconds"] = time.perf_counter() - t_start
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS, result)
    print(json.dumps({k: result[k]["ratio_200_over_10"] for k in ("sim_node_472_canonical", "env_64_randomized")}
                     | {"goal_met": result["goal_sim_node_rss_200_within_1_1x_of_10"]}, indent=1))
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--row":
        print(json.dumps(ROWS[sys.argv[2]]()), flush=True)
    else:
        main()
