"""`rcan datagen`: paired randomized/canonical data for training the RCAN generator (paper 4.1).

Episodes are run with a grasping policy (the privileged scripted policy by default; any
``module:callable`` factory that returns ``policy(obs, env) -> action``).  At every step the
scene is frozen and rendered twice from the same state -- once with a fresh randomization,
once in the canonical look -- and the frame is recorded with its segmentation and depth,
the seeds that reproduce it, the gripper state, the action taken and the reward.

Determinism and resume: shard k holds episodes [k*E, min((k+1)*E, N)) and episode e is
reset with a seed derived only from (seed, e); step t of episode e is randomized with a seed
derived from (seed, e, t).  Shards are independent tasks, so ``--resume`` regenerates exactly
the missing shards and a resumed dataset equals an uninterrupted one.  ``--resume`` with a
larger ``--episodes`` appends to an existing dataset.  Storage details: rcan_sim.shards.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from rcan_common.config import ConfigError, parse_cli, require, to_dict
from rcan_common.executor import WorkerError, make_executor
from rcan_common.io import OutputError, ensure_writable_dir
from rcan_common import provenance
from rcan_sim import shards
from rcan_common.action import make_action
from rcan_sim.env import EnvConfig, GraspEnv
from rcan_sim.world import WorldConfig

DEFAULT_POLICY = "rcan_sim.scripted:ScriptedGraspPolicy"


class GenerationError(RuntimeError):
    """Generation stopped part-way (worker died, disk full); the message says what is intact."""

# Fields that only say how/where to run; they may differ between a run and its --resume.
EXECUTION_FIELDS = ("out", "workers", "ray", "resume", "episodes", "progress")


@dataclass
class DatagenConfig:
    """Generate paired randomized/canonical frames into sharded HDF5 files."""

    out: Path
    """Output directory (created; must be empty unless --resume)."""
    episodes: int = 100
    """Number of episodes to generate in total (with --resume, may grow to append)."""
    image_size: int = 64
    """Square image size in pixels (the paper's camera is 472)."""
    workers: int = 2
    """Parallel workers (processes, or Ray tasks with --ray); 1 runs in this process."""
    ray: bool = False
    """Run the shard tasks on Ray (a local instance, or the cluster at RAY_ADDRESS)."""
    resume: bool = False
    """Continue an interrupted (or extend a finished) dataset in --out with the same config."""
    seed: int = 0
    """Base seed; episode and randomization seeds are derived from it and the episode index."""
    episodes_per_shard: int = 10
    """Episodes per HDF5 shard (the unit of crash safety and of parallel work)."""
    max_steps: int = 20
    """Step limit per episode (paper: 20)."""
    split: Literal["train", "test"] = "train"
    """train: training objects and textures; test: held-out objects and held-out textures (evaluation).
    With --texture-folder, the held-out textures are only the folder's last --texture-held-out-fraction
    (default 10 %) of images by file name, and train uses only the rest."""
    policy: str = DEFAULT_POLICY
    """Policy factory as 'module:callable'; called once per worker task, returns policy(obs, env) -> action."""
    explore: float = 0.2
    """Probability that a step's action is replaced by a random move (diversifies arm poses)."""
    object_ids: tuple[int, ...] | None = None
    """Use exactly these random_urdfs object ids in every episode (default: 5 drawn from the split)."""
    texture_folder: Path | None = None
    """Folder of images to use as the texture bank instead of the procedural one.  The manifest and
    the dataset fingerprint record a sha256 of its images (names and bytes): --resume refuses a
    folder whose images changed."""
    texture_held_out_fraction: float = 0.1
    """With --texture-folder: the share of its images (the last ones by file name) held out for
    --split test and never used by --split train; 0 uses every image for both splits."""
    compression: Literal["gzip", "lzf", "none"] = "gzip"
    """HDF5 compression of each frame chunk."""
    compression_level: int = 4
    """gzip level 0-9 (ignored for lzf/none)."""
    progress: bool = True
    """Show a progress bar with samples/s on stderr."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        require(self.episodes >= 1, "episodes", f"must be >= 1, got {self.episodes}")
        require(16 <= self.image_size <= 1024, "image_size", f"must be in 16..1024, got {self.image_size}")
        require(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        require(0 <= self.seed < 2**32, "seed", f"must be in 0..2**32-1, got {self.seed}")
        require(self.episodes_per_shard >= 1, "episodes_per_shard", f"must be >= 1, got {self.episodes_per_shard}")
        require(1 <= self.max_steps <= 1000, "max_steps", f"must be in 1..1000, got {self.max_steps}")
        require(self.split in ("train", "test"), "split", f"must be 'train' or 'test', got {self.split!r}")
        require(":" in self.policy and all(self.policy.split(":", 1)), "policy",
                f"must be 'module:callable', got {self.policy!r}")
        require(0.0 <= self.explore <= 1.0, "explore", f"must be in [0, 1], got {self.explore}")
        require(0.0 <= self.texture_held_out_fraction <= 0.9, "texture_held_out_fraction",
                f"must be in [0, 0.9], got {self.texture_held_out_fraction}")
        require(self.object_ids is None or len(self.object_ids) >= 1, "object_ids", "must not be empty")
        require(self.compression in ("gzip", "lzf", "none"), "compression",
                f"must be gzip, lzf or none, got {self.compression!r}")
        require(0 <= self.compression_level <= 9, "compression_level", f"must be in 0..9, got {self.compression_level}")


# --------------------------------------------------------------------------- seeds


def episode_seed(base_seed: int, episode: int) -> int:
    """Seed for env.reset of `episode` (31 bits: pybullet and numpy both accept it)."""
    return int(np.random.SeedSequence([base_seed, episode]).generate_state(1)[0] & 0x7FFFFFFF)


def randomization_seed(base_seed: int, episode: int, step: int) -> int:
    """Seed for the randomized render of (episode, step); independent of the episode seed stream."""
    return int(np.random.SeedSequence([base_seed, episode, step, 1]).generate_state(1)[0] & 0x7FFFFFFF)


SEED_DERIVATION = {
    "episode_seed": "SeedSequence([seed, episode]).generate_state(1)[0] & 0x7fffffff",
    "randomization_seed": "SeedSequence([seed, episode, step, 1]).generate_state(1)[0] & 0x7fffffff",
}


# --------------------------------------------------------------------------- sim glue


def data_config(cfg: DatagenConfig) -> dict[str, Any]:
    """The fields that define the data (everything but execution settings).

    With a texture folder, its content digest (texture_folder_sha256, rcan_sim.textures.folder_digest)
    is part of the data: the fingerprint and the manifest change when its images do.  Without one,
    the texture fields are left out (the procedural bank's split is fixed), so datasets made before
    these fields existed keep their fingerprint."""
    out = {k: v for k, v in to_dict(cfg).items() if k not in EXECUTION_FIELDS}
    if cfg.texture_folder is None:
        out.pop("texture_held_out_fraction", None)
    elif Path(cfg.texture_folder).is_dir():  # a missing folder fails in check_sim_inputs, naming the field
        from rcan_sim.textures import folder_digest

        out["texture_folder_sha256"] = folder_digest(cfg.texture_folder)
    return out


def fingerprint(data_cfg: dict[str, Any]) -> str:
    """Digest of the data config; a texture folder counts by its contents (texture_folder_sha256), not its path."""
    if data_cfg.get("texture_folder_sha256"):
        data_cfg = {k: v for k, v in data_cfg.items() if k != "texture_folder"}
    return hashlib.sha256(json.dumps(data_cfg, sort_keys=True).encode()).hexdigest()[:16]


def env_config(data_cfg: dict[str, Any]) -> EnvConfig:
    """The EnvConfig of a data config (split picks the object split)."""
    folder = data_cfg["texture_folder"]
    world = WorldConfig(image_size=data_cfg["image_size"], split=data_cfg["split"],
                        texture_folder=Path(folder) if folder is not None else None,
                        texture_held_out_fraction=data_cfg.get("texture_held_out_fraction", 0.1))
    return EnvConfig(world=world, max_steps=data_cfg["max_steps"])


def source_domain(split: str) -> str:
    """Randomized domain of the source renders: the held-out textures/lights for the test split."""
    return "held-out" if split == "test" else "randomized"


class DatagenEnv(GraspEnv):
    """GraspEnv without its own observation render: datagen renders a pair at every step anyway
    and gives the policy the randomized render as obs["image"] (saves a third of the rendering)."""

    def _obs(self, render: bool = True) -> dict[str, Any]:
        return {"image": None, "gripper_open": 1.0 if self.world.gripper_is_open() else 0.0,
                "gripper_height": self.world.gripper_height()}


class RandomPolicy:
    """Uniform random moves and rotations (QT-Opt-style exploration); terminates on the last step only."""

    def __init__(self) -> None:
        self._rng = np.random.default_rng(0)

    def reset(self, seed: int) -> None:
        self._rng = np.random.default_rng([seed, 0x5A4D])

    def __call__(self, obs, env) -> np.ndarray:
        return random_move(self._rng, env.cfg.bounds.max_translation, env.cfg.bounds.max_rotation)


def random_move(rng: np.random.Generator, max_translation: float, max_rotation: float) -> np.ndarray:
    return make_action(rng.uniform(-max_translation, max_translation, 3), rng.uniform(-max_rotation, max_rotation))


def resolve_policy_factory(path: str) -> Callable[..., Any]:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"invalid config field 'policy': cannot import module {module_name!r}: {exc}") from exc
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ConfigError(f"invalid config field 'policy': {module_name!r} has no attribute {attr!r}")
    if not callable(factory):
        raise ConfigError(f"invalid config field 'policy': {path!r} is not callable")
    return factory


def run_episode(env, policy, data_cfg: dict[str, Any], episode: int) -> dict[str, np.ndarray]:
    """Run one episode, rendering a randomized/canonical pair of the frozen state before every action."""
    base_seed, max_steps, domain = data_cfg["seed"], data_cfg["max_steps"], source_domain(data_cfg["split"])
    ep_seed = episode_seed(base_seed, episode)
    obs, _ = env.reset(seed=ep_seed, object_ids=list(data_cfg["object_ids"]) if data_cfg["object_ids"] else None)
    if hasattr(policy, "reset"):
        policy.reset(ep_seed)
    explore_rng = np.random.default_rng([ep_seed, 0xE8])
    bounds = env.cfg.bounds
    cols: dict[str, list] = {k: [] for k in shards.frame_schema(1)}
    for step in range(max_steps):
        r_seed = randomization_seed(base_seed, episode, step)
        pair = env.world.render_pair(r_seed, domain=domain)
        obs = {**obs, "image": pair.randomized_rgb}
        if explore_rng.random() < data_cfg["explore"]:
            action = random_move(explore_rng, bounds.max_translation, bounds.max_rotation)
        else:
            action = np.asarray(policy(obs, env), dtype=np.float32)
        state = (float(obs["gripper_open"]), float(obs["gripper_height"]))
        obs, reward, terminated, truncated, _ = env.step(action)
        done = bool(terminated or truncated) or step == max_steps - 1
        for k, v in (("randomized", pair.randomized_rgb), ("canonical", pair.canonical_rgb),
                     ("segmentation", pair.segmentation), ("depth", pair.depth), ("episode", episode),
                     ("step", step), ("episode_seed", ep_seed), ("randomization_seed", r_seed),
                     ("state", state), ("action", action), ("reward", reward), ("terminal", done)):
            cols[k].append(v)
        if done:
            break
    return {k: np.asarray(v) for k, v in cols.items()}


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: generate shard `index` (episodes [start, stop)) into `root`."""

    index: int
    start: int
    stop: int
    root: str
    data_cfg_json: str  # data_config() as JSON: picklable for both process pools and Ray
    fp: str

    def __repr__(self) -> str:
        return f"shard {self.index} (episodes {self.start}..{self.stop - 1})"


# One env per worker process, reused across its shard tasks: building the scene and loading
# textures into pybullet costs more than a short episode, and reset(seed) alone determines an
# episode (tests check a reused env reproduces a fresh one bit for bit).
_worker_env: tuple[str, DatagenEnv] | None = None


def _env_for(data_cfg: dict[str, Any]) -> DatagenEnv:
    global _worker_env
    key = json.dumps(to_dict(env_config(data_cfg)), sort_keys=True)
    if _worker_env is None or _worker_env[0] != key:
        if _worker_env is not None:
            _worker_env[1].close()
        _worker_env = (key, DatagenEnv(env_config(data_cfg)))
    return _worker_env[1]


def _check_texture_folder(data_cfg: dict[str, Any], root: Path | None = None) -> None:
    """Refuse a texture folder whose images differ from the ones the dataset records."""
    folder = data_cfg.get("texture_folder")
    if folder is None:
        return
    from rcan_sim.textures import folder_digest

    recorded = data_cfg.get("texture_folder_sha256")
    now = folder_digest(folder) if Path(folder).is_dir() else "missing"
    if recorded != now:
        where = f"the dataset in {root}" if root is not None else "this dataset"
        raise ConfigError(
            f"texture folder {folder} does not hold the images {where} was generated with (content sha256 "
            f"{recorded or 'not recorded'} then, {now} now); restore those images, or generate into a new --out")


def generate_shard(task: ShardTask) -> dict[str, Any]:
    """Worker entry point (local process or Ray task): write one shard, return its ShardInfo json."""
    cfg = json.loads(task.data_cfg_json)
    _check_texture_folder(cfg)
    env = _env_for(cfg)
    policy = resolve_policy_factory(cfg["policy"])()
    with shards.ShardWriter(task.root, task.index, task.start, task.stop, cfg["image_size"], task.fp,
                            cfg["compression"], cfg["compression_level"]) as writer:
        for episode in range(task.start, task.stop):
            frames = run_episode(env, policy, cfg, episode)
            writer.append_episode(frames, object_ids=env.world.object_ids)
        info = writer.commit()
    return info.to_json()


# --------------------------------------------------------------------------- manifest and planning


def package_versions() -> dict[str, str]:
    """What the manifest records of the software that generated the data."""
    return {**provenance.package_versions(("numpy", "pybullet", "torch", "h5py", "rcan_bringup")),
            "rcan_git": provenance.git_commit()}


def plan_shards(episodes: int, per_shard: int) -> list[tuple[int, int, int]]:
    """(index, start, stop) for every shard of a dataset of `episodes` episodes."""
    return [(k, s, min(s + per_shard, episodes)) for k, s in enumerate(range(0, episodes, per_shard))]


def new_manifest(cfg: DatagenConfig, data_cfg: dict[str, Any], fp: str) -> dict[str, Any]:
    return {
        "format": shards.FORMAT, "format_version": shards.FORMAT_VERSION,
        "config": data_cfg, "fingerprint": fp,
        "seeds": {"seed": cfg.seed, **SEED_DERIVATION},
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "episodes_requested": cfg.episodes, "shards": [], "complete": False,
        "counts": {"episodes": 0, "frames": 0, "shards": 0},
    }


def _set_shards(manifest: dict[str, Any], entries: dict[int, dict[str, Any]], planned: int) -> None:
    manifest["shards"] = [entries[k] for k in sorted(entries)]
    manifest["counts"] = {
        "episodes": sum(e["episode_stop"] - e["episode_start"] for e in entries.values()),
        "frames": sum(e["num_frames"] for e in entries.values()),
        "shards": len(entries),
        "frames_per_shard": {e["file"]: e["num_frames"] for e in manifest["shards"]},
    }
    manifest["complete"] = len(entries) == planned


def _entry(info: dict[str, Any], base_seed: int) -> dict[str, Any]:
    seeds = [episode_seed(base_seed, e) for e in range(info["episode_start"], info["episode_stop"])]
    return {**info, "episode_seeds": seeds}


def prepare_output(cfg: DatagenConfig, data_cfg: dict[str, Any], fp: str,
                   plan: list[tuple[int, int, int]]) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Check --out against --resume and return (manifest, completed shard entries by index)."""
    root = cfg.out
    manifest_path = root / shards.MANIFEST
    if not manifest_path.exists():
        leftovers = [p.name for p in root.iterdir() if p.name != LOCK_NAME]
        if leftovers:
            raise OutputError(f"output directory {root} is not empty and holds no {shards.MANIFEST} "
                              f"({', '.join(sorted(leftovers)[:5])}...); choose an empty or new directory")
        return new_manifest(cfg, data_cfg, fp), {}
    if not cfg.resume:
        raise OutputError(f"output directory {root} already holds a dataset; pass --resume to continue or "
                          f"extend it with the same config, or choose another --out")
    manifest = shards.load_manifest(root)
    old = manifest["config"]
    same_folder_contents = False
    if old.get("texture_folder") is not None and data_cfg.get("texture_folder") is not None:
        # A texture folder is compared by its images, not its path (it may have moved).
        _check_texture_folder({**data_cfg, "texture_folder_sha256": old.get("texture_folder_sha256")}, root)
        same_folder_contents = True
    diffs = [f"{k}: dataset has {old.get(k)!r}, requested {data_cfg.get(k)!r}"
             for k in sorted(set(old) | set(data_cfg))
             if old.get(k) != data_cfg.get(k) and not (same_folder_contents and k == "texture_folder")]
    if diffs:
        raise ConfigError(f"--resume with a different config than the dataset in {root}: " + "; ".join(diffs))
    done_episodes = max((s["episode_stop"] for s in manifest["shards"]), default=0)
    if cfg.episodes < done_episodes:
        raise ConfigError(f"invalid config field 'episodes': {cfg.episodes} is fewer than the {done_episodes} "
                          f"episodes already in {root}; a dataset can grow but not shrink")
    ranges = {k: (s, e) for k, s, e in plan}
    entries: dict[int, dict[str, Any]] = {}
    for entry in manifest["shards"]:
        # Keep a shard if its range still matches the plan (a trailing partial shard may have grown).
        if ranges.get(entry["index"]) == (entry["episode_start"], entry["episode_stop"]) and \
                (root / entry["file"]).is_file():
            entries[entry["index"]] = entry
    for stale in root.glob(".shard-*.tmp"):
        stale.unlink()  # a worker killed mid-shard
    for path in root.glob("shard-*.h5"):
        # A shard renamed into place just before a kill, before the manifest caught up: adopt it.
        try:
            info = shards.read_shard_info(path)
        except (OSError, ValueError):
            continue
        if info.index not in entries and ranges.get(info.index) == (info.episode_start, info.episode_stop) \
                and shards.shard_fingerprint(path) == fp:
            entries[info.index] = _entry(info.to_json(), cfg.seed)
    manifest["episodes_requested"] = cfg.episodes
    return manifest, entries


def check_sim_inputs(data_cfg: dict[str, Any]) -> None:
    """Fail before spawning workers on a bad policy path, object id or texture folder."""
    from rcan_sim import objects
    from rcan_sim.textures import TextureBank

    resolve_policy_factory(data_cfg["policy"])
    world = env_config(data_cfg).world  # validates texture_folder (ConfigError naming the field)
    if world.texture_folder is not None:
        TextureBank(world.texture_size, world.texture_folder)  # an empty or unreadable folder fails here
    for i in data_cfg["object_ids"] or ():
        objects.urdf_path(i)


# --------------------------------------------------------------------------- main


def run(cfg: DatagenConfig) -> dict[str, Any]:
    """Generate (or finish) the dataset described by `cfg`; returns the final manifest."""
    ensure_writable_dir(cfg.out)
    data_cfg = data_config(cfg)
    fp = fingerprint(data_cfg)
    check_sim_inputs(data_cfg)
    with _exclusive(cfg.out):
        return _generate(cfg, data_cfg, fp)


LOCK_NAME = ".datagen.lock"


@contextlib.contextmanager
def _exclusive(root: Path):
    """Hold an advisory lock on `root` so two datagen runs never write one dataset (released on kill)."""
    import fcntl

    with open(root / LOCK_NAME, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another rcan datagen is writing to {root}; wait for it or choose another --out") \
                from None
        yield


def _generate(cfg: DatagenConfig, data_cfg: dict[str, Any], fp: str) -> dict[str, Any]:
    plan = plan_shards(cfg.episodes, cfg.episodes_per_shard)
    manifest, entries = prepare_output(cfg, data_cfg, fp, plan)
    _set_shards(manifest, entries, len(plan))
    shards.write_manifest(cfg.out, manifest)

    cfg_json = json.dumps(data_cfg, sort_keys=True)
    tasks = [ShardTask(k, s, e, str(cfg.out), cfg_json, fp) for k, s, e in plan if k not in entries]
    if not tasks:
        return manifest
    from tqdm import tqdm

    done_eps = manifest["counts"]["episodes"]
    bar = tqdm(total=cfg.episodes, initial=done_eps, unit="ep", disable=not cfg.progress, file=sys.stderr,
               dynamic_ncols=True, desc="datagen")
    executor = make_executor(min(cfg.workers, len(tasks)), cfg.ray)
    t0, frames = time.perf_counter(), 0
    try:
        for task, info in executor.map_unordered(generate_shard, tasks):
            entries[task.index] = _entry(info, cfg.seed)
            _set_shards(manifest, entries, len(plan))
            shards.write_manifest(cfg.out, manifest)
            frames += info["num_frames"]
            bar.update(task.stop - task.start)
            bar.set_postfix(samples_per_s=f"{frames / (time.perf_counter() - t0):.1f}")
    except (WorkerError, OSError, KeyboardInterrupt) as exc:
        c = manifest["counts"]
        state = (f"{cfg.out / shards.MANIFEST} is intact: {c['shards']} complete shard(s), {c['episodes']} of "
                 f"{cfg.episodes} episodes; rerun with --resume to continue")
        if isinstance(exc, KeyboardInterrupt):
            raise KeyboardInterrupt(state) from exc
        cause = exc.__cause__ if isinstance(exc, WorkerError) else exc
        what = "disk full" if shards.is_disk_full(exc) or (cause is not None and shards.is_disk_full(cause)) \
            else "generation failed"
        raise GenerationError(f"{what}: {exc}\n{state}") from exc
    finally:
        bar.close()
        executor.close()
    return manifest


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(DatagenConfig, argv, description=__doc__.splitlines()[0])
    t0 = time.perf_counter()
    try:
        manifest = run(cfg)
    except KeyboardInterrupt as exc:
        print(f"rcan datagen: interrupted: {exc}", file=sys.stderr)
        return 130
    except ConfigError as exc:
        print(f"rcan datagen: error: {exc}", file=sys.stderr)
        return 2
    except (GenerationError, OSError, ValueError) as exc:  # ValueError: the sim's unknown object/texture errors
        print(f"rcan datagen: error: {exc}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    c = manifest["counts"]
    print(f"rcan datagen: {c['episodes']} episodes, {c['frames']} frames in {c['shards']} shard(s) at "
          f"{cfg.out} ({dt:.1f} s this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
