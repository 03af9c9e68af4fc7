"""Simulator and paired-data benchmarks; writes bench/results/sim.json.

Measured in one run, on one machine (load average recorded, since other jobs share the cores):
  * physics steps/s (5 objects in the tray, 1/120 s steps);
  * paired samples/s per worker at 64, 128 and 472 px (a datagen step: pair render, scripted
    policy, env step) and bare paired renders/s;
  * datagen throughput with 1 and 2 workers (speed-up end to end and in steady state);
  * our paired render against two naive baselines (re-loading every texture from disk per
    render; rebuilding the scene per pair) and against two plain TinyRenderer frames of an
    unchanged scene (the floor cost of any 2-image pair).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pybullet as pb

from rcan_common.io import atomic_write_json
from rcan_sim import datagen
from rcan_sim.domains import CANON_LIGHT
from rcan_sim.world import GraspWorld, WorldConfig

RESULTS = Path(__file__).resolve().parent / "results" / "sim.json"


class _Clock:
    """Wall and CPU seconds of a block.  CPU time is the steadier figure on a shared machine:
    the sim is single-threaded, so CPU seconds are what one unloaded core would take."""

    def __enter__(self) -> "_Clock":
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0


def _seconds_per_call(fn, n: int) -> dict[str, float]:
    """Wall and CPU seconds per call of fn() over n calls (after one warm-up call)."""
    fn()
    with _Clock() as c:
        for _ in range(n):
            fn()
    return {"wall": c.wall / n, "cpu": c.cpu / n}


def physics_steps_per_s(world: GraspWorld, n: int = 600) -> dict[str, float]:
    world.reset(1)
    with _Clock() as c:
        world.step_physics(n)
    return {"wall": n / c.wall, "cpu": n / c.cpu}


def datagen_frames_per_s(size: int, frames: int) -> dict[str, float]:
    """Frames/s of the datagen inner loop (one worker, in-process, env already built)."""
    dc = datagen.data_config(datagen.DatagenConfig(out=Path("unused"), image_size=size, max_steps=20))
    env = datagen.DatagenEnv(datagen.env_config(dc))
    policy = datagen.resolve_policy_factory(dc["policy"])()
    datagen.run_episode(env, policy, dc, 0)  # warm-up: textures of a first palette loaded
    done, episode = 0, 1
    with _Clock() as c:
        while done < frames:
            done += len(datagen.run_episode(env, policy, dc, episode)["step"])
            episode += 1
    env.close()
    return {"wall": done / c.wall, "cpu": done / c.cpu}


def _warm(world: GraspWorld) -> None:
    """Load the episode's texture palette into pybullet, so timings are steady state."""
    for index in world._palette(False):
        world._texture_id(index)


def render_costs(size: int, n: int) -> dict[str, dict[str, float]]:
    """Seconds (wall, cpu) per paired render, per naive pair and per two plain frames at `size` px,
    and the ratios (from CPU time)."""
    world = GraspWorld(WorldConfig(image_size=size))
    world.reset(3)
    _warm(world)
    seeds = iter(range(10**6))
    pair = _seconds_per_call(lambda: world.render_pair(next(seeds)), n)

    def reload_textures_pair() -> None:
        world._textures.clear()  # naive: every texture re-read from disk and re-uploaded per render
        world.render_pair(next(seeds))

    reload = _seconds_per_call(reload_textures_pair, n)
    world.render("randomized", 0)  # leave a randomized look on the scene for the plain frames

    def plain_two(flags: int) -> None:
        for _ in range(2):
            pb.getCameraImage(size, size, world._view, world._proj, renderer=pb.ER_TINY_RENDERER,
                              shadow=int(world.cfg.shadows), flags=flags, physicsClientId=world._cid, **CANON_LIGHT)

    plain = _seconds_per_call(lambda: plain_two(0), n)  # pybullet's default: RGB + depth + segmentation
    plain_rgb = _seconds_per_call(lambda: plain_two(pb.ER_NO_SEGMENTATION_MASK), n)
    world.close()

    def rebuild_pair() -> None:
        # naive: a fresh scene per render domain (reset to the same episode, render, discard)
        for domain in ("randomized", "canonical"):
            w = GraspWorld(WorldConfig(image_size=size))
            w.reset(3)
            w.render(domain, 0)
            w.close()

    rebuild = _seconds_per_call(rebuild_pair, max(1, n // 2))
    return {"seconds": {"pair": pair, "reload_textures_pair": reload, "rebuild_scene_pair": rebuild,
                        "two_plain_frames": plain, "two_plain_rgb_only_frames": plain_rgb},
            "ratios_cpu": {"pair_over_two_plain": pair["cpu"] / plain["cpu"],
                           "pair_over_two_plain_rgb_only": pair["cpu"] / plain_rgb["cpu"],
                           "reload_textures_over_pair": reload["cpu"] / pair["cpu"],
                           "rebuild_scene_over_pair": rebuild["cpu"] / pair["cpu"]}}


def datagen_throughput(workers: int, shards_n: int = 12) -> dict[str, float]:
    """Shard tasks of one 64 px episode (8 steps) through the datagen executor.

    Reports end-to-end frames/s (pool start-up included) and steady-state frames/s (from the
    first result of each worker to the last result)."""
    root = Path(tempfile.mkdtemp(prefix="rcan-bench-datagen-"))
    try:
        cfg = datagen.DatagenConfig(out=root, image_size=64, max_steps=8, policy="rcan_sim.datagen:RandomPolicy")
        dc = datagen.data_config(cfg)
        tasks = [datagen.ShardTask(k, k, k + 1, str(root), json.dumps(dc, sort_keys=True), "bench")
                 for k in range(shards_n)]
        executor = datagen.make_executor(workers)
        stamps, frames = [], []
        t0 = time.perf_counter()
        try:
            for _, info in executor.map_unordered(datagen.generate_shard, tasks):
                stamps.append(time.perf_counter() - t0)
                frames.append(info["num_frames"])
        finally:
            executor.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    k = workers  # skip each worker's first task (start-up, first textures)
    return {"frames": sum(frames), "seconds": stamps[-1], "frames_per_s": sum(frames) / stamps[-1],
            "steady_frames_per_s": sum(frames[k:]) / (stamps[-1] - stamps[k - 1])}


def main() -> dict:
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    result: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "load_avg_1m_start": load0[0], "pybullet_renderer": "TinyRenderer (CPU)"}}
    world = GraspWorld(WorldConfig(image_size=64))
    result["physics_steps_per_s"] = physics_steps_per_s(world)
    world.close()

    result["paired_samples_per_s_per_worker"] = {}
    result["paired_renders_per_s"] = {}
    result["render_costs"] = {}
    for size, frames, n in ((64, 40, 10), (128, 30, 8), (472, 6, 3)):
        result["paired_samples_per_s_per_worker"][str(size)] = datagen_frames_per_s(size, frames)
        costs = render_costs(size, n)
        result["render_costs"][str(size)] = costs
        pair = costs["seconds"]["pair"]
        result["paired_renders_per_s"][str(size)] = {"wall": 1 / pair["wall"], "cpu": 1 / pair["cpu"]}
        r = costs["ratios_cpu"]
        print(f"  {size}px: {result['paired_samples_per_s_per_worker'][str(size)]['cpu']:.1f} samples/s/worker "
              f"(CPU time), pair {pair['cpu'] * 1e3:.0f} ms CPU = {r['pair_over_two_plain']:.2f}x two plain frames "
              f"({r['pair_over_two_plain_rgb_only']:.2f}x RGB-only), texture-reload baseline "
              f"{r['reload_textures_over_pair']:.2f}x, scene-rebuild baseline {r['rebuild_scene_over_pair']:.1f}x",
              flush=True)

    one, two = datagen_throughput(1), datagen_throughput(2)
    result["datagen_64px"] = {"workers_1": one, "workers_2": two,
                              "speedup_1_to_2_workers": two["frames_per_s"] / one["frames_per_s"],
                              "steady_speedup_1_to_2_workers": two["steady_frames_per_s"] / one["steady_frames_per_s"]}
    result["goal_pair_472_within_1_3x_of_two_plain"] = \
        result["render_costs"]["472"]["ratios_cpu"]["pair_over_two_plain"] <= 1.3
    result["machine"]["load_avg_1m_end"] = os.getloadavg()[0]
    result["seconds"] = time.perf_counter() - t_start
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS, result)
    print(json.dumps({k: result[k] for k in ("physics_steps_per_s", "paired_samples_per_s_per_worker",
                                             "datagen_64px", "seconds")}, indent=1))
    return result


if __name__ == "__main__":
    main()
