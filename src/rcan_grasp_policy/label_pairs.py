"""Paired generator training frames of labelled scene states (`rcan label-pairs`).

NOT in the paper, whose G trains on the states of its data-collection episodes (here `rcan datagen`,
the scripted policy).  A label set stores the scene state of every state a policy visited (object ids
and poses, joints, gripper, episode seed; rcan_grasp_policy.labels), so the states the RCAN policy
itself visits can be rendered again as randomized/canonical pairs with segmentation and depth, at any
size and without running any physics: G then trains on the views its policy will feed it.

The output is `rcan datagen`'s sharded HDF5 format (rcan_sim.shards): one output shard per label shard,
one "episode" per labelled scene, one frame per labelled state (its action: the behaviour candidate;
reward and terminal are 0, as nothing is executed).  Shards are written atomically; `--resume` renders
only the missing ones.  The randomized look of a frame is drawn from (--seed, its scene, its step), in
the label set's source domain (held-out textures and lights for the test split, as `rcan datagen`).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rcan_common.config import ConfigError, parse_cli, require
from rcan_common.executor import make_executor
from rcan_common.io import OutputError, ensure_writable_dir


@dataclass
class LabelPairsConfig:
    """Render randomized/canonical training pairs of labelled scene states for the generator."""

    labels: list[Path] = field(default_factory=list)
    """Label set directories (`rcan label-states`), all of one split."""
    out: Path = Path("data/gen/label-pairs")
    """Output dataset directory (the `rcan datagen` format, read by `rcan train-generator --data`)."""
    image_size: int = 64
    """Square image size of the pairs (the generator's input size)."""
    seed: int = 0
    """Seed of the randomized looks (with each frame's scene and step)."""
    workers: int = 1
    """Processes rendering label shards in parallel."""
    resume: bool = False
    """Render only the shards missing from an existing --out made with the same settings."""
    compression: str = "gzip"
    """HDF5 compression of the shards (gzip, lzf or none)."""

    def __post_init__(self) -> None:
        self.labels = [Path(p) for p in self.labels]
        self.out = Path(self.out)
        require(bool(self.labels), "labels", "name at least one label set directory")
        require(self.image_size >= 8, "image_size", f"must be >= 8, got {self.image_size}")
        require(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        require(self.compression in ("gzip", "lzf", "none"), "compression", "must be gzip, lzf or none")


@dataclass(frozen=True)
class PairTask:
    """Render label shard `source` into output shard `index` (scenes episode_start..episode_stop)."""

    index: int
    source: str
    episode_start: int
    episode_stop: int

    def __repr__(self) -> str:
        return f"label shard {self.source} -> shard {self.index}"


def _scenes(records: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Indices of each scene's states, in order: a new scene starts wherever the episode seed changes."""
    seeds = records["seed"]
    starts = [0] + [i for i in range(1, len(seeds)) if seeds[i] != seeds[i - 1]]
    return [np.arange(a, b) for a, b in zip(starts, starts[1:] + [len(seeds)])]


def render_shard(settings: dict[str, Any], task: PairTask) -> dict[str, Any]:
    """Worker entry point: write one output shard of paired frames; returns its ShardInfo json."""
    from rcan_sim import shards
    from rcan_sim.datagen import randomization_seed, source_domain
    from rcan_sim.env import EnvConfig, GraspEnv
    from rcan_sim.world import view_config

    from rcan_grasp_policy.labels import place_record

    with np.load(task.source) as z:  # the scene states only: the stored images are not needed
        records = {k: z[k] for k in ("seed", "step", "object_ids", "object_poses", "joints", "gripper_open",
                                     "state", "candidates")}
    scenes = _scenes(records)
    if len(scenes) != task.episode_stop - task.episode_start:
        raise ValueError(f"{task.source} changed since it was planned ({len(scenes)} scenes)")
    env = GraspEnv(EnvConfig(world=view_config(settings["image_size"], settings["split"], 0.0)))
    domain = source_domain(settings["split"])
    try:
        with shards.ShardWriter(settings["out"], task.index, task.episode_start, task.episode_stop,
                                settings["image_size"], settings["fingerprint"], settings["compression"]) as writer:
            for episode, idx in zip(range(task.episode_start, task.episode_stop), scenes):
                cols: dict[str, list] = {k: [] for k in shards.frame_schema(1)}
                for i in idx:
                    place_record(env, records, i)
                    step = int(records["step"][i])
                    r_seed = randomization_seed(settings["seed"], episode, step)
                    pair = env.world.render_pair(r_seed, domain=domain)
                    for k, v in (("randomized", pair.randomized_rgb), ("canonical", pair.canonical_rgb),
                                 ("segmentation", pair.segmentation), ("depth", pair.depth), ("episode", episode),
                                 ("step", step), ("episode_seed", int(records["seed"][i])),
                                 ("randomization_seed", r_seed), ("state", records["state"][i]),
                                 ("action", records["candidates"][i, 0]), ("reward", 0.0), ("terminal", 0)):
                        cols[k].append(v)
                writer.append_episode({k: np.asarray(v) for k, v in cols.items()},
                                      object_ids=records["object_ids"][idx[0]].tolist())
            info = writer.commit()
    finally:
        env.close()
    return info.to_json()


def _plan(cfg: LabelPairsConfig) -> tuple[str, list[PairTask]]:
    """The label sets' split and one task per label shard, with global scene numbers."""
    splits, tasks, episode = set(), [], 0
    for root in cfg.labels:
        manifest = root / "manifest.json"
        if not manifest.is_file():
            raise ConfigError(f"invalid config field 'labels': {root} has no manifest.json (not a label set)")
        splits.add(json.loads(manifest.read_text())["settings"]["split"])
        for path in sorted(root.glob("labels-*.npz")):
            with np.load(path) as z:
                n = len(_scenes({"seed": z["seed"]}))
            if n:
                tasks.append(PairTask(len(tasks), str(path), episode, episode + n))
                episode += n
    if len(splits) != 1:
        raise ConfigError(f"invalid config field 'labels': the sets mix splits {sorted(splits)}; "
                          "make one dataset per split")
    if not tasks:
        raise ConfigError("invalid config field 'labels': the label sets hold no labelled states")
    return splits.pop(), tasks


def run(cfg: LabelPairsConfig, progress: bool = True) -> dict[str, Any]:
    """Render (or finish) the dataset; returns its manifest."""
    from rcan_sim import shards

    split, tasks = _plan(cfg)
    config = {"source": "rcan label-pairs", "labels": [str(p) for p in cfg.labels], "image_size": cfg.image_size,
              "seed": cfg.seed, "split": split,
              "label_shards": [Path(t.source).name for t in tasks]}
    fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    ensure_writable_dir(cfg.out)
    entries: dict[int, dict] = {}
    manifest_path = cfg.out / shards.MANIFEST
    if manifest_path.is_file():
        if not cfg.resume:
            raise OutputError(f"{cfg.out} already holds a dataset; pass --resume to finish it, or choose another --out")
        old = shards.load_manifest(cfg.out)
        if old["config"] != config:
            raise ConfigError(f"--resume: {cfg.out} was made with other settings ({old['config']})")
        entries = {e["index"]: e for e in old["shards"]}
    elif any(cfg.out.iterdir()):
        raise OutputError(f"{cfg.out} is not empty and holds no {shards.MANIFEST}; choose a new --out")
    manifest = {"format": shards.FORMAT, "format_version": shards.FORMAT_VERSION, "config": config,
                "fingerprint": fingerprint}

    def record() -> None:
        manifest["shards"] = [entries[k] for k in sorted(entries)]
        manifest["counts"] = {"episodes": sum(e["episode_stop"] - e["episode_start"] for e in entries.values()),
                              "frames": sum(e["num_frames"] for e in entries.values()), "shards": len(entries)}
        manifest["complete"] = len(entries) == len(tasks)
        shards.write_manifest(cfg.out, manifest)

    record()
    todo = [t for t in tasks if t.index not in entries]
    settings = {"out": str(cfg.out), "image_size": cfg.image_size, "split": split, "seed": cfg.seed,
                "fingerprint": fingerprint, "compression": cfg.compression}
    executor = make_executor(min(cfg.workers, max(1, len(todo))))
    t0 = time.perf_counter()
    try:
        for task, info in executor.map_unordered(partial(render_shard, settings), todo):
            entries[task.index] = {**info, "source": task.source}
            record()
            if progress:
                print(f"[label-pairs] {task!r}: {info['num_frames']} frames "
                      f"({len(entries)}/{len(tasks)} shards, {time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        executor.close()
    return manifest


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(LabelPairsConfig, argv, description=__doc__.splitlines()[0])
    try:
        manifest = run(cfg)
    except (ConfigError, OutputError, OSError, ValueError) as exc:
        print(f"rcan label-pairs: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    c = manifest["counts"]
    print(f"rcan label-pairs: {c['frames']} frames of {c['episodes']} scenes in {c['shards']} shard(s) at {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
