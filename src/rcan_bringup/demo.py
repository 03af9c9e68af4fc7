"""`rcan demo`: sim-in-the-loop grasping through the real node graph.

Starts sim_node, perception_node, policy_node, iiwa_driver_node and supervisor_node as processes
(the same graph description as the launch file).  The supervisor runs N grasp attempts on unseen
test objects (sim reset, the policy's episode, the sim's grasp check) and publishes each verdict;
the demo counts those, then prints the success rate (Wilson 95% interval) and per-stage
latencies, and writes into the output folder:

* ``demo.json``: results, latencies, models, config;
* ``strip.png``: source -> canonical G(source) -> chosen action, one row per step;
* ``demo.mcap``: every topic of the loop (opens in Foxglove; ``ros2 bag info``);
* ``logs/<node>.log``: each node's output.

Ctrl-C stops the attempts, still writes what was gathered, and shuts every node down.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rcan_bringup.graph import resolve, sim_graph
from rcan_bringup.launcher import GraphProcesses, LaunchError, ros_environment
from rcan_common.config import parse_cli, require, to_dict
from rcan_common.io import atomic_write_bytes, atomic_write_json, ensure_writable_dir
from rcan_common.domains import DOMAINS


@dataclass
class DemoConfig:
    """Sim-in-the-loop grasping demo with the shipped models."""

    attempts: int = 3
    """Grasp attempts (episodes), each on a fresh draw of unseen test objects."""
    domain: str = "canonical"
    """Rendering domain of the sim camera (canonical, randomized, held-out, ...)."""
    image_size: int = 0
    """Sim camera resolution (px); 0 renders at the policy's own size (its contract's image_size), the size it
    was trained and evaluated at."""
    max_steps: int = 20
    """Policy actions per attempt (paper: at most 20)."""
    out_dir: Path = Path("runs/demo")
    """Where demo.json, strip.png, demo.mcap and the node logs go."""
    domain_id: int = 73
    """ROS_DOMAIN_ID of the demo graph (DDS stays on loopback whatever this is)."""
    timeout_s: float = 900.0
    """Give up after this long in total (s)."""
    startup_timeout_s: float = 120.0
    """Give up if no policy status arrives within this long after start (s)."""
    seed: int = 1000
    """Seed of the first attempt's scene (attempt k uses seed + k)."""
    generator_model: str = "models/generator_64.onnx"
    """Generator G (ONNX); relative paths are under the package share dir."""
    policy_model: str = "models/policy_rcan_128.onnx"
    """Q-network (ONNX); relative paths are under the package share dir."""
    allow_untrained: bool = True
    """If a model is missing, run with freshly initialised ones (plumbing only; says so loudly)."""
    record: bool = True
    """Write demo.mcap."""
    strip_rows: int = 8
    """Steps shown in strip.png."""

    def __post_init__(self) -> None:
        require(self.attempts >= 1, "attempts", "must be >= 1")
        require(self.domain in DOMAINS, "domain", f"must be one of {DOMAINS}")
        require(self.image_size == 0 or self.image_size >= 32, "image_size", "must be 0 (the policy's size) or >= 32")
        require(self.max_steps >= 1, "max_steps", "must be >= 1")
        require(0 <= self.domain_id <= 232, "domain_id", "must be in 0..232")
        require(self.timeout_s > 0 and self.startup_timeout_s > 0, "timeout_s", "must be > 0")
        require(self.seed >= 0, "seed", "must be >= 0")
        require(self.strip_rows >= 1, "strip_rows", "must be >= 1")


def resolve_models(cfg: DemoConfig, log=print) -> tuple[Path, Path, bool]:
    """(generator, policy, untrained?) — the shipped models, else untrained ones when allowed."""
    generator, policy = resolve(cfg.generator_model), resolve(cfg.policy_model)
    missing = [str(p) for p in (generator, policy) if not p.is_file()]
    if not missing:
        return generator, policy, False
    if not cfg.allow_untrained:
        raise FileNotFoundError(f"model(s) not found: {', '.join(missing)}")
    from rcan_bringup.untrained import ensure_untrained_models

    log("=" * 78)
    log(f"WARNING: {', '.join(missing)} not found.")
    log("Running with UNTRAINED models: this shows the graph working end to end, but the")
    log("success rate below says nothing about RCAN.  Train/export the models (README) or")
    log("pass --generator-model/--policy-model.")
    log("=" * 78)
    g, p = ensure_untrained_models(cfg.out_dir / "untrained_models", cfg.image_size or 64)
    return (generator if generator.is_file() else g), (policy if policy.is_file() else p), True


def camera_size(cfg: DemoConfig, policy: Path) -> int:
    """The sim camera's resolution: the configured one, else the size in the policy's contract (read as the
    policy node reads it)."""
    if cfg.image_size:
        return cfg.image_size
    from rcan_grasp_policy.backends import load_qfunction

    return load_qfunction(policy)[0].contract.image_size


def graph_specs(cfg: DemoConfig, generator: Path, policy: Path, image_size: int):
    return sim_graph(generator, policy, image_size, cfg.domain, cfg.seed,
                     {"policy_node": {"max_steps": cfg.max_steps}, "supervisor_node": {"episodes": cfg.attempts}})


def action_panel(status: dict | None, size: int) -> np.ndarray:
    """A picture of one action: top-down translation arrow, height bar, rotation, gripper, Q."""
    import cv2

    panel = np.full((size, size, 3), 30, np.uint8)
    if not status or status.get("last_action") is None:
        cv2.putText(panel, "no action", (4, size // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (200, 200, 200), 1)
        return panel
    a = np.asarray(status["last_action"], dtype=np.float64)
    c = size // 2
    scale = (size * 0.4) / 0.05  # 5 cm (max per step) reaches 40% of the panel
    # Image x right = base -y, image y down = base -x (looking down at the tray from above).
    tip = (int(c - a[1] * scale), int(c - a[0] * scale))
    cv2.arrowedLine(panel, (c, c), tip, (80, 220, 80), 2, tipLength=0.3)
    bar = int(np.clip(a[2] / 0.05, -1, 1) * size * 0.4)
    cv2.line(panel, (size - 6, c), (size - 6, c - bar), (80, 160, 255), 3)
    dtheta = math.atan2(a[3], a[4])
    r = size * 0.15
    cv2.line(panel, (int(c - r * math.cos(dtheta)), int(c + r * math.sin(dtheta))),
             (int(c + r * math.cos(dtheta)), int(c - r * math.sin(dtheta))), (240, 200, 60), 1)
    grip = "close" if a[5] > 0.5 else "open" if a[6] > 0.5 else ""
    lines = [f"Q {status.get('last_q', 0.0):.2f}", f"step {status.get('step')}", grip,
             "TERMINATE" if a[7] > 0.5 else ""]
    for i, text in enumerate(t for t in lines if t):
        cv2.putText(panel, text, (3, 11 + 11 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1)
    return panel


def write_strip(monitor, path: Path, rows: int, size: int = 128) -> int:
    """PNG: one row per recorded step, columns source | canonical | action. Returns rows written."""
    import cv2

    out = []
    fit = lambda img: cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST)  # noqa: E731
    for step in monitor.steps:
        if step.source is None or step.canonical is None:
            continue
        out.append(np.hstack([fit(step.source), fit(step.canonical), action_panel(step.status, size)]))
        if len(out) >= rows:
            break
    if not out:
        return 0
    header = np.full((18, size * 3, 3), 0, np.uint8)
    for i, title in enumerate(("source x", "canonical G(x)", "action")):
        cv2.putText(header, title, (4 + i * size, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    image = np.vstack([header, *out])
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    atomic_write_bytes(path, png.tobytes())
    return len(out)


def run_demo(cfg: DemoConfig, stop: threading.Event | None = None, log=print) -> dict:
    """Run the demo; returns the results dict (also written to out_dir/demo.json)."""
    from rcan_bringup.loop_monitor import LoopMonitor
    from rcan_bringup.probe import Probe
    from rcan_common.stats import wilson_interval

    stop = stop or threading.Event()
    out = ensure_writable_dir(cfg.out_dir)
    generator, policy, untrained = resolve_models(cfg, log)
    env = ros_environment(cfg.domain_id)
    # The observer in this process joins the same private, loopback-only graph.
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION")})
    image_size = camera_size(cfg, policy)
    specs = graph_specs(cfg, generator, policy, image_size)
    log(f"starting {', '.join(s.name for s in specs)} (ROS_DOMAIN_ID={cfg.domain_id}, loopback only; "
        f"sim camera {image_size} px)")
    t_start = time.monotonic()
    deaths: list[tuple[str, int]] = []
    results: list[dict] = []
    recorder = None
    with GraphProcesses(env, log_dir=out / "logs") as graph, Probe("rcan_demo") as probe:
        monitor = LoopMonitor(probe, keep_step_images=cfg.strip_rows)
        if cfg.record:
            from rcan_bringup.recorder import McapRecorder

            recorder = McapRecorder(probe.node, out / "demo.mcap")
        graph.start_all(specs)
        status: dict | None = None
        while not stop.is_set():
            deaths += graph.poll_deaths()
            if deaths:
                log(f"node(s) died: {deaths}; see {out / 'logs'}")
                break
            status = monitor.latest_status()
            elapsed = time.monotonic() - t_start
            if status is None and elapsed > cfg.startup_timeout_s:
                log(f"no policy status after {cfg.startup_timeout_s:.0f} s; see {out / 'logs'}")
                break
            if elapsed > cfg.timeout_s:
                log(f"timeout after {cfg.timeout_s:.0f} s")
                break
            for result in monitor.results[len(results):]:  # the supervisor's verdicts
                results.append(result)
                verdict = "SUCCESS" if result["success"] is True else "failure"
                log(f"attempt {len(results)}/{cfg.attempts}: {verdict} after {result['steps']} steps "
                    f"({result['ended_by']})")
            if len(results) >= cfg.attempts:
                break
            stop.wait(0.2)
        counts = recorder.close() if recorder else {}
        latencies = monitor.summary()
        strip_rows = write_strip(monitor, out / "strip.png", cfg.strip_rows)
    successes = sum(r["success"] is True for r in results)
    lo, hi = wilson_interval(successes, len(results)) if results else (0.0, 1.0)
    summary = {
        "attempts_requested": cfg.attempts, "attempts_finished": len(results), "successes": successes,
        "success_rate": successes / len(results) if results else None, "wilson95": [round(lo, 3), round(hi, 3)],
        "episodes": results, "latency": latencies, "untrained_models": untrained,
        "models": {"generator": str(generator), "policy": str(policy)}, "camera_px": image_size,
        "node_deaths": deaths, "interrupted": stop.is_set(), "wall_s": round(time.monotonic() - t_start, 1),
        "recorded_messages": counts, "strip_rows": strip_rows, "config": to_dict(cfg),
    }
    atomic_write_json(out / "demo.json", summary)
    return summary


def print_summary(s: dict, out_dir: Path, log=print) -> None:
    log("")
    if s["attempts_finished"]:
        log(f"success rate: {s['successes']}/{s['attempts_finished']} = {s['success_rate']:.2f} "
            f"(Wilson 95% [{s['wilson95'][0]:.2f}, {s['wilson95'][1]:.2f}])"
            + ("  [UNTRAINED models]" if s["untrained_models"] else ""))
    else:
        log("no attempt finished")
    for stage in ("camera_to_canonical", "canonical_to_command", "command_to_trajectory", "camera_to_trajectory"):
        v = s["latency"][stage]
        log(f"  {stage.replace('_', ' '):<24} p50 {v['p50_ms']} ms  p95 {v['p95_ms']} ms  (n={v['count']})")
    log(f"wrote {out_dir / 'demo.json'}, {out_dir / 'strip.png'}"
        + (f", {out_dir / 'demo.mcap'}" if s["recorded_messages"] else "") + f", logs in {out_dir / 'logs'}")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(DemoConfig, argv, description="sim-in-the-loop grasping demo through the real node graph")
    stop = threading.Event()

    def on_signal(signum, _frame):
        if not stop.is_set():
            print("\nstopping (signal received); writing what was gathered ...", flush=True)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        summary = run_demo(cfg, stop, log=lambda m: print(m, flush=True))
    except (FileNotFoundError, LaunchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_summary(summary, cfg.out_dir)
    if summary["node_deaths"]:
        return 1
    return 0 if summary["attempts_finished"] >= cfg.attempts or summary["interrupted"] else 1


if __name__ == "__main__":
    sys.exit(main())
