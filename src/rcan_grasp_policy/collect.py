"""Episode collection for QT-Opt and evaluation, run in worker processes via rcan_common.executor.

One picklable task (`CollectTask`) -> one `CollectResult`.  A task runs a list of episode
seeds with either the privileged scripted policy (QT-Opt's bootstrap data) or the current
Q-network (weights shipped in the task as safetensors bytes) through CEM with
epsilon-greedy exploration.  Each worker process keeps its pybullet env and generator
session between tasks (building them costs more than an episode).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rcan_common.action import STATE_DIM, YAW_STATE_DIM, decode_action
from rcan_grasp_policy.cem import CEMConfig, CEMPolicy, random_actions
from rcan_grasp_policy.grasp_review import hold_checked_step, review_close
from rcan_grasp_policy.inputs import InputEncoder, state_vector
from rcan_grasp_policy.replay import SOURCES, Transitions, returns_to_go

PolicyKind = Literal["scripted", "descend", "label-oracle", "qnet"]
PRIVILEGED = ("scripted", "descend", "label-oracle")
"""Baselines that read the simulator, not the image: the scripted policy, a blind straight-down grasp and
greedy on the true descend labels (rcan_grasp_policy.labels.LabelOracle)."""


@dataclass(frozen=True)
class CollectTask:
    """Everything a worker needs to run some episodes (plain data: it crosses process boundaries)."""

    seeds: tuple[int, ...]
    """Episode seeds (scene and randomization are functions of the seed)."""
    variant: str
    """Policy input variant (rcan_grasp_policy.inputs.VARIANTS)."""
    domain: str
    """Sim domain the observations are rendered in."""
    image_size: int
    camera_fov_deg: float = 0.0
    """Field of view of the sim camera render (0: the camera's own); a policy trained on a narrower view
    (its contract's center_crop) is run on renders at that view (PolicyContract.view_fov_deg)."""
    split: str = "train"
    """Object split: 'train' for learning, 'test' for evaluation."""
    max_steps: int = 20
    generator: str | None = None
    """Generator ONNX path or 'oracle' (variant rcan)."""
    policy: PolicyKind = "qnet"
    weights: bytes | None = None
    """safetensors bytes of the QNetwork state dict (policy 'qnet')."""
    qnet: dict | None = None
    """QNetConfig as a dict (policy 'qnet')."""
    onnx_path: str | None = None
    """Alternatively an exported policy ONNX file (policy 'qnet', evaluation)."""
    cem: CEMConfig = field(default_factory=CEMConfig)
    epsilon: float = 0.0
    """Probability of a uniformly random action per step (exploration)."""
    aim_offset: float = 0.0
    """Scripted policy: radius (m) of the disc its per-episode aim point is drawn from (near-miss data)."""
    close_jitter: float = 0.0
    """Scripted policy: largest |dx|, |dy| (m) of the small random motion its close and terminate carry
    (ScriptedGraspPolicy.close_jitter; 0 for the evaluated baseline, training sets it)."""
    cem_seed: int = 0
    """Seed of the CEM / exploration random stream of this task."""
    gamma: float = 0.9
    """Discount of the recorded Monte-Carlo returns (the learner's gamma)."""
    record: bool = True
    """Return the transitions (False for evaluation: only per-episode records)."""
    threads: int = 1
    """torch / ONNX Runtime threads in the worker."""
    fresh_world: bool = False
    """Rebuild the pybullet scene before every episode, so an episode's outcome does not depend on which
    episodes its worker ran before (evaluation: the same per-episode results with any number of workers)."""
    review_closes: bool = False
    """Add to each episode record a review of every close commanded with the gripper open
    (rcan_grasp_policy.grasp_review: privileged, costs 75 short rollouts a close)."""
    hold_checks: int = 0
    """Up to this many privileged hold checks per episode (grasp_review.hold_checked_step; they change the
    episode), their findings added to each episode record; evaluation only."""
    view_through: int = 0
    """Diagnostic (InputEncoder.view_through; 0: off): a canonical policy's image passes through this many pixels."""


@dataclass
class CollectResult:
    transitions: Transitions | None
    episodes: list[dict[str, Any]]
    """Per episode: seed, success, steps, return, object_ids."""
    env_steps: int
    seconds: float


_CACHE: dict[Any, Any] = {}  # per worker process: envs and encoders keyed by their settings


def _env(task: CollectTask):
    from rcan_sim.env import EnvConfig, GraspEnv
    from rcan_sim.world import view_config

    key = ("env", task.domain, task.image_size, task.split, task.max_steps, task.camera_fov_deg)
    if key not in _CACHE:
        cfg = EnvConfig(world=view_config(task.image_size, task.split, task.camera_fov_deg),
                        domain=task.domain, max_steps=task.max_steps)
        _CACHE[key] = GraspEnv(cfg)
    return _CACHE[key]


def _encoder(task: CollectTask) -> InputEncoder:
    key = ("encoder", task.variant, task.generator, task.view_through)
    if key not in _CACHE:
        _CACHE[key] = InputEncoder(task.variant, task.generator, threads=task.threads, view_through=task.view_through)
    return _CACHE[key]


def _qfunction(task: CollectTask):
    if task.onnx_path is not None:
        from rcan_grasp_policy.backends import load_qfunction

        key = ("onnx", task.onnx_path)
        if key not in _CACHE:
            _CACHE[key] = load_qfunction(task.onnx_path, threads=task.threads)[0]
        return _CACHE[key]
    from safetensors.torch import load as load_tensors

    from rcan_common.config import from_dict
    from rcan_grasp_policy.backends import TorchQFunction
    from rcan_grasp_policy.qnet import QNetConfig, QNetwork

    if task.weights is None or task.qnet is None:
        raise ValueError("a 'qnet' collect task needs weights + qnet config, or onnx_path")
    net = QNetwork(from_dict(QNetConfig, task.qnet))
    net.load_state_dict(load_tensors(task.weights))
    return TorchQFunction(net)


def _privileged(task: CollectTask, rng: np.random.Generator):
    """A privileged baseline as `policy(obs, env) -> action`."""
    if task.policy == "label-oracle":
        from rcan_grasp_policy.labels import LabelOracle

        return LabelOracle(rng, gamma=task.gamma)
    from rcan_sim.scripted import DescendGraspPolicy, ScriptedGraspPolicy

    if task.policy == "descend":
        return DescendGraspPolicy()
    return ScriptedGraspPolicy(aim_offset=task.aim_offset, close_jitter=task.close_jitter)


def collect_episodes(task: CollectTask) -> CollectResult:
    """Run the task's episodes; the worker entry point (top-level so it pickles)."""
    import torch

    torch.set_num_threads(task.threads)
    t0 = time.perf_counter()
    env, encoder = _env(task), _encoder(task)
    rng = np.random.default_rng(task.cem_seed)
    if task.policy in PRIVILEGED:
        baseline = _privileged(task, rng)
        act = lambda obs, image, state: baseline(obs, env)  # noqa: E731
    else:
        policy = CEMPolicy(_qfunction(task), task.cem, env.cfg.bounds, seed=rng)
        yaw_state = getattr(policy.qf, "state_dim", STATE_DIM) == YAW_STATE_DIM
        # The replay keeps the paper's state; a network with QNetConfig.yaw_state also reads the gripper's yaw.
        act = lambda obs, image, state: policy.act(image[None], state_vector(obs, yaw_state)[None],  # noqa: E731
                                                   steps_left=env.steps_left)[0][0]
    source = SOURCES.index("scripted" if task.policy in PRIVILEGED else "policy")
    parts: list[dict[str, list]] = []
    episodes, env_steps = [], 0
    for seed in task.seeds:
        if task.fresh_world:
            env.world.rebuild()
        obs, info = env.reset(int(seed))
        image, state = encoder(obs, env), state_vector(obs)
        buf: dict[str, list] = {f: [] for f in Transitions.FIELDS}
        done, ret, closes, checks = False, 0.0, [], []
        while not done:
            if task.epsilon > 0 and rng.random() < task.epsilon:
                action = random_actions(1, env.cfg.bounds, rng, task.cem.terminate_prob)[0]
            else:
                action = np.asarray(act(obs, image, state), dtype=np.float32)
            if task.review_closes and decode_action(action).gripper == "close" and obs["gripper_open"]:
                closes.append(review_close(env, task.gamma))
            if len(checks) < task.hold_checks:
                (obs, reward, terminated, truncated, step_info), held = hold_checked_step(env, action)
                checks += [] if held is None else [held]
            else:
                obs, reward, terminated, truncated, step_info = env.step(action)
            action = step_info["executed_action"]  # the replay holds what ran: clipped to step bounds and workspace
            done = terminated or truncated
            next_image, next_state = encoder(obs, env), state_vector(obs)
            if task.record:
                for f, v in (("image", image), ("state", state), ("action", action), ("reward", reward),
                             ("done", done), ("next_image", next_image), ("next_state", next_state),
                             ("source", source)):
                    buf[f].append(v)
            image, state, ret = next_image, next_state, ret + reward
            env_steps += 1
        episodes.append({"seed": int(seed), "success": bool(step_info["success"]), "steps": int(step_info["steps"]),
                         "return": float(ret), "object_ids": [int(i) for i in info["object_ids"]]}
                        | ({"closes": closes} if task.review_closes else {})
                        | ({"hold_checks": checks} if task.hold_checks else {}))
        if task.record:
            buf["mc_return"] = list(returns_to_go(np.asarray(buf["reward"]), np.asarray(buf["done"]), task.gamma))
            parts.append(buf)
    transitions = None
    if task.record and parts:
        dtypes = {"image": np.uint8, "next_image": np.uint8, "state": np.float32, "next_state": np.float32,
                  "action": np.float32, "reward": np.float32, "done": bool, "source": np.uint8,
                  "mc_return": np.float32}
        transitions = Transitions(**{f: np.asarray([v for p in parts for v in p[f]], dtype=dtypes[f])
                                     for f in Transitions.FIELDS})
    return CollectResult(transitions, episodes, env_steps, time.perf_counter() - t0)
