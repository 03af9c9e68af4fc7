"""Control-loop benchmark: the sim graph as real processes, timed from outside.

Writes bench/results/loop.json with the latency from a camera frame's capture stamp to the
JointTrajectory the driver publishes for the action chosen on it (p50/p95; goal p95 < 150 ms
with the demo's models at the policy's own camera size), the per-stage split (camera -> canonical -> command ->
trajectory), the loop rate (actions/s, canonical frames/s vs camera frames/s) and each
node's CPU use over the measured window (from /proc/<pid>/stat; % of one core).

`python -m bench.bench_loop [--seconds 60] [--image-size 0]`.  Uses the demo's models (`make demo`:
the same generator and policy) when present, else untrained ones at 64 px (the graphs have the
shipped shapes only when the shipped files are used, which the JSON records); --image-size 0
renders at the policy's own size (its contract's), as the demo does.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"



def _repo_relative(path) -> str:
    """The path relative to the repository when it lies inside it (result JSON carries no machine paths)."""
    path = Path(path).resolve()
    root = Path(__file__).resolve().parents[1]
    return str(path.relative_to(root)) if path.is_relative_to(root) else path.name

def cpu_seconds(pid: int) -> float | None:
    """utime + stime of `pid` in seconds, or None once it has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(seconds: float = 60.0, image_size: int = 0, camera_rate_hz: float = 10.0, domain_id: int = 0) -> dict:
    from rcan_bringup.demo import DemoConfig, camera_size
    from rcan_bringup.graph import resolve, sim_graph
    from rcan_bringup.launcher import GraphProcesses, ros_environment
    from rcan_bringup.loop_monitor import LoopMonitor
    from rcan_bringup.probe import Probe

    demo = DemoConfig(image_size=image_size)
    generator, policy = resolve(demo.generator_model), resolve(demo.policy_model)
    shipped = generator.is_file() and policy.is_file()
    if shipped:
        image_size = camera_size(demo, policy)
    else:
        from rcan_bringup.untrained import ensure_untrained_models

        image_size = image_size or 64
        print(f"bench_loop: shipped models missing; timing untrained models at {image_size} px", flush=True)
        generator, policy = ensure_untrained_models(Path("runs/bench_loop/untrained_models"), image_size)
    env = ros_environment(domain_id or 180 + os.getpid() % 50)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION")})
    specs = sim_graph(generator, policy, image_size=image_size, seed=500,
                      overrides={"sim_node": {"camera_rate_hz": camera_rate_hz}})
    log_dir = Path("runs/bench_loop/logs")
    with GraphProcesses(env, log_dir=log_dir) as graph, Probe("bench_loop") as probe:
        monitor = LoopMonitor(probe)
        graph.start_all(specs)
        if not probe.wait_for(lambda: len(monitor.steps) >= 2 or bool(graph.poll_deaths()), 120):
            raise RuntimeError(f"the loop did not start; logs in {log_dir}")
        monitor.reset()  # measure the steady state only
        pids = {name: graph.pid(name) for name in graph.children}
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        t0, w0 = time.monotonic(), time.time()
        cam0 = probe.count("/camera/image_raw")
        time.sleep(seconds)
        wall = time.monotonic() - t0
        cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        cameras = probe.count("/camera/image_raw") - cam0
        summary = monitor.summary()
        canonical_hz = monitor.canonical_rate(w0, time.time())
        deaths = graph.poll_deaths()
    cpu = {name: (None if cpu0[name] is None or cpu1[name] is None
                  else round(100.0 * (cpu1[name] - cpu0[name]) / wall, 1)) for name in pids}
    loop = summary["camera_to_trajectory"]
    return {
        "benchmark": "control loop (sim graph, real processes, loopback DDS)",
        "image_size": image_size, "camera_rate_hz": camera_rate_hz, "seconds": round(wall, 1),
        "models": {"generator": _repo_relative(generator), "policy": _repo_relative(policy), "shipped": shipped},
        "latency": summary,
        "goal_p95_ms": 150.0, "goal_met": loop["p95_ms"] is not None and loop["p95_ms"] < 150.0,
        "rates_hz": {"camera": round(cameras / wall, 2), "canonical": round(canonical_hz, 2),
                     "actions": round(summary["actions"] / wall, 2),
                     "trajectories": round(summary["trajectories"] / wall, 2)},
        "cpu_percent_of_one_core": cpu,
        "node_deaths": deaths,
        "host": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                 "python": platform.python_version(), "machine": platform.machine()},
        "notes": ("Times come from one observer process on the host clock (includes one loopback DDS hop). "
                  "canonical->command includes the policy's wait for a frame stamped after the previous move "
                  "settled (it decides as soon as such a frame completes a pair); the policy acts once per move, so "
                  "actions/s is bounded by the arm's motion, not by compute."),
    }


def main(argv: list[str] | None = None) -> dict:
    from rcan_common.io import atomic_write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--image-size", type=int, default=0, help="camera px; 0 = the policy's own size")
    parser.add_argument("--camera-rate-hz", type=float, default=10.0)
    args = parser.parse_args(argv if argv is not None else [])
    result = run(args.seconds, args.image_size, args.camera_rate_hz)
    atomic_write_json(RESULTS / "loop.json", result)
    loop = result["latency"]["camera_to_trajectory"]
    print(f"loop camera->trajectory p50 {loop['p50_ms']} ms, p95 {loop['p95_ms']} ms (n={loop['count']}); "
          f"actions {result['rates_hz']['actions']}/s; cpu {result['cpu_percent_of_one_core']} "
          f"-> {RESULTS / 'loop.json'}", flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
