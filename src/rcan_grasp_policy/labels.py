"""`rcan label-states`: counterfactual action labels from simulator resets (sim-only; NOT in the paper).

The deployed policy stays the paper's Q-network with CEM.  This is a way of *collecting* its
training data that only a simulator allows:

    for each visited state s of a behaviour episode (scripted, with exploration and an aim offset):
        snapshot the complete sim state (pybullet state + motor targets + TCP target, yaw, step count)
        for each of K candidate actions a_k (the behaviour action, draws from CEM's own initial
        sampling distribution, a jittered close and a jittered terminate):
            restore s, execute a_k (no rendering)
            terminal a_k:      label = its exact outcome (1 grasp / 0 miss)
            non-terminal a_k:  the scripted policy finishes the episode without rendering;
                               label = the discounted return, clipped to [0, 1]
        restore s, continue the behaviour episode

A label is thus a Monte-Carlo estimate of Q(s, a_k) under "a_k, then the scripted policy": a
lower bound of Q*(s, a_k) that contrasts K actions in the *same* state, which the plain episode
data (one action per state, mostly straight down) never does.

Storage is a dataset of scene states, not only pixels: every record keeps the object ids and
poses, the joint angles, the gripper and the episode's seed and step (enough to re-render the
state in any domain or size, `render_record`), plus the image in the labelling domain for
convenience.  Shards are written atomically, one per task (`labels-NNNNN.npz`), beside a
manifest; `--resume` skips the shards already there, so a killed run continues where it stopped.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rcan_common.action import CLOSE, OPEN, TERMINATE, YAW_STATE_DIM, make_action
from rcan_common.config import ConfigError, parse_cli, require, to_dict
from rcan_common.executor import make_executor
from rcan_common.io import atomic_write_bytes, atomic_write_json, ensure_writable_dir
from rcan_common.provenance import file_sha256
from rcan_grasp_policy.inputs import ORACLE

FORMAT = "rcan-action-labels"
FORMAT_VERSION = 1
SEED_BASE = {"train": 2_000_000, "test": 3_000_000}
"""Scene seeds per object split; far from the evaluation protocol's seeds 0..101 and selection seeds 1000+."""
COMPLETIONS = ("scripted", "descend")


@dataclass
class LabelConfig:
    """Counterfactual labelling of visited states with K candidate actions each."""

    out_dir: Path = Path("data/labels/canonical-64")
    """Directory of the label shards and manifest.json."""
    scenes: int = 1000
    """Behaviour episodes (each a fresh scene)."""
    scenes_per_task: int = 20
    """Episodes per worker task = per shard."""
    split: str = "train"
    """Object split: 'train' for learning, 'test' for held-out evaluation states."""
    domain: str = "canonical"
    """Sim domain of the stored images (records can be re-rendered in any domain)."""
    image_size: int = 64
    """Size of the stored images (pixels)."""
    candidates: int = 6
    """Candidate actions per state: the behaviour action, a jittered close, a jittered terminate, the rest
    drawn from CEM's initial sampling distribution."""
    label_prob: float = 0.6
    """Probability that a visited state is labelled (the rest are only passed through)."""
    behaviour: str = "scripted"
    """Policy whose episodes visit the labelled states: 'scripted', or a policy (.safetensors / .onnx / run
    directory) run greedily through CEM on its own inputs (an rcan policy: the randomized render and its
    generator's G of it) (DAgger-style: the data follows the policy)."""
    behaviour_epsilon: float = 0.3
    """Probability of a uniformly random behaviour action (spreads the visited states)."""
    behaviour_close_threshold: float = 0.0
    """The close gate of a learned behaviour's CEM (CEMConfig.close_threshold, NOT in the paper; 0: off), e.g. the
    value its card names, so the states are the ones the policy visits as it is deployed."""
    behaviour_hold_check_threshold: float = 0.0
    """The hold check of a learned behaviour's CEM (CEMConfig.hold_check_threshold, NOT in the paper; 0: off), e.g.
    the value its card names: the behaviour lifts before it terminates and reopens what it judges empty, so the
    lifted closed states it is judged on are visited (and, with `regrasp`, all labelled)."""
    behaviour_close_gate_last_steps: int = 0
    """The ungated last steps of a learned behaviour's CEM (CEMConfig.close_gate_last_steps, NOT in the paper; 0:
    off), e.g. the value its card names: its close gate stands down in the episode's last N steps."""
    aim_offset: float = 0.03
    """Behaviour policy aims up to this far (m) from the object's centre (near-miss states)."""
    jitter_translation: float = 0.01
    """Largest |dx|, |dy|, |dz| (m) of the motion that comes with a close / terminate candidate."""
    jitter_rotation: float = 0.1
    """Largest |dtheta| (rad) of the motion that comes with a close / terminate candidate."""
    aimed_candidates: int = 0
    """NOT in the paper (0 = off; a privileged proposal, labelling only): this many of the K candidates are
    moves towards a random object's grasp point (its hull centre and grasp yaw) with Gaussian noise
    `aimed_noise` / `aimed_yaw_noise`, instead of CEM draws.  The labels stay the true outcomes; the proposal
    puts more of them where a blind descent can grasp, so the data contrasts landing on an object with just
    missing it (CEM's uniform draws land on one in about 7 % of moves)."""
    aimed_noise: float = 0.015
    """Standard deviation (m) of the aimed candidates' dx, dy around the grasp point."""
    aimed_yaw_noise: float = 0.3
    """Standard deviation (rad) of the aimed candidates' yaw around the grasp yaw."""
    regrasp: bool = False
    """NOT in the paper (off: its data): label regrasps.  Every state with the gripper closed is labelled
    (`label_prob` applies to the others), and there the aimed candidates open the gripper after their move,
    so the blind completion closes it again on the object they aim at: the data then says what reopening
    after a failed close is worth, and the policy can learn the paper's regrasping (section 5.3).  Without
    it a closed state's aimed moves keep the fingers shut and are labelled like a terminate.  Before the
    first lift of an episode, one CEM draw of a closed state is replaced by a lift of REGRASP_LIFT, labelled
    by one step of lookahead (`lift_check_label`), and the behaviour lifts instead of terminating there
    half of the time, so that lifted states, where the image shows whether the object came along, are
    labelled too."""
    completion: str = "scripted"
    """Who finishes the episode after a non-terminal candidate: 'scripted' (the privileged scripted policy,
    which corrects any move, so moves are labelled almost alike) or 'descend' (straight down, close,
    terminate: the label of a move says whether it put the fingers above something graspable)."""
    teacher: str = ""
    """NOT in the paper (empty = off; sim-only, labelling only): label every candidate with this canonical
    policy's Q on the state's canonical render instead of executing it (privileged distillation).  The student
    trained on such labels sees whatever its variant sees (rcan: the randomized render and G of it), so it learns
    to rank actions as the canonical network does from images it never gets.  One of the K candidates is then
    the teacher's own CEM pick, so the labels show where its maximum is.  Needs --domain canonical and the
    teacher's image size; `completion` is unused."""
    gamma: float = 0.9
    """Discount of the completion return (the learner's gamma)."""
    max_steps: int = 20
    seed: int = 0
    """Seed of the scene seeds and the candidate draws."""
    workers: int = 1
    """Worker processes (1: in this process)."""
    ray: bool = False
    """Run tasks as Ray tasks (or set RAY_ADDRESS)."""
    resume: bool = False
    """Keep the shards already in out_dir and label only the missing ones."""

    def __post_init__(self) -> None:
        require(self.scenes >= 1, "scenes", f"must be >= 1, got {self.scenes}")
        require(self.scenes_per_task >= 1, "scenes_per_task", f"must be >= 1, got {self.scenes_per_task}")
        require(self.split in SEED_BASE, "split", f"must be one of {sorted(SEED_BASE)}, got {self.split!r}")
        fixed = 3 + bool(self.teacher)
        require(self.candidates >= fixed, "candidates", f"must be >= {fixed} (behaviour, close, terminate"
                + (", the teacher's pick" if self.teacher else "") + f"), got {self.candidates}")
        require(0 <= self.aimed_candidates <= self.candidates - fixed, "aimed_candidates",
                f"must be in 0..{self.candidates - fixed} (candidates - {fixed}), got {self.aimed_candidates}")
        require(not self.teacher or self.domain == "canonical", "domain",
                f"must be canonical with a teacher (it reads the canonical render), got {self.domain!r}")
        require(self.aimed_noise >= 0 and self.aimed_yaw_noise >= 0, "aimed_noise", "must be >= 0")
        require(0.0 < self.label_prob <= 1.0, "label_prob", f"must be in (0, 1], got {self.label_prob}")
        require(0.0 <= self.behaviour_epsilon <= 1.0, "behaviour_epsilon", "must be in [0, 1]")
        require(0.0 <= self.behaviour_close_threshold <= 1.0, "behaviour_close_threshold", "must be in [0, 1]")
        require(self.behaviour_close_threshold == 0 or self.behaviour != "scripted", "behaviour_close_threshold",
                "is a learned behaviour's CEM setting; the scripted behaviour has none")
        require(0.0 <= self.behaviour_hold_check_threshold <= 1.0, "behaviour_hold_check_threshold",
                "must be in [0, 1]")
        require(self.behaviour_hold_check_threshold == 0 or self.behaviour != "scripted",
                "behaviour_hold_check_threshold", "is a learned behaviour's CEM setting; the scripted behaviour has none")
        require(self.behaviour_close_gate_last_steps >= 0, "behaviour_close_gate_last_steps", "must be >= 0")
        require(self.behaviour_close_gate_last_steps == 0 or self.behaviour != "scripted",
                "behaviour_close_gate_last_steps", "is a learned behaviour's CEM setting; the scripted behaviour has none")
        require(self.aim_offset >= 0, "aim_offset", "must be >= 0")
        require(self.jitter_translation >= 0 and self.jitter_rotation >= 0, "jitter_translation", "must be >= 0")
        require(self.completion in COMPLETIONS, "completion",
                f"must be one of {COMPLETIONS}, got {self.completion!r}")
        require(0.0 <= self.gamma < 1.0, "gamma", f"must be in [0, 1), got {self.gamma}")
        require(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")

    def task_scenes(self, task: int) -> range:
        start = task * self.scenes_per_task
        return range(start, min(self.scenes, start + self.scenes_per_task))

    @property
    def tasks(self) -> int:
        return math.ceil(self.scenes / self.scenes_per_task)

    def behaviour_cem(self):
        """The learned behaviour's CEMConfig: the paper's search with the acting options given here."""
        from rcan_grasp_policy.cem import CEMConfig

        return CEMConfig(close_threshold=self.behaviour_close_threshold,
                         hold_check_threshold=self.behaviour_hold_check_threshold,
                         close_gate_last_steps=self.behaviour_close_gate_last_steps)


def shard_path(out_dir: Path, task: int) -> Path:
    return Path(out_dir) / f"labels-{task:05d}.npz"


# --------------------------------------------------------------------------- labelling one state
def completion_return(env, policy, gamma: float) -> float:
    """Run `policy` from the env's current state to the end of the episode without rendering;
    the discounted return from here."""
    ret, discount, done = 0.0, 1.0, env.done
    while not done:
        _, reward, terminated, truncated, _ = env.step(policy(None, env), render=False)
        ret += discount * reward
        discount *= gamma
        done = terminated or truncated
    return ret


def label_actions(env, candidates: np.ndarray, completion, gamma: float) -> np.ndarray:
    """Label of each candidate (K, 8) at the env's current state: restore, execute, finish with `completion`;
    the discounted return clipped to [0, 1].  The env is left in the state it was in."""
    snap = env.snapshot()
    labels = np.zeros(len(candidates), dtype=np.float32)
    try:
        for k, action in enumerate(candidates):
            env.restore(snap)
            _, reward, terminated, truncated, _ = env.step(action, render=False)
            ret = reward
            if not (terminated or truncated):
                ret += gamma * completion_return(env, completion, gamma)
            labels[k] = np.clip(ret, 0.0, 1.0)
        env.restore(snap)
    finally:
        env.release(snap)
    return labels


REGRASP_LIFT = 0.05
"""How far (m) the regrasp check lifts the closed gripper (LabelConfig.regrasp)."""


def lift_check_label(env, propose, completion, gamma: float) -> float:
    """Label of lifting the closed gripper by REGRASP_LIFT at the env's current state: the step's reward plus
    the discounted best label of the candidates `propose(env)` gives at the lifted state (one step of
    lookahead: terminate there, or reopen and grasp again).  A blind completion would terminate right
    after the lift, so the lift would always look worse than terminating at once.  The env is left as it was."""
    snap = env.snapshot()
    try:
        _, value, terminated, truncated, _ = env.step(make_action([0.0, 0.0, REGRASP_LIFT]), render=False)
        if not (terminated or truncated):
            value += gamma * float(label_actions(env, propose(env), completion, gamma).max())
        env.restore(snap)
    finally:
        env.release(snap)
    return float(np.clip(value, 0.0, 1.0))


def jittered(gripper: str | None, terminate: bool, rng: np.random.Generator, translation: float,
             rotation: float) -> np.ndarray:
    """A close / terminate action with a small uniform motion (so labelled data covers what CEM samples)."""
    from rcan_common.action import make_action

    return make_action(rng.uniform(-translation, translation, 3), float(rng.uniform(-rotation, rotation)),
                       gripper, terminate)


def candidate_actions(behaviour: np.ndarray, k: int, bounds, rng: np.random.Generator, cfg: LabelConfig) -> np.ndarray:
    """K candidates: the behaviour action, a jittered close, a jittered terminate, then draws from CEM's
    initial distribution (the actions CEM's first iteration scores)."""
    from rcan_grasp_policy.cem import CEMConfig, SearchDistribution, build_actions, sample

    fixed = [behaviour, jittered("close", False, rng, cfg.jitter_translation, cfg.jitter_rotation),
             jittered(None, True, rng, cfg.jitter_translation, cfg.jitter_rotation)]
    n = k - len(fixed)
    if n <= 0:
        return np.stack(fixed[:k]).astype(np.float32)
    cont, grip, term = sample(SearchDistribution.initial(1, CEMConfig(), bounds), n, bounds, rng)
    return np.concatenate([np.stack(fixed), build_actions(cont, grip, term)[0]]).astype(np.float32)


def aimed_actions(env, n: int, rng: np.random.Generator, noise: float, yaw_noise: float) -> np.ndarray:
    """n pure moves (no close, no terminate) towards random objects' grasp points, with Gaussian noise on the
    translation and the yaw, clipped to the step bounds (a far object gives a full step towards it)."""
    from rcan_common.action import make_action
    from rcan_sim.scripted import grasp_yaw, object_centre_xy

    state = env.world.scene_state()
    t, r = env.cfg.bounds.max_translation, env.cfg.bounds.max_rotation
    out = []
    for _ in range(n):
        i = int(rng.integers(len(state["object_ids"])))
        oid, pose = int(state["object_ids"][i]), state["object_poses"][i]
        dxy = object_centre_xy(oid, pose[:3], pose[3:]) - env.tcp_target[:2] + rng.normal(0.0, noise, 2)
        dyaw = math.remainder(grasp_yaw(oid, pose[3:])[0] - env.yaw + rng.normal(0.0, yaw_noise), math.pi)
        move = np.clip([dxy[0], dxy[1], rng.uniform(-t, t)], -t, t)
        out.append(make_action(move, float(np.clip(dyaw, -r, r))))
    return np.asarray(out, dtype=np.float32).reshape(n, -1)


class LabelOracle:
    """Greedy on the true labels (privileged; `rcan eval-policy --policy label-oracle`): at every step, label
    straight down, close, terminate and `draws` draws from CEM's initial distribution (candidate_actions with
    no jitter) by executing them from the current state with the blind descend completion, and take the best.
    What a Q-function that had learned the descend labels perfectly would do under CEM-like sampling: the
    ceiling of that design."""

    def __init__(self, rng: np.random.Generator, draws: int = 32, gamma: float = 0.9):
        from rcan_sim.scripted import DescendGraspPolicy

        self.rng, self.draws, self.gamma, self.completion = rng, draws, gamma, DescendGraspPolicy()
        self.exact = LabelConfig(jitter_translation=0.0, jitter_rotation=0.0)  # close / terminate without motion

    def __call__(self, obs, env) -> np.ndarray:
        from rcan_common.action import make_action

        bounds = env.cfg.bounds
        down = make_action([0.0, 0.0, -bounds.max_translation])
        cands = candidate_actions(down, 3 + self.draws, bounds, self.rng, self.exact)
        return cands[int(np.argmax(label_actions(env, cands, self.completion, self.gamma)))]


# --------------------------------------------------------------------------- one task = one shard
def labelling_env(cfg: LabelConfig):
    """A new env for one task.  A world reused across tasks carries pybullet's history from one task to the next,
    which moves objects by up to a centimetre, so a set would depend on which worker ran which task; in a
    new world per task (about 0.5 s against a shard's minute or more) it does not."""
    from rcan_sim.env import EnvConfig, GraspEnv
    from rcan_sim.world import WorldConfig

    return GraspEnv(EnvConfig(world=WorldConfig(image_size=cfg.image_size, split=cfg.split), domain=cfg.domain,
                              max_steps=cfg.max_steps))


def _behaviour_policy(path: str, env, cem):
    """A learned policy as `policy(obs, env) -> action`: greedy CEM on its Q-function, fed what it was trained
    on.  A policy of another domain than the labelling env's (rcan: the randomized domain, through the
    generator named in its metadata) or of a narrower view sees its own render of the same state, as
    `rcan eval-policy` gives it; the stored images stay the labelling domain's."""
    from rcan_grasp_policy.backends import load_qfunction
    from rcan_grasp_policy.cem import CEMPolicy
    from rcan_grasp_policy.inputs import InputEncoder, state_vector, training_domain

    qf, meta = load_qfunction(path, threads=1)
    variant, generator = meta.get("variant"), meta.get("generator")
    if variant == "rcan" and not (generator and Path(generator).is_file()):
        raise ConfigError(f"behaviour policy {path} is an rcan policy and needs its generator; "
                          f"its metadata names {generator!r}, which is not a file")
    size, env_size = qf.contract.image_size, env.cfg.world.image_size
    if size != env_size:  # an image resized to the policy's size is not the render it was trained on
        raise ConfigError(f"behaviour policy {path} takes {size} px images and the labelling env renders "
                          f"{env_size} px; label with --image-size {size}")
    policy = CEMPolicy(qf, cem, seed=0)
    domain, fov = training_domain(variant), qf.contract.view_fov_deg()
    yaw_state = qf.state_dim == YAW_STATE_DIM
    if domain == env.cfg.domain and not fov:
        return lambda obs, env: policy.act(obs["image"][None], state_vector(obs, yaw_state)[None],
                                           steps_left=env.steps_left)[0][0]
    encoder = InputEncoder(variant, generator)
    view = {"fov_deg": fov} if fov else {}

    def act(obs, env):
        image = env.world.render(domain, randomization_seed=env.steps, labels=False, **view).rgb
        return policy.act(encoder({"image": image})[None], state_vector(obs, yaw_state)[None],
                          steps_left=env.steps_left)[0][0]
    return act


class TeacherLabeller:
    """Labels from a canonical policy's Q (LabelConfig.teacher), on the env's canonical observation."""

    def __init__(self, path: str, env):
        from rcan_grasp_policy.backends import load_qfunction

        self.qf, meta = load_qfunction(path, threads=1)
        size, fov = self.qf.contract.image_size, self.qf.contract.view_fov_deg()
        if meta.get("variant") != "canonical" or fov:
            raise ConfigError(f"teacher {path} must be a canonical policy of the full camera view, got a "
                              f"{meta.get('variant')!r} policy" + (f" of a {fov:g} deg view" if fov else ""))
        if size != env.cfg.world.image_size:
            raise ConfigError(f"teacher {path} takes {size} px images and the labelling env renders "
                              f"{env.cfg.world.image_size} px; label with --image-size {size}")
        self.bounds = env.cfg.bounds

    def __call__(self, obs, candidates: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The candidates with the teacher's greedy CEM pick appended, and the teacher's Q of each."""
        from rcan_grasp_policy.cem import CEMConfig, cem_search
        from rcan_grasp_policy.inputs import state_vector

        context = self.qf.embed(obs["image"][None], state_vector(obs, self.qf.state_dim == YAW_STATE_DIM)[None])
        pick, _ = cem_search(self.qf, context, 1, rng, CEMConfig(), self.bounds)
        candidates = np.concatenate([candidates, pick]).astype(np.float32)
        return candidates, np.asarray(self.qf.score(context, candidates[None])[0], np.float32)


def _regrasp_proposals(env, cfg: LabelConfig, rng: np.random.Generator) -> np.ndarray:
    """What the lift check looks ahead to: terminate, or reopen onto an aimed grasp point."""
    aimed = aimed_actions(env, max(cfg.aimed_candidates, 4), rng, cfg.aimed_noise, cfg.aimed_yaw_noise)
    aimed[:, OPEN] = 1.0
    return np.concatenate([make_action(terminate=True)[None], aimed])


def label_task(args: tuple[LabelConfig, int], env=None) -> dict[str, Any]:
    """Run the task's behaviour episodes, label their states, write the shard; returns its summary.  The task runs
    in a new `labelling_env` unless given `env` (the benchmark's, built before it times the labelling)."""
    cfg, task = args
    if env is not None:
        return _label_task(cfg, task, env)
    env = labelling_env(cfg)
    try:
        return _label_task(cfg, task, env)
    finally:
        env.close()


def _label_task(cfg: LabelConfig, task: int, env) -> dict[str, Any]:
    from rcan_grasp_policy.cem import random_actions
    from rcan_sim.scripted import DescendGraspPolicy, ScriptedGraspPolicy

    t0 = time.perf_counter()
    completion = ScriptedGraspPolicy() if cfg.completion == "scripted" else DescendGraspPolicy()
    learned = (None if cfg.behaviour == "scripted"
               else _behaviour_policy(cfg.behaviour, env, cfg.behaviour_cem()))
    teacher = TeacherLabeller(cfg.teacher, env) if cfg.teacher else None
    drawn = cfg.candidates - cfg.aimed_candidates - bool(teacher)  # behaviour, close, terminate and CEM draws
    rows: dict[str, list] = {f: [] for f in ("seed", "step", "object_ids", "object_poses", "joints", "gripper_open",
                                             "target", "yaw", "state", "image", "candidates", "labels")}
    successes = 0
    for scene in cfg.task_scenes(task):
        seed = SEED_BASE[cfg.split] + cfg.seed * 100_000_000 + scene
        rng = np.random.default_rng([cfg.seed, scene, 0x1ABE])
        behaviour = ScriptedGraspPolicy(aim_offset=cfg.aim_offset) if learned is None else learned
        obs, _ = env.reset(seed)
        done, lifted = False, False
        while not done:
            if rng.random() < cfg.behaviour_epsilon:
                action = random_actions(1, env.cfg.bounds, rng, 0.05)[0]
            else:
                action = behaviour(obs, env)
            closed = not obs["gripper_open"]
            check = cfg.regrasp and closed and not lifted  # a lift can still show whether the grasp holds
            if check and action[TERMINATE] > 0.5 and rng.random() < 0.5:
                action, lifted = make_action([0.0, 0.0, REGRASP_LIFT]), True
            if (cfg.regrasp and closed) or rng.random() < cfg.label_prob:
                cands = candidate_actions(np.asarray(action, np.float32), drawn, env.cfg.bounds, rng, cfg)
                if check and drawn > 3:
                    cands[drawn - 1] = make_action([0.0, 0.0, REGRASP_LIFT])
                if cfg.aimed_candidates:
                    aimed = aimed_actions(env, cfg.aimed_candidates, rng, cfg.aimed_noise, cfg.aimed_yaw_noise)
                    if cfg.regrasp and closed:
                        aimed[:, OPEN] = 1.0
                    cands = np.concatenate([cands, aimed])
                if teacher is None:
                    labels = label_actions(env, cands, completion, cfg.gamma)
                    if check and drawn > 3:
                        labels[drawn - 1] = lift_check_label(env, partial(_regrasp_proposals, cfg=cfg, rng=rng),
                                                             completion, cfg.gamma)
                else:
                    cands, labels = teacher(obs, cands, rng)
                s = env.world.scene_state()
                for f, v in (("seed", seed), ("step", env.steps), ("object_ids", s["object_ids"]),
                             ("object_poses", s["object_poses"]), ("joints", s["joints"]),
                             ("gripper_open", s["gripper_open"]), ("target", env.tcp_target), ("yaw", env.yaw),
                             ("state", [obs["gripper_open"], obs["gripper_height"]]), ("image", obs["image"]),
                             ("candidates", cands), ("labels", labels)):
                    rows[f].append(v)
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        successes += bool(info["success"])
    dtypes = {"seed": np.int64, "step": np.int32, "object_ids": np.int32, "object_poses": np.float64,
              "joints": np.float64, "gripper_open": bool, "target": np.float64, "yaw": np.float64,
              "state": np.float32, "image": np.uint8, "candidates": np.float32, "labels": np.float32}
    arrays = {f: np.asarray(v, dtype=dtypes[f]) for f, v in rows.items()}
    atomic_write_bytes(shard_path(cfg.out_dir, task), _file_bytes(np.savez_compressed, **arrays))
    scenes = len(cfg.task_scenes(task))
    return {"task": task, "states": int(len(arrays["seed"])), "scenes": scenes,
            "behaviour_successes": successes, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- reading
def load_labels(root: str | Path, workers: int = 1, progress: bool = False,
                images: bool = True) -> dict[str, np.ndarray]:
    """All shards of a label directory concatenated (in task order).  The shards of a packed set
    (`rcan pack-labels`) hold no images: with `images`, those are rendered from the scene states (`stored_images`),
    so every reader gets the same "image" as from the set before it was packed.  A reader that needs other
    inputs (another domain, size or view: `policy_images`) or none passes images=False and renders only those."""
    paths = sorted(Path(root).glob("labels-*.npz"))
    if not paths:
        raise FileNotFoundError(f"no label shards (labels-*.npz) in {root}; run `rcan label-states` first")
    parts = [p for p in (dict(np.load(path)) for path in paths) if len(p["seed"])]
    if not parts:
        raise FileNotFoundError(f"the label shards in {root} hold no labelled states")
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise ValueError(f"the label shards in {root} mix packed and unpacked shards; pack the set again "
                         "(`rcan pack-labels`)")
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if images:
        data["image"] = stored_images(root, data, workers, progress)
    return data


def stored_images(root: str | Path, data: dict[str, np.ndarray], workers: int = 1,
                  progress: bool = False) -> np.ndarray:
    """The images the states of `data` were labelled with: as stored, or, for a packed set, rendered from the scene
    states in the labelling domain and size (the manifest's) by `workers` processes and cached beside the shards."""
    if "image" in data:
        return data["image"]
    settings = label_settings(root)
    spec = {"size": int(settings["image_size"]), "split": settings["split"], "fov": 0.0,
            "domain": settings["domain"], "variant": "canonical", "generator": None}
    cache = Path(root) / f"images-stored-{settings['domain']}-{spec['size']}-{_records_key(data)}.npy"
    return _rendered_cache(cache, spec, data, workers, progress)


def pack_labels(src: str | Path, out: str | Path) -> dict[str, Any]:
    """Write label directory `src` as a packed set at `out` (which may be `src` itself): every shard without its
    images, the manifest as it is.  A packed set is a scene-state dataset, about a tenth of the size at 128 px,
    small enough to commit beside a model card; `load_labels` renders its images again, and `label-states
    --resume` into it labels only its missing shards.  Each shard is written atomically, so a stopped pack
    can be run again."""
    src, out = Path(src), ensure_writable_dir(out)
    paths = sorted(src.glob("labels-*.npz"))
    if not paths or not (src / "manifest.json").is_file():
        raise FileNotFoundError(f"{src} is not a label directory (manifest.json and labels-*.npz)")
    states, size = 0, 0
    for path in paths:
        shard = {k: v for k, v in np.load(path).items() if k != "image"}
        atomic_write_bytes(out / path.name, _file_bytes(np.savez_compressed, **shard))
        states += len(shard["seed"])
        size += (out / path.name).stat().st_size
    if out.resolve() != src.resolve():
        atomic_write_bytes(out / "manifest.json", (src / "manifest.json").read_bytes())
    return {"shards": len(paths), "states": states, "bytes": size}


def open_gripper_moves(candidates: np.ndarray, state: np.ndarray) -> np.ndarray:
    """(N, K) True for the pure moves (no close, no terminate) of the states with the gripper open."""
    return (candidates[:, :, CLOSE] < 0.5) & (candidates[:, :, TERMINATE] < 0.5) & (state[:, 0] > 0.5)[:, None]


def best_open_moves(scores: np.ndarray, candidates: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pure move a greedy policy would take among each state's labelled candidates: (states, index) with
    `states` (N,) True for the open-gripper states with two or more moves and `index` the best-scored move of
    each of those."""
    moves = open_gripper_moves(candidates, state)
    states = moves.sum(1) >= 2
    return states, np.where(moves, scores, -np.inf)[states].argmax(1)


def nearest_object_scores(data: dict[str, np.ndarray]) -> np.ndarray:
    """(N, K) scores of the labelled candidates: minus the horizontal distance (m) from the TCP target a candidate
    moves to (the state's target plus its dx, dy) to the nearest object's hull centre.  Privileged: it reads the
    object poses stored with each state.  It ignores the gripper, the height and the yaw, so it ranks moves, not
    closes or terminations."""
    return -nearest_object_distance(object_centres(data), data["target"], data["candidates"])


def object_centres(data: dict[str, np.ndarray]) -> np.ndarray:
    """(N, O, 2) horizontal hull centres (m) of every stored state's objects, from the poses stored with it."""
    from rcan_sim.scripted import object_centre_xy

    return np.array([[object_centre_xy(int(oid), pose[:3], pose[3:]) for oid, pose in zip(ids, poses)]
                     for ids, poses in zip(data["object_ids"], data["object_poses"])])


def nearest_object_distance(centres: np.ndarray, target: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """(N, K) horizontal distance (m) from where each action leaves the TCP (target (N, 3) plus its dx, dy) to the
    nearest of the state's object centres (N, O, 2)."""
    ends = target[:, None, :2] + actions[:, :, :2]  # (N, K, 2)
    return np.linalg.norm(ends[:, :, None] - centres[:, None], axis=-1).min(axis=2)


def place_record(env, labels: dict[str, np.ndarray], i: int) -> None:
    """Put the env's world into stored state i."""
    env.world.set_scene_state({k: labels[k][i] for k in ("seed", "object_ids", "object_poses", "joints",
                                                         "gripper_open")})


def render_record(env, labels: dict[str, np.ndarray], i: int, domain: str | None = None) -> np.ndarray:
    """Re-render stored state i in `domain` (default: the env's) at the env's image size."""
    place_record(env, labels, i)
    frame = env.world.render(domain or env.cfg.domain, randomization_seed=int(labels["step"][i]), labels=False)
    return frame.rgb


def label_settings(root: str | Path) -> dict[str, Any]:
    """The settings a label directory was labelled with (its manifest)."""
    return json.loads((Path(root) / "manifest.json").read_text())["settings"]


def _records_key(data: dict[str, np.ndarray]) -> str:
    """Names a cache after the stored states it was rendered from."""
    return hashlib.sha256(np.ascontiguousarray(data["seed"]).tobytes() + data["joints"].tobytes()).hexdigest()[:12]


def _file_bytes(save, *args, **kwargs) -> bytes:
    """What numpy's `save` (np.save, np.savez_compressed) would write, for an atomic write."""
    buf = io.BytesIO()
    save(buf, *args, **kwargs)
    return buf.getvalue()


_RECORD_KEYS = ("seed", "step", "object_ids", "object_poses", "joints", "gripper_open")
_RENDER_CHUNK = 500  # states per render task: a few seconds of work, so a pool stays balanced


def _render_inputs(spec: dict[str, Any], records: dict[str, np.ndarray],
                   bounds: tuple[int, int]) -> tuple[int, np.ndarray]:
    """Policy inputs of stored states start..stop in a fresh env (a worker task)."""
    from rcan_grasp_policy.inputs import InputEncoder
    from rcan_sim.env import EnvConfig, GraspEnv
    from rcan_sim.world import view_config

    start, stop = bounds
    env = GraspEnv(EnvConfig(world=view_config(spec["size"], spec["split"], spec["fov"]), domain=spec["domain"]))
    try:
        if spec["generator"] == ORACLE:
            return start, np.stack([_oracle_input(env, records, i) for i in range(start, stop)])
        encoder = InputEncoder(spec["variant"], spec["generator"])
        return start, np.stack([encoder({"image": render_record(env, records, i)}) for i in range(start, stop)])
    finally:
        env.close()


def _oracle_input(env, records: dict[str, np.ndarray], i: int) -> np.ndarray:
    """The rcan input of stored state i with the simulator's paired canonical render in place of G(x): both halves
    of one `render_pair`, so they share the randomization and the pose jitter (what a perfect generator gives)."""
    from rcan_grasp_policy.contract import PolicyContract

    place_record(env, records, i)
    pair = env.world.render_pair(int(records["step"][i]), domain=env.cfg.domain)
    return PolicyContract(inputs="source+canonical", image_size=pair.randomized_rgb.shape[0]).prepare(
        pair.randomized_rgb, pair.canonical_rgb)


def _through_generator(sources: str, generator: str, bounds: tuple[int, int]) -> tuple[int, np.ndarray]:
    """Policy inputs of states start..stop from the randomized renders (the x half) of the rcan cache `sources`,
    with `generator` run on them (a worker task; one image at a time, as the episodes run G)."""
    from rcan_grasp_policy.inputs import InputEncoder

    start, stop = bounds
    renders = np.load(sources, mmap_mode="r")
    encoder = InputEncoder("rcan", generator)
    return start, np.stack([encoder({"image": np.asarray(renders[i, ..., :3])}) for i in range(start, stop)])


def _rendered_sources(cache: Path) -> Path | None:
    """An rcan cache of the same states, size and view made with another generator (the oracle's included), whose
    randomized renders (the x half) can be lent, if there is one: `cache` is images-rcan-<size>[-fov<f>]-<generator
    sha or 'oracle'>-<records key>.npy."""
    stem, _, key = cache.stem.rsplit("-", 2)
    for other in sorted(cache.parent.glob(f"{stem}-*-{key}.npy")):
        other_stem, other_sha, _ = other.stem.rsplit("-", 2)
        if other_stem == stem and re.fullmatch(rf"[0-9a-f]{{12}}|{ORACLE}", other_sha) and other != cache:
            return other
    return None


def policy_images(root: str | Path, data: dict[str, np.ndarray], variant: str, generator: str | None = None,
                  progress: bool = False, camera_fov_deg: float = 0.0, image_size: int = 0,
                  workers: int = 1) -> np.ndarray:
    """The policy input (N, S, S, C) uint8 of every stored state for `variant`, rendered from the scene states
    (rcan: the randomized render and G of it through ONNX Runtime) and cached in `root` beside the shards.
    `camera_fov_deg` > 0 renders through that field of view instead of the labelling camera's (a narrower
    view of the same camera); `image_size` > 0 renders at that size instead of the labelling size.  `data` need
    not hold the stored images (load_labels(images=False)): they are rendered only if they are the input.
    `workers` > 1 renders in that many processes (each state is rendered from its stored scene state alone,
    so the cache is the same whatever the number of workers).  An rcan cache of the same states made with
    another generator lends its randomized renders, so a new G costs only G's own runs (in `workers` processes
    too).  `generator` 'oracle' pairs each randomized render with the simulator's canonical render instead of G's."""
    from rcan_grasp_policy.inputs import training_domain, variant_channels

    settings = label_settings(root)
    stored_size = int(settings["image_size"])
    domain, size = training_domain(variant), int(image_size or stored_size)
    if variant != "rcan" and domain == settings["domain"] and not camera_fov_deg and size == stored_size:
        return stored_images(root, data, workers, progress)
    tag = f"{variant}-{size}" + (f"-fov{camera_fov_deg:g}" if camera_fov_deg else "")
    oracle = variant == "rcan" and str(generator) == ORACLE
    if variant == "rcan":
        if not oracle and not (generator and Path(generator).is_file()):
            raise FileNotFoundError(f"variant rcan needs the generator ONNX (or '{ORACLE}'), got {generator!r}")
        tag += "-" + (ORACLE if oracle else file_sha256(generator)[:12])
    cache = Path(root) / f"images-{tag}-{_records_key(data)}.npy"
    if cache.exists():
        return np.load(cache)
    sources = _rendered_sources(cache) if variant == "rcan" and not oracle else None
    if sources is not None:  # the same states through another generator: only G runs again
        return _chunked_cache(cache, partial(_through_generator, str(sources), str(generator)),
                              (len(data["seed"]), size, size, variant_channels(variant)), workers,
                              progress and f"running G on the {variant} inputs")
    spec = {"size": size, "split": settings["split"], "fov": camera_fov_deg, "domain": domain, "variant": variant,
            "generator": str(generator) if generator else None}
    return _rendered_cache(cache, spec, data, workers, progress)


def _rendered_cache(cache: Path, spec: dict[str, Any], data: dict[str, np.ndarray], workers: int,
                    progress: bool) -> np.ndarray:
    """The inputs `spec` (see _render_inputs) of every stored state: read from `cache`, or rendered by `workers`
    processes and written there."""
    from rcan_grasp_policy.inputs import variant_channels

    if cache.exists():
        return np.load(cache)
    size, variant = spec["size"], spec["variant"]
    records = {k: data[k] for k in _RECORD_KEYS}
    return _chunked_cache(cache, partial(_render_inputs, spec, records),
                          (len(data["seed"]), size, size, variant_channels(variant)), workers,
                          progress and f"rendering {variant} inputs")


def _chunked_cache(cache: Path, task, shape: tuple[int, ...], workers: int, progress: str | bool) -> np.ndarray:
    """The uint8 array `shape` whose rows `task((start, stop))` returns as (start, rows), computed in chunks by
    `workers` processes and written to `cache`; `progress` is the printed name of the work (False: quiet)."""
    out = np.zeros(shape, np.uint8)
    executor = make_executor(workers)
    try:
        done = 0
        for _, (start, chunk) in executor.map_unordered(task, [(a, min(a + _RENDER_CHUNK, len(out)))
                                                              for a in range(0, len(out), _RENDER_CHUNK)]):
            out[start:start + len(chunk)] = chunk
            done += len(chunk)
            if progress:
                print(f"[labels] {progress}: {done}/{len(out)}", flush=True)
    finally:
        executor.close()
    atomic_write_bytes(cache, _file_bytes(np.save, out))
    return out


def _project(camera, points: np.ndarray) -> np.ndarray:
    """World points (N, 3) -> pixel (u, v) (N, 2) of the pinhole camera."""
    p = (camera.extrinsics @ np.c_[points, np.ones(len(points))].T)[:3]
    return (camera.K @ (p / p[2:3]))[:2].T


def aux_targets(root: str | Path, data: dict[str, np.ndarray], progress: bool = False,
                camera_fov_deg: float = 0.0) -> dict[str, np.ndarray]:
    """Free simulator labels of every stored state, for training-only auxiliary heads: the object mask (N, S, S)
    uint8 and the pixel positions (N, 2) of the gripper's TCP and of the object nearest to it (in the table
    plane), at the size of data["image"] and the view `camera_fov_deg` (0: the labelling camera's).  Rendered
    from the scene states once and cached beside the labels."""
    from rcan_common import classes
    from rcan_sim.env import EnvConfig, GraspEnv
    from rcan_sim.world import view_config

    size = int(data["image"].shape[1])
    view = f"-fov{camera_fov_deg:g}" if camera_fov_deg else ""
    cache = Path(root) / f"aux-{size}{view}-{_records_key(data)}.npz"
    if cache.exists():
        return dict(np.load(cache))
    split = label_settings(root)["split"]
    env = GraspEnv(EnvConfig(world=view_config(size, split, camera_fov_deg)))
    n = len(data["seed"])
    out = {"object_mask": np.zeros((n, size, size), np.uint8), "gripper_uv": np.zeros((n, 2), np.float32),
           "object_uv": np.zeros((n, 2), np.float32)}
    try:
        cam = env.world.camera
        for i in range(n):
            place_record(env, data, i)
            seg = env.world.render("canonical", randomization_seed=int(data["step"][i]), labels=True).segmentation
            out["object_mask"][i] = seg == classes.OBJECT
            tcp, _ = env.world.ee_pose()
            objs = data["object_poses"][i][:, :3]
            nearest = objs[np.argmin(np.linalg.norm(objs[:, :2] - tcp[:2], axis=1))]
            out["gripper_uv"][i], out["object_uv"][i] = _project(cam, np.stack([tcp, nearest]))
            if progress and i % 2000 == 0:
                print(f"[labels] rendering auxiliary targets: {i}/{n}", flush=True)
    finally:
        env.close()
    atomic_write_bytes(cache, _file_bytes(np.savez_compressed, **out))
    return out


# --------------------------------------------------------------------------- CLI
def manifest_settings(cfg: LabelConfig) -> dict[str, Any]:
    """The settings a label directory is bound to (what --resume must repeat)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in ("out_dir", "workers", "ray", "resume", "scenes")}


def write_manifest(cfg: LabelConfig) -> None:
    atomic_write_json(Path(cfg.out_dir) / "manifest.json",
                      {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": manifest_settings(cfg)})


def run(cfg: LabelConfig, progress: bool = True) -> dict[str, Any]:
    out = ensure_writable_dir(cfg.out_dir)
    manifest_path = out / "manifest.json"
    settings = manifest_settings(cfg)
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if not cfg.resume:
            raise ConfigError(f"{out} already holds labels; pass --resume to continue them or choose another --out-dir")
        # a setting added after a run was labelled counts as that run's if the run used its default
        defaults = {k: v for k, v in to_dict(LabelConfig()).items() if k in settings}
        if {**defaults, **old.get("settings", {})} != settings:
            raise ConfigError(f"{out} was labelled with other settings ({old.get('settings')}); "
                              f"resume needs the same ones")
    write_manifest(cfg)
    todo = [t for t in range(cfg.tasks) if not (cfg.resume and shard_path(out, t).exists())]
    ex = make_executor(cfg.workers, cfg.ray)
    t0, states, done = time.perf_counter(), 0, 0
    try:
        for _, summary in ex.map_unordered(label_task, [(cfg, t) for t in todo]):
            states += summary["states"]
            done += 1
            if progress:
                print(f"[label] shard {summary['task']:5d}  {summary['states']:4d} states  "
                      f"behaviour success {summary['behaviour_successes']}/{summary['scenes']}  "
                      f"{summary['seconds']:.1f}s   ({done}/{len(todo)} shards, {states} states, "
                      f"{time.perf_counter() - t0:.0f}s)", flush=True)
    finally:
        ex.close()
    return {"shards": len(todo), "states": states, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_cli(LabelConfig, argv)
        summary = run(cfg)
    except (ConfigError, FileNotFoundError, OSError) as exc:
        print(f"rcan label-states: error: {exc}", file=sys.stderr)
        return 2
    print(f"[label] done: {summary}")
    return 0


@dataclass
class PackConfig:
    """Write a label directory as a packed set: its scene states, candidates and labels without the images."""

    src: Path = Path("data/labels/canonical-64")
    """Label directory (`rcan label-states --out-dir`)."""
    out: Path | None = None
    """Where the packed set goes (default: `src` itself, packed in place)."""


def pack_main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_cli(PackConfig, argv)
        summary = pack_labels(cfg.src, cfg.src if cfg.out is None else cfg.out)
    except (ConfigError, FileNotFoundError, OSError) as exc:
        print(f"rcan pack-labels: error: {exc}", file=sys.stderr)
        return 2
    print(f"[pack] {summary['states']} states in {summary['shards']} shards, {summary['bytes'] / 1e6:.1f} MB")
    return 0
