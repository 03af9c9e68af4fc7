"""`rcan eval-policy`: the paper's evaluation protocol (5.1) in simulation.

N grasp attempts (default 102) on unseen TEST objects, at most 20 steps each, in a chosen
visual domain; success rate with a 95% Wilson interval.  The policy is an exported ONNX
file, a policy.safetensors (+ .json), a training run directory, or `scripted` (the
privileged scripted baseline, same seeds).  Episode i uses scene seed `seed + i` and a CEM
random stream derived from (seed, i) only, so the same command gives the same result
whatever the number of workers.  The JSON holds per-episode records, seeds, file hashes and
library versions.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rcan_common.config import ConfigError, parse_cli, require, to_dict
from rcan_common.executor import make_executor
from rcan_common.io import atomic_write_json, ensure_writable_dir
from rcan_common.provenance import file_sha256, git_commit, package_versions
from rcan_grasp_policy.cem import CEMConfig
from rcan_grasp_policy.collect import PRIVILEGED, CollectTask, collect_episodes
from rcan_grasp_policy.contract import PolicyContract
from rcan_grasp_policy.grasp_review import summarise, summarise_hold_checks
from rcan_grasp_policy.inputs import ORACLE
from rcan_common.stats import wilson_interval

Domain = Literal["canonical", "randomized", "held-out", "mild", "medium", "heavy"]


@dataclass
class EvalConfig:
    """Evaluate a grasping policy on unseen test objects (paper protocol)."""

    policy: str = "models/policy_rcan_128.onnx"
    """Policy: .onnx, .safetensors (with its .json), a training run directory, or a privileged baseline:
    'scripted', 'descend' (blind straight-down grasp) or 'label-oracle' (greedy on the true descend labels)."""
    generator: str | None = None
    """Generator ONNX for an rcan policy (default: the one recorded in the policy's metadata); 'oracle' = sim's paired canonical render (diagnostic)."""
    domain: Domain = "canonical"
    """Visual domain of the camera images."""
    episodes: int = 102
    """Grasp attempts (paper: 102)."""
    seed: int = 0
    """Episode i uses scene seed seed + i."""
    search_seed: int = 0
    """CEM's random draws (0: the protocol's, seeded by seed and the episode's index alone).  Another value runs
    the same scenes under other draws of the search, which tells how much of a policy's outcome is chance."""
    split: Literal["train", "test"] = "test"
    """Object split (test = objects never seen in training)."""
    max_steps: int = 20
    """Steps per attempt (paper: 20)."""
    image_size: int = 64
    """Render size for the scripted baseline (learned policies use the size they were trained at)."""
    cem: CEMConfig = field(default_factory=CEMConfig)
    """CEM settings of the greedy policy."""
    workers: int = 1
    """Evaluation processes."""
    ray: bool = False
    """Run episodes as Ray tasks."""
    threads: int = 1
    """Inference threads per worker."""
    out: Path | None = None
    """Write the JSON report here."""
    review_closes: bool = False
    """Privileged diagnosis (sim only; rcan_grasp_policy.grasp_review): review every close of the policy (the
    nearest object's distance and yaw error, how many of 75 nearby moves would have grasped, and whether a close
    straight down from there, centred on that object, turned onto its grasp yaw, or both would have) and summarise
    them for grasped and failed episodes.  The episodes and their outcomes stay the same."""
    hold_checks: int = 0
    """Privileged diagnosis (sim only; grasp_review.hold_checked_step; 0: off): up to this many times per episode,
    a terminate that leaves the gripper closed is held back, the gripper lifted 5 cm, and if the simulator finds
    nothing held it reopens and the policy goes on.  What regrasping would win with a perfect detector and this
    policy's own regrasps.  It changes the episodes: never for a reported success rate."""
    view_through: int = 0
    """Diagnostic, NOT in the paper (0: off; a canonical policy only): its image is shrunk to this many pixels and
    enlarged back before it reads it, which is what a perfect generator of that size would give it.  How much the
    generator's size alone costs a policy that reads G(x) (docs/policy.md); never for a reported success rate."""

    def __post_init__(self) -> None:
        require(self.episodes >= 1, "episodes", "must be >= 1")
        require(self.seed >= 0, "seed", "must be >= 0")
        require(self.search_seed >= 0, "search_seed", "must be >= 0")
        require(self.hold_checks >= 0, "hold_checks", "must be >= 0")
        require(self.view_through >= 0, "view_through", "must be >= 0 (0: off)")
        require(1 <= self.max_steps <= 1000, "max_steps", "must be in 1..1000")
        require(self.workers >= 1, "workers", "must be >= 1")
        require(self.threads >= 1, "threads", "must be >= 1")


def _versions() -> dict[str, str]:
    return {**package_versions(("numpy", "torch", "onnxruntime", "pybullet")), "platform": platform.platform(),
            "git_commit": git_commit()}


def resolve_policy(cfg: EvalConfig) -> dict:
    """Policy file, its metadata and the generator to use; raises ConfigError with the field named."""
    if cfg.policy in PRIVILEGED:
        return {"kind": cfg.policy, "variant": "canonical", "image_size": cfg.image_size, "generator": None,
                "files": {}, "camera_fov_deg": 0.0}
    path = Path(cfg.policy)
    if path.is_dir():
        path = path / "policy.safetensors"
    if not path.is_file():
        raise ConfigError(f"invalid config field 'policy': {path} does not exist")
    if path.suffix == ".onnx":
        from rcan_grasp_policy.backends import load_qfunction

        qf, meta = load_qfunction(path)
        contract = qf.contract
    elif path.suffix == ".safetensors":
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise ConfigError(f"invalid config field 'policy': {path} needs its metadata file {sidecar}")
        meta = json.loads(sidecar.read_text())
        contract = PolicyContract.from_metadata(meta)
    else:
        raise ConfigError(f"invalid config field 'policy': expected .onnx, .safetensors or a run directory, got {path}")
    generator = cfg.generator
    if meta["variant"] == "rcan":
        generator = generator or meta.get("generator")
        if generator is None or (generator != ORACLE and not Path(generator).is_file()):
            raise ConfigError(f"invalid config field 'generator': the rcan policy needs a generator ONNX "
                              f"(got {generator!r}); pass --generator")
    files = {"policy": {"path": str(path), "sha256": file_sha256(path)}}
    if generator not in (None, ORACLE):
        files["generator"] = {"path": str(generator), "sha256": file_sha256(generator)}
    return {"kind": path.suffix.lstrip("."), "path": path, "variant": meta["variant"],
            "image_size": int(meta["qnet"]["image_size"]), "generator": generator, "files": files, "meta": meta,
            "camera_fov_deg": contract.view_fov_deg()}  # a policy trained on a narrower view sees renders at it


def episode_search_seed(seed: int, episode: int, search_seed: int = 0) -> int:
    """The seed of CEM's draws in episode `episode` of a run from scene seed `seed` (EvalConfig.search_seed)."""
    entropy = [seed, episode] + ([search_seed] if search_seed else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def evaluate(cfg: EvalConfig, progress: bool = False) -> dict:
    pol = resolve_policy(cfg)
    if cfg.view_through and (pol["variant"] != "canonical" or pol["kind"] in PRIVILEGED):
        raise ConfigError(f"invalid config field 'view_through': it is for a learned canonical policy's image, "
                          f"and {cfg.policy} is " + ("a privileged baseline" if pol["kind"] in PRIVILEGED
                                                     else f"a {pol['variant']!r} policy"))
    weights = qnet = onnx_path = None
    if pol["kind"] == "safetensors":
        weights, qnet = pol["path"].read_bytes(), pol["meta"]["qnet"]
    elif pol["kind"] == "onnx":
        onnx_path = str(pol["path"])
    tasks = [CollectTask(seeds=(cfg.seed + i,), variant=pol["variant"], domain=cfg.domain,
                         image_size=pol["image_size"], camera_fov_deg=pol["camera_fov_deg"], split=cfg.split,
                         max_steps=cfg.max_steps,
                         generator=pol["generator"], policy=pol["kind"] if pol["kind"] in PRIVILEGED else "qnet",
                         weights=weights, qnet=qnet, onnx_path=onnx_path, cem=cfg.cem,
                         cem_seed=episode_search_seed(cfg.seed, i, cfg.search_seed),
                         record=False, threads=cfg.threads, fresh_world=True, review_closes=cfg.review_closes,
                         hold_checks=cfg.hold_checks, view_through=cfg.view_through)
             for i in range(cfg.episodes)]
    t0 = time.perf_counter()
    records, env_steps = [], 0
    executor = make_executor(cfg.workers, cfg.ray)
    try:
        for task, res in executor.map_unordered(collect_episodes, tasks):
            records.extend(res.episodes)
            env_steps += res.env_steps
            if progress:
                wins = sum(r["success"] for r in records)
                print(f"\r{len(records)}/{cfg.episodes} episodes, {wins} successes", end="", file=sys.stderr)
    finally:
        executor.close()
    if progress:
        print(file=sys.stderr)
    records.sort(key=lambda r: r["seed"])
    successes = sum(r["success"] for r in records)
    lo, hi = wilson_interval(successes, cfg.episodes)
    seconds = time.perf_counter() - t0
    return {"success_rate": successes / cfg.episodes, "successes": successes, "episodes": cfg.episodes,
            "wilson95": [lo, hi], "mean_steps": float(np.mean([r["steps"] for r in records])),
            "domain": cfg.domain, "split": cfg.split, "variant": pol["variant"], "policy": cfg.policy,
            "generator": pol["generator"], "files": pol["files"], "seeds": [r["seed"] for r in records],
            "records": records, "seconds": round(seconds, 1), "env_steps_per_s": round(env_steps / seconds, 2),
            "versions": _versions(), "config": to_dict(cfg)} | ({"close_review": summarise(records)} if cfg.review_closes else {}) \
        | ({"hold_checks": summarise_hold_checks(records)} if cfg.hold_checks else {})


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(EvalConfig, argv, description=__doc__.splitlines()[0])
    if cfg.out is not None:
        ensure_writable_dir(Path(cfg.out).parent)
    result = evaluate(cfg, progress=True)
    lo, hi = result["wilson95"]
    print(f"{cfg.policy} ({result['variant']}), {cfg.split} objects, {cfg.domain} domain: "
          f"{result['successes']}/{cfg.episodes} = {result['success_rate']:.3f} "
          f"(95% Wilson interval {lo:.3f}-{hi:.3f}), {result['mean_steps']:.1f} steps/episode, {result['seconds']:.0f} s")
    if cfg.review_closes:
        review = result["close_review"]
        for group in ("grasped", "failed"):
            print(f"closes of {group} episodes: " + "  ".join(f"{k} {v}" for k, v in review[group].items()))
        print("episodes a corrected last close would have grasped: "
              + "  ".join(f"{k} {v}" for k, v in review["corrected_last_close"].items()))
    if cfg.hold_checks:
        print("hold checks: " + "  ".join(f"{k} {v}" for k, v in result["hold_checks"].items()))
    if cfg.out is not None:
        atomic_write_json(cfg.out, result)
        print(f"wrote {cfg.out}")
    return 0
