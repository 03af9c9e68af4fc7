"""`rcan train-policy`: QT-Opt in simulation for one input variant (rcan / canonical / dr-*).

    replay <- scripted bootstrap episodes (off-policy, QT-Opt style)
    loop:  collectors run the current Q-network through CEM with epsilon-greedy exploration
           (plus a fraction of scripted episodes) in worker processes (rcan_common.executor);
           as each collector task returns, its transitions enter the replay and the learner
           does `updates_per_transition` Bellman updates per new transition
           every eval_every updates: greedy success rate on unseen test objects
           every checkpoint_every updates: checkpoint (weights, optimizer, replay, RNG)

Run directory (out_dir/run_name): config.json (every hyperparameter), metrics.csv and tb/
(TensorBoard), evals.jsonl, policy.safetensors + policy.json (latest weights for
eval/export), checkpoint.safetensors + checkpoint.json + replay.npz (for --resume).

Resume restores, exactly, the networks (online + both targets, BatchNorm statistics), Adam
state, the replay (content and ring position), the update / round / episode counters and
the learner's RNG.  Checkpoints are taken between collection rounds and collection seeds
are a function of (seed, round, task), so a resumed run collects the same episode seeds as
an uninterrupted one.  SIGTERM ends the run after the current round with a checkpoint (a
second SIGTERM aborts at once).  What is not bit-exact: pybullet's state after reset(seed) depends
on the client's history at the 1e-7 level, so trajectories (and thus later updates) can
drift slightly; with several workers the order in which tasks finish also changes the
replay order.
"""
from __future__ import annotations

import json
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rcan_common.config import ConfigError, load_for_resume, parse_cli, require, start_or_resume, to_dict
from rcan_common.executor import make_executor
from rcan_common.io import atomic_write_json, ensure_writable_dir
from rcan_common.runlog import RunLog
from rcan_grasp_policy.backends import PolicyLoadError, generator_digest, load_policy_net, save_policy
from rcan_grasp_policy.cem import CEMConfig
from rcan_grasp_policy.collect import CollectTask, collect_episodes
from rcan_grasp_policy.inputs import ORACLE, Variant, training_domain, variant_channels
from rcan_grasp_policy.qnet import QNetConfig, QNetwork
from rcan_grasp_policy.qtopt import QTOpt, QTOptConfig
from rcan_grasp_policy.replay import ReplayBuffer
from rcan_common.action import ActionBounds
from rcan_common.stats import wilson_interval

# Fields that must match the saved config when resuming (they shape the networks / data).
_ARCH_FIELDS = ("variant", "image_size", "width", "fc_width", "merge_downsample", "max_steps", "replay_capacity")
_TRAIN_SEED_OFFSET = 1_000_000  # training episode seeds never coincide with evaluation seeds 0..N


@dataclass
class TrainConfig:
    """QT-Opt training of the RCAN grasping Q-function in simulation."""

    variant: Variant = "rcan"
    """Input variant: rcan ([x_randomized, G(x)]), canonical, dr-mild, dr-medium, dr-heavy."""
    generator: str = "models/generator_64.onnx"
    """Generator ONNX for variant rcan, or 'oracle' (the sim's paired canonical render; training aid only)."""
    run_name: str = ""
    """Run directory name under out_dir (default: <variant>-<image_size>px-seed<seed>)."""
    out_dir: Path = Path("runs/policy")
    """Parent directory of run directories."""
    resume: bool = False
    """Continue the run in out_dir/run_name from its last checkpoint."""
    init_from: Path | None = None
    """Start from these policy weights (a policy.safetensors, or a run directory = its policy.safetensors), e.g. to
    fine-tune an oracle-trained policy with the real G; the replay and optimizer start fresh."""
    seed: int = 0
    """Seed of the network init, replay sampling, CEM and collection episodes."""
    image_size: int = 64
    """Rendered and network image size (pixels, a multiple of 32)."""
    width: int = 32
    """Q-network convolution channels."""
    fc_width: int = 64
    """Q-network hidden FC units."""
    merge_downsample: int = 16
    """Q-network image downsampling where the action is merged in: 16 or 8 (finer; the per-candidate head
    then works on 4x the positions)."""
    max_steps: int = 20
    """Steps per episode (paper: 20)."""
    total_updates: int = 20000
    """Stop at the end of the collection round that reaches this many gradient updates."""
    time_budget_min: float = 0.0
    """Also stop after this many minutes of this invocation (0: no limit)."""
    bootstrap_episodes: int = 100
    """Scripted episodes put in the replay before learning starts (off-policy bootstrap)."""
    workers: int = 1
    """Collector processes (1: collect in this process, between updates)."""
    ray: bool = False
    """Run collectors as Ray tasks (or set RAY_ADDRESS)."""
    episodes_per_task: int = 2
    """Episodes per collector task."""
    tasks_per_round: int = 0
    """Collector tasks per round; the policy weights are refreshed every round (0: 2 x workers, so
    collectors keep working while the learner trains on the first results)."""
    updates_per_transition: float = 1.0
    """Gradient updates per newly collected transition."""
    epsilon: float = 0.2
    """Probability of a random action per step in on-policy collection."""
    scripted_fraction: float = 0.2
    """Fraction of collector tasks that run the scripted policy (keeps successful grasps in the replay)."""
    scripted_epsilon: float = 0.1
    """Random-action probability inside scripted episodes (more varied bootstrap data)."""
    scripted_aim_offset: float = 0.0
    """Scripted episodes aim at a point drawn per episode within this radius (m) of the object's centre, so the
    replay holds near misses beside good grasps: the contrast that teaches the Q-function the alignment a grasp
    needs (0: always aim at the centre)."""
    scripted_close_jitter: float = 0.005
    """Scripted close and terminate carry a random motion up to this far in x and y (m; half in z, 10 rad/m in
    yaw), within the measured grasp tolerance, so the data covers the small motions CEM samples (0: exactly none)."""
    replay_capacity: int = 30000
    """Transitions kept in the replay ring buffer."""
    algo: QTOptConfig = field(default_factory=QTOptConfig)
    """QT-Opt learner settings."""
    cem: CEMConfig = field(default_factory=CEMConfig)
    """CEM settings of the collecting / evaluated policy."""
    eval_every: int = 1000
    """Updates between success-rate evaluations on unseen test objects (0: only at the end)."""
    eval_episodes: int = 10
    """Episodes per periodic evaluation (the final number comes from `rcan eval-policy`)."""
    checkpoint_every: int = 500
    """Updates between checkpoints (also written at the end)."""
    log_every: int = 50
    """Updates between metrics.csv / TensorBoard rows."""
    threads: int = 1
    """torch threads of the learner and of each collector."""
    no_progress: bool = False
    """Disable the progress bar."""

    def __post_init__(self) -> None:
        require(self.variant != "rcan" or bool(self.generator), "generator", "variant rcan needs a generator")
        require(self.image_size >= 32 and self.image_size % 32 == 0, "image_size", "must be a multiple of 32")
        require(self.total_updates >= 0, "total_updates", "must be >= 0")
        require(self.time_budget_min >= 0, "time_budget_min", "must be >= 0")
        require(self.bootstrap_episodes >= 0, "bootstrap_episodes", "must be >= 0")
        require(self.workers >= 1, "workers", "must be >= 1")
        require(self.episodes_per_task >= 1, "episodes_per_task", "must be >= 1")
        require(self.tasks_per_round >= 0, "tasks_per_round", "must be >= 0")
        require(self.updates_per_transition >= 0, "updates_per_transition", "must be >= 0")
        for name in ("epsilon", "scripted_fraction", "scripted_epsilon"):
            require(0.0 <= getattr(self, name) <= 1.0, name, "must be in [0, 1]")
        require(self.scripted_aim_offset >= 0, "scripted_aim_offset", "must be >= 0")
        require(self.scripted_close_jitter >= 0, "scripted_close_jitter", "must be >= 0")
        require(self.replay_capacity >= self.algo.batch_size, "replay_capacity", "must be >= algo.batch_size")
        require(self.eval_every >= 0, "eval_every", "must be >= 0")
        require(self.eval_episodes >= 1, "eval_episodes", "must be >= 1")
        require(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        require(self.log_every >= 1, "log_every", "must be >= 1")
        require(self.threads >= 1, "threads", "must be >= 1")
        require(1 <= self.max_steps <= 1000, "max_steps", "must be in 1..1000")

    @property
    def name(self) -> str:
        return self.run_name or f"{self.variant}-{self.image_size}px-seed{self.seed}"

    def qnet_config(self) -> QNetConfig:
        return QNetConfig(in_channels=variant_channels(self.variant), image_size=self.image_size,
                          width=self.width, fc_width=self.fc_width, merge_downsample=self.merge_downsample)


def _task_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class Trainer:
    """The state of one run: learner, replay, counters, logs."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.run_dir = ensure_writable_dir(Path(cfg.out_dir) / cfg.name)
        self.domain = training_domain(cfg.variant)
        self.generator = cfg.generator if cfg.variant == "rcan" else None
        if self.generator not in (None, ORACLE) and not Path(self.generator).is_file():
            raise ConfigError(f"invalid config field 'generator': {self.generator} does not exist")
        self.generator_sha256 = generator_digest(self.generator)
        torch.manual_seed(cfg.seed)
        net = QNetwork(cfg.qnet_config())
        if cfg.init_from is not None:
            weights = cfg.init_from / "policy.safetensors" if cfg.init_from.is_dir() else cfg.init_from
            try:
                init, _ = load_policy_net(weights)
            except PolicyLoadError as exc:
                raise ConfigError(f"invalid config field 'init_from': {exc}") from exc
            if init.cfg != net.cfg:
                raise ConfigError(f"invalid config field 'init_from': network {init.cfg} != this run's {net.cfg}")
            net.load_state_dict(init.state_dict())
        self.algo = QTOpt(net, cfg.algo, ActionBounds())
        c = net.cfg
        self.replay = ReplayBuffer(cfg.replay_capacity, (c.image_size, c.image_size, c.in_channels))
        self.rng = np.random.default_rng(cfg.seed)
        self.round = 0
        self.episodes = 0  # collected (bootstrap included); also the episode-seed counter
        self.successes = 0
        self.env_steps = 0
        self.last_eval: dict | None = None
        self.recent: list[bool] = []  # successes of recent on-policy episodes

    # -- persistence ----------------------------------------------------------------------
    def checkpoint(self) -> None:
        from safetensors.torch import save_file

        d = self.run_dir
        self.replay.save(d / "replay.npz")
        tensors, extra = self.algo.state_tensors()
        tensors["torch_rng"] = torch.get_rng_state()
        tmp = d / ".checkpoint.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(d / "checkpoint.safetensors")
        extra.update(rng=self.rng.bit_generator.state, round=self.round, episodes=self.episodes,
                     successes=self.successes, env_steps=self.env_steps, last_eval=self.last_eval,
                     recent=self.recent)
        atomic_write_json(d / "checkpoint.json", extra)  # written last: marks a complete checkpoint
        self.save_policy()

    def save_policy(self) -> None:
        save_policy(self.run_dir / "policy.safetensors", self.algo.q,
                    {"variant": self.cfg.variant, "generator": self.generator,
                     "generator_sha256": self.generator_sha256, "domain": self.domain,
                     "updates": self.algo.updates, "episodes": self.episodes, "run": self.cfg.name,
                     "train_config": to_dict(self.cfg)})

    def restore(self) -> None:
        from safetensors.torch import load_file

        d = self.run_dir
        saved = load_for_resume(TrainConfig, d, self.cfg, _ARCH_FIELDS)
        if saved.algo.gamma != self.cfg.algo.gamma:  # the replay's Monte-Carlo returns are discounted with it
            raise ConfigError(f"invalid config field 'algo.gamma': run {d} recorded its replay's returns with "
                              f"gamma {saved.algo.gamma}, got {self.cfg.algo.gamma}")
        extra = json.loads((d / "checkpoint.json").read_text())
        tensors = load_file(str(d / "checkpoint.safetensors"))
        torch.set_rng_state(tensors.pop("torch_rng"))
        self.algo.load_state_tensors(tensors, extra)
        self.replay = ReplayBuffer.load(d / "replay.npz", self.cfg.algo.gamma)
        self.rng.bit_generator.state = extra["rng"]
        self.round, self.episodes = extra["round"], extra["episodes"]
        self.successes, self.env_steps = extra["successes"], extra["env_steps"]
        self.last_eval, self.recent = extra["last_eval"], extra["recent"]

    # -- collection -----------------------------------------------------------------------
    def _weights(self) -> bytes:
        from safetensors.torch import save

        return save({k: v.detach().contiguous() for k, v in self.algo.q.state_dict().items()})

    def _task(self, policy: str, n: int, cem_seed: int, epsilon: float, weights: bytes | None) -> CollectTask:
        base = _TRAIN_SEED_OFFSET + self.cfg.seed * 100_000_000 + self.episodes
        self.episodes += n
        return CollectTask(seeds=tuple(range(base, base + n)), variant=self.cfg.variant, domain=self.domain,
                           image_size=self.cfg.image_size, split="train", max_steps=self.cfg.max_steps,
                           generator=self.generator, policy=policy, weights=weights,
                           qnet=self.algo.q.cfg.to_dict(), cem=self.cfg.cem, epsilon=epsilon,
                           aim_offset=self.cfg.scripted_aim_offset if policy == "scripted" else 0.0,
                           close_jitter=self.cfg.scripted_close_jitter if policy == "scripted" else 0.0,
                           cem_seed=cem_seed, gamma=self.cfg.algo.gamma, threads=self.cfg.threads)

    def round_tasks(self) -> list[CollectTask]:
        cfg, weights = self.cfg, self._weights()
        tasks = []
        for i in range(cfg.tasks_per_round or 2 * cfg.workers):
            seed = _task_seed(cfg.seed, self.round, i)
            scripted = np.random.default_rng(seed).random() < cfg.scripted_fraction
            tasks.append(self._task("scripted", cfg.episodes_per_task, seed, cfg.scripted_epsilon, None) if scripted
                         else self._task("qnet", cfg.episodes_per_task, seed, cfg.epsilon, weights))
        self.round += 1
        return tasks

    def bootstrap_tasks(self) -> list[CollectTask]:
        n, per = self.cfg.bootstrap_episodes, max(1, math.ceil(self.cfg.bootstrap_episodes / (4 * self.cfg.workers)))
        tasks = []
        while n > 0:
            k = min(per, n)
            tasks.append(self._task("scripted", k, _task_seed(self.cfg.seed, 1 << 30, len(tasks)),
                                    self.cfg.scripted_epsilon, None))
            n -= k
        return tasks

    def evaluate(self, executor, episodes: int) -> dict:
        cfg = self.cfg
        tasks = [CollectTask(seeds=(i,), variant=cfg.variant, domain=self.domain, image_size=cfg.image_size,
                             split="test", max_steps=cfg.max_steps, generator=self.generator, policy="qnet",
                             weights=self._weights(), qnet=self.algo.q.cfg.to_dict(), cem=cfg.cem,
                             cem_seed=_task_seed(cfg.seed, 1 << 31, i), record=False, threads=cfg.threads)
                 for i in range(episodes)]
        wins = sum(ep["success"] for _, res in executor.map_unordered(collect_episodes, tasks) for ep in res.episodes)
        lo, hi = wilson_interval(wins, episodes)
        result = {"updates": self.algo.updates, "episodes": episodes, "successes": wins,
                  "success_rate": wins / episodes, "wilson95": [lo, hi], "domain": self.domain, "split": "test"}
        with open(self.run_dir / "evals.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
        self.last_eval = result
        return result


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) training; returns the run directory."""
    torch.set_num_threads(cfg.threads)
    tr = Trainer(cfg)
    d = tr.run_dir
    start_or_resume(tr, cfg, d)
    from tqdm import tqdm

    log = RunLog(d, ["updates", "episodes", "env_steps", "replay", "loss", "q_mean", "target_mean", "grad_norm",
                     "collect_success", "eval_success", "updates_per_s", "grasps_per_s", "elapsed_s",
                     "conservative_penalty"])
    executor = make_executor(cfg.workers, cfg.ray)
    t0 = time.perf_counter()
    deadline = t0 + 60 * cfg.time_budget_min if cfg.time_budget_min > 0 else math.inf
    bar = tqdm(total=cfg.total_updates, initial=tr.algo.updates, disable=cfg.no_progress, unit="upd",
               dynamic_ncols=True, file=sys.stderr)
    start_updates, start_episodes = tr.algo.updates, tr.episodes
    metrics: dict[str, float] = {}
    next_eval = (tr.algo.updates // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else math.inf
    next_ckpt = (tr.algo.updates // cfg.checkpoint_every + 1) * cfg.checkpoint_every

    def ingest(res, on_policy: bool) -> None:
        if res.transitions is not None:
            tr.replay.add(res.transitions)
        tr.env_steps += res.env_steps
        for ep in res.episodes:
            tr.successes += ep["success"]
            if on_policy:
                tr.recent = (tr.recent + [ep["success"]])[-50:]

    try:
        if tr.replay.total_added == 0 and cfg.bootstrap_episodes > 0:
            bar.set_description("bootstrap")
            for _, res in executor.map_unordered(collect_episodes, tr.bootstrap_tasks()):
                ingest(res, on_policy=False)
            bar.set_description("train")
        while tr.algo.updates < cfg.total_updates and time.perf_counter() < deadline and not STOP.is_set():
            for task, res in executor.map_unordered(collect_episodes, tr.round_tasks()):
                ingest(res, on_policy=task.policy == "qnet")
                n = round(cfg.updates_per_transition * len(res.transitions))
                # Not capped at total_updates: stopping only between rounds is what makes resume exact.
                for _ in range(n):
                    if len(tr.replay) < cfg.algo.batch_size:
                        break
                    metrics = tr.algo.update(tr.replay.sample(cfg.algo.batch_size, tr.rng), tr.rng)
                    bar.update(1)
                    u = tr.algo.updates
                    if u % cfg.log_every == 0:
                        el = time.perf_counter() - t0
                        row = {"updates": u, "episodes": tr.episodes, "env_steps": tr.env_steps,
                               "replay": len(tr.replay), **{k: round(v, 5) for k, v in metrics.items()},
                               "collect_success": round(float(np.mean(tr.recent)), 3) if tr.recent else "",
                               "eval_success": tr.last_eval["success_rate"] if tr.last_eval else "",
                               "updates_per_s": round((u - start_updates) / el, 3),
                               "grasps_per_s": round((tr.episodes - start_episodes) / el, 3), "elapsed_s": round(el, 1)}
                        log.write(row)
                        for k, v in row.items():
                            if v != "" and k not in ("updates",):
                                log.scalar(f"train/{k}", float(v), u)
                        bar.set_postfix(loss=f"{metrics['loss']:.3f}", grasps_s=row["grasps_per_s"],
                                        upd_s=row["updates_per_s"], succ=row["collect_success"])
            if tr.algo.updates >= next_eval:
                ev = tr.evaluate(executor, cfg.eval_episodes)
                log.scalar("eval/success_rate", ev["success_rate"], tr.algo.updates)
                bar.write(f"eval @ {tr.algo.updates} updates: {ev['successes']}/{ev['episodes']} on test objects")
                next_eval = (tr.algo.updates // cfg.eval_every + 1) * cfg.eval_every
            if tr.algo.updates >= next_ckpt:
                tr.checkpoint()
                next_ckpt = (tr.algo.updates // cfg.checkpoint_every + 1) * cfg.checkpoint_every
        if STOP.is_set():
            bar.write(f"stopped by SIGTERM after the round ending at {tr.algo.updates} updates; checkpoint written, "
                      "continue with --resume")
        else:
            if tr.last_eval is None or tr.last_eval["updates"] != tr.algo.updates:
                tr.evaluate(executor, cfg.eval_episodes)
            ev = tr.last_eval
            log.scalar("eval/success_rate", ev["success_rate"], tr.algo.updates)
            bar.write(f"final eval @ {tr.algo.updates} updates: {ev['successes']}/{ev['episodes']} on test objects "
                      f"({tr.domain} domain)")
        tr.checkpoint()
    finally:
        bar.close()
        log.close()
        executor.close()
    return d


STOP = threading.Event()
"""Set by the first SIGTERM: training ends after the current collection round, with a checkpoint."""


def _stop(signum, frame):
    if STOP.is_set():  # a second signal: give up the round (unwinds through train()'s cleanup)
        raise KeyboardInterrupt(f"signal {signum}")
    STOP.set()  # rounds are the unit of exact resume, so finish this one and checkpoint
    print(f"signal {signum}: stopping after this collection round (send it again to abort without a checkpoint)",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import signal

    cfg = parse_cli(TrainConfig, argv, description=__doc__.splitlines()[0])
    signal.signal(signal.SIGTERM, _stop)
    run_dir = train(cfg)
    print(f"run directory: {run_dir}")
    return 0
