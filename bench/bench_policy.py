"""Policy benchmark -> bench/results/policy.json.

* CEM decision latency (64 samples x 2 iterations, one state) at the shipped size:
  torch batched (trunk once per state), torch naive (trunk re-run for every candidate, as
  one batch), torch naive loop (one forward per candidate), and ONNX Runtime batched.
* QT-Opt learner updates/s (batch 32, Bellman target by CEM over both target networks).
* The cost of `--merge-downsample 8` (the action merged on a grid twice as fine: 16x16 instead of
  8x8 at 128 px): decision latency and learner updates/s of the same network, as ratios to the
  shipped layout.
* The label learner (rcan train-labels) at 128 px and width 64 in float32 and with --bf16: updates/s of each and
  their ratio, same run.
* Collector grasps/s and env steps/s for one worker (scripted and Q-network episodes).
* CEM regret of the policy (Q of CEM's pick over the best Q of a dense candidate set plus the
  behaviour action) on the states of scripted episodes with unseen test objects, for the paper's
  CEM and the default one (discrete floor + shrunk candidates), on the same states in the same run;
  split by the scripted action (move / close / terminate), with Q of the scripted action beside it.

Uses the demo's policy (models/policy_rcan_128.*, with the generator its metadata names) when
present, otherwise a randomly initialised 64 px network (latency does not depend on the weights,
but the shapes are then not the shipped ones; the JSON's "model" says which).  Runs in a few minutes.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from rcan_common.io import atomic_write_json
from rcan_grasp_policy.backends import TorchQFunction, load_policy_net, load_qfunction
from rcan_grasp_policy.cem import CEMConfig, CEMPolicy, cem_regret
from rcan_grasp_policy.inputs import images_to_nchw
from rcan_grasp_policy.qnet import QNetConfig, QNetwork

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "policy_rcan_128.safetensors"
OUT = ROOT / "bench" / "results" / "policy.json"


def ratio(a: float, b: float) -> float:
    return round(a / b, 2)


class NaiveQFunction(TorchQFunction):
    """Scores every candidate with a full forward pass (trunk included): the baseline of trunk-once."""

    def __init__(self, net: QNetwork, loop: bool = False):
        super().__init__(net)
        self.loop = loop

    @torch.inference_mode()
    def embed(self, images, state):
        return torch.from_numpy(images_to_nchw(images)), torch.as_tensor(np.asarray(state, dtype=np.float32))

    @torch.inference_mode()
    def score(self, context, actions):
        images, state = context
        a = torch.as_tensor(np.asarray(actions, dtype=np.float32))
        b, n = a.shape[:2]
        x = images.repeat_interleave(n, 0)
        s = state.repeat_interleave(n, 0)
        flat = a.reshape(b * n, 1, -1)
        if self.loop:
            q = torch.cat([self.net(x[i:i + 1], s[i:i + 1], flat[i:i + 1]) for i in range(b * n)])
        else:
            q = self.net(x, s, flat)
        return torch.sigmoid(q).reshape(b, n).numpy()


def _latency_ms(policy: CEMPolicy, images, state, repeats: int) -> dict:
    policy.act(images, state)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        policy.act(images, state)
        times.append(1000 * (time.perf_counter() - t))
    return {"median_ms": round(statistics.median(times), 2), "min_ms": round(min(times), 2), "repeats": repeats}


def bench_decision(net: QNetwork, threads: int, naive: bool = True) -> dict:
    from rcan_grasp_policy.export import export_onnx

    torch.set_num_threads(threads)
    c, cem = net.cfg, CEMConfig()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1, c.image_size, c.image_size, c.in_channels), dtype=np.uint8)
    state = np.array([[1.0, 0.2]], np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.onnx"
        export_onnx(net, {"variant": "rcan"}, path)
        ort_qf, _ = load_qfunction(path, threads=threads)
        res = {
            "torch_batched_trunk_once": _latency_ms(CEMPolicy(TorchQFunction(net), cem), images, state, 20),
            "ort_batched_trunk_once": _latency_ms(CEMPolicy(ort_qf, cem), images, state, 20),
        }
    res["threads"] = threads
    res["cem"] = {"samples": cem.samples, "elites": cem.elites, "iterations": cem.iterations}
    if not naive:
        return res
    res["torch_naive_trunk_per_candidate"] = _latency_ms(CEMPolicy(NaiveQFunction(net), cem), images, state, 5)
    res["torch_naive_loop_one_forward_per_candidate"] = _latency_ms(CEMPolicy(NaiveQFunction(net, loop=True), cem),
                                                                    images, state, 1)
    base = res["torch_batched_trunk_once"]["median_ms"]
    res["speedup_batched_vs_naive"] = round(res["torch_naive_trunk_per_candidate"]["median_ms"] / base, 2)
    res["speedup_batched_vs_naive_loop"] = round(res["torch_naive_loop_one_forward_per_candidate"]["median_ms"] / base, 2)
    res["goal_ms"] = 100
    return res


def bench_updates(net_cfg: QNetConfig, target_cem: CEMConfig, updates: int = 8) -> dict:
    from rcan_grasp_policy.qtopt import QTOpt, QTOptConfig
    from rcan_grasp_policy.replay import Transitions

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n, s, ch = 32, net_cfg.image_size, net_cfg.in_channels
    batch = Transitions(image=rng.integers(0, 256, (n, s, s, ch), dtype=np.uint8), state=rng.random((n, 2), np.float32),
                        action=rng.standard_normal((n, 8)).astype(np.float32), reward=np.full(n, -0.05, np.float32),
                        done=rng.random(n) < 0.2, next_image=rng.integers(0, 256, (n, s, s, ch), dtype=np.uint8),
                        next_state=rng.random((n, 2), np.float32), source=np.zeros(n, np.uint8),
                        mc_return=np.zeros(n, np.float32))
    algo = QTOpt(QNetwork(net_cfg), QTOptConfig(batch_size=n, target_cem=target_cem))
    algo.update(batch, rng)
    t = time.perf_counter()
    for _ in range(updates):
        algo.update(batch, rng)
    dt = time.perf_counter() - t
    return {"updates_per_s": round(updates / dt, 2), "batch_size": n, "threads": 1,
            "target_cem": {"samples": target_cem.samples, "elites": target_cem.elites,
                           "iterations": target_cem.iterations}}


def bench_merge8(cfg: QNetConfig, latency: dict, learner: dict, target_cem: CEMConfig) -> dict:
    """`cfg` with the action merged at S/8, against the same run's figures for `cfg` (1 thread)."""
    torch.manual_seed(0)
    fine = replace(cfg, merge_downsample=8)
    lat = bench_decision(QNetwork(fine).eval(), threads=1, naive=False)
    upd = bench_updates(fine, target_cem)
    return {"qnet": fine.to_dict(), "decision_latency_1_thread": lat, "learner": upd,
            "latency_ratio_vs_shipped_torch": ratio(lat["torch_batched_trunk_once"]["median_ms"],
                                                    latency["torch_batched_trunk_once"]["median_ms"]),
            "latency_ratio_vs_shipped_ort": ratio(lat["ort_batched_trunk_once"]["median_ms"],
                                                  latency["ort_batched_trunk_once"]["median_ms"]),
            "learner_updates_ratio_vs_shipped": ratio(upd["updates_per_s"], learner["updates_per_s"])}


def bench_collect(net: QNetwork, episodes: int = 2) -> dict:
    from safetensors.torch import save

    from rcan_grasp_policy.collect import CollectTask, collect_episodes

    weights = save({k: v.contiguous() for k, v in net.state_dict().items()})
    out = {}
    for policy in ("scripted", "qnet"):
        task = CollectTask(seeds=tuple(range(500, 500 + episodes)), variant="rcan", domain="randomized",
                           image_size=net.cfg.image_size, generator="oracle", policy=policy, weights=weights,
                           qnet=net.cfg.to_dict(), epsilon=0.2 if policy == "qnet" else 0.1)
        collect_episodes(CollectTask(**{**task.__dict__, "seeds": (499,)}))  # build env + textures first
        res = collect_episodes(task)
        out[policy] = {"grasps_per_s_per_worker": round(episodes / res.seconds, 3),
                       "env_steps_per_s_per_worker": round(res.env_steps / res.seconds, 2),
                       "episodes": episodes,
                       "input": f"rcan oracle ([x_randomized, canonical render]), {net.cfg.image_size} px"}
    return out


def label_updates_per_s(trainer, updates: int = 10) -> float:
    """Label learner updates/s on one thread, after one warm-up update."""
    torch.set_num_threads(1)
    trainer.update()
    t0 = time.perf_counter()
    for _ in range(updates):
        trainer.update()
    return updates / (time.perf_counter() - t0)


def bench_labels(scenes: int = 4, completion: str = "scripted", candidates: int = 6) -> dict:
    """Counterfactual labels (rcan label-states --completion ...) against the plain scripted episode collector, per
    CPU-second of this process, same scenes' count, same run; and the label learner's updates/s."""
    import tempfile

    from rcan_grasp_policy.collect import CollectTask, collect_episodes
    from rcan_grasp_policy.label_train import LabelTrainConfig, LabelTrainer
    from rcan_grasp_policy.labels import LabelConfig, label_task, labelling_env, load_labels, write_manifest

    with tempfile.TemporaryDirectory() as tmp:
        cfg = LabelConfig(out_dir=Path(tmp), scenes=scenes + 1, scenes_per_task=1, split="train",
                          completion=completion, candidates=candidates)
        write_manifest(cfg)
        env = labelling_env(cfg)  # built before the clock starts, as the collector's is below
        try:
            label_task((cfg, 0), env)
            c0 = time.process_time()
            summaries = [label_task((cfg, t), env) for t in range(1, scenes + 1)]
            label_cpu = time.process_time() - c0
        finally:
            env.close()
        data = load_labels(tmp)
        contrast = float((data["labels"].max(1) > data["labels"].min(1)).mean())
        n_labels = sum(s["states"] for s in summaries) * cfg.candidates
        task = CollectTask(seeds=tuple(range(2_000_000, 2_000_000 + scenes)), variant="canonical", domain="canonical",
                           image_size=64, policy="scripted", epsilon=0.1, gamma=0.9)
        collect_episodes(CollectTask(**{**task.__dict__, "seeds": (1_999_999,)}))
        c0 = time.process_time()
        res = collect_episodes(task)
        collect_cpu = time.process_time() - c0
        n_transitions = len(res.transitions.reward)
        # learner on these labels
        train = LabelTrainer(LabelTrainConfig(labels=(Path(tmp),), eval_labels=Path(tmp), out_dir=Path(tmp) / "runs",
                                              threads=1))
        updates_per_s = label_updates_per_s(train)
        wide = {}
        if completion == "scripted":  # once per bench run: the 128 px, width-64 learner in float32 and in bfloat16
            for bf16 in (False, True):
                wide[bf16] = label_updates_per_s(LabelTrainer(LabelTrainConfig(
                    labels=(Path(tmp),), eval_labels=Path(tmp), out_dir=Path(tmp) / "runs", run_name=f"wide-{bf16}",
                    image_size=128, width=64, bf16=bf16, threads=1)), updates=4)
    labels_per_cpu_s = n_labels / label_cpu
    transitions_per_cpu_s = n_transitions / collect_cpu
    return {"labels_per_cpu_s": round(labels_per_cpu_s, 2), "labelled_states_per_cpu_s": round(n_labels / cfg.candidates / label_cpu, 2),
            "states_with_contrast": round(contrast, 3), "candidates_per_state": cfg.candidates,
            "episode_transitions_per_cpu_s": round(transitions_per_cpu_s, 2),
            "ratio_labels_vs_transitions": round(labels_per_cpu_s / transitions_per_cpu_s, 3),
            "ratio_contrasted_labels_vs_transitions": round(contrast * labels_per_cpu_s / transitions_per_cpu_s, 3),
            "label_learner_updates_per_s_1_thread": round(updates_per_s, 2), "label_batch_states": train.cfg.batch_states,
            **({"label_learner_128px_width64_updates_per_s_1_thread": {"float32": round(wide[False], 2),
                                                                        "bf16": round(wide[True], 2),
                                                                        "ratio_bf16_vs_float32": ratio(wide[True], wide[False])}}
               if wide else {}),
            "scenes": scenes, "completion": completion,
            "note": "a transition is one (state, action, reward) of a scripted episode (epsilon 0.1), rendered; a label is "
                    "one candidate's outcome at a state (restore, execute, the completion without rendering). "
                    "Only labels contrast actions in the same state (states_with_contrast: K labels not all equal)"}


def scripted_states(net_cfg: QNetConfig, seeds, domain: str = "canonical", generator: str | None = None,
                    close_jitter: float = 0.0) -> dict:
    """The policy's inputs at every step of scripted episodes on unseen test objects, with the scripted (executed)
    action and what it was: 'move', 'close' or 'terminate'."""
    from rcan_grasp_policy.inputs import InputEncoder, state_vector
    from rcan_common.action import CLOSE, TERMINATE
    from rcan_sim.env import EnvConfig, GraspEnv
    from rcan_sim.scripted import ScriptedGraspPolicy
    from rcan_sim.world import WorldConfig

    variant = "rcan" if net_cfg.in_channels == 6 else "canonical"
    if variant == "rcan" and generator is None:
        shipped = ROOT / "models" / "generator_64.onnx"  # G's output is resized to the policy's size
        generator = str(shipped) if shipped.is_file() else "oracle"
    env = GraspEnv(EnvConfig(world=WorldConfig(image_size=net_cfg.image_size, split="test"), domain=domain))
    encoder = InputEncoder(variant, generator if variant == "rcan" else None)
    policy = ScriptedGraspPolicy(close_jitter=close_jitter)
    images, states, actions, kinds, successes = [], [], [], [], []
    try:
        for seed in seeds:
            obs, _ = env.reset(int(seed))
            done = False
            while not done:
                images.append(encoder(obs, env))
                states.append(state_vector(obs))
                obs, _, term, trunc, info = env.step(policy(obs, env))
                a = info["executed_action"]
                actions.append(a)
                kinds.append("terminate" if a[TERMINATE] else "close" if a[CLOSE] else "move")
                done = term or trunc
            successes.append(bool(info["success"]))
    finally:
        env.close()
    return {"images": np.stack(images), "states": np.stack(states).astype(np.float32),
            "actions": np.stack(actions).astype(np.float32), "kinds": np.array(kinds), "successes": successes,
            "generator": generator, "domain": domain}


def bench_regret(net: QNetwork, seeds=tuple(range(900, 912)), cem_seeds: int = 2, data: dict | None = None,
                 generator: str | None = None) -> dict:
    """CEM regret on held-out states: the paper's CEM (no floor, no shrunk candidates) against the default."""
    torch.set_num_threads(1)
    data = scripted_states(net.cfg, seeds, generator=generator) if data is None else data
    qf = TorchQFunction(net)
    ctx = qf.embed(data["images"], data["states"])
    n = len(data["states"])
    q_behaviour = np.asarray(qf.score(ctx, data["actions"][:, None]), np.float64)[:, 0]
    configs = {"paper": CEMConfig(min_discrete_prob=0.0, shrunk_fraction=0.0), "default": CEMConfig()}
    t = time.perf_counter()
    out: dict = {}
    for name, cfg in configs.items():
        ratio, q_pick, q_best = [], [], []
        for s in range(cem_seeds):
            r = cem_regret(qf, ctx, n, data["actions"][:, None], np.random.default_rng(s), cfg)
            ratio.append(r.ratio), q_pick.append(r.q_pick), q_best.append(r.q_best)
        ratio, q_pick, q_best = map(np.concatenate, (ratio, q_pick, q_best))
        kinds = np.tile(data["kinds"], cem_seeds)
        rows = {"all": np.ones_like(kinds, bool), **{k: kinds == k for k in ("move", "close", "terminate")}}
        out[name] = {"cem": {"samples": cfg.samples, "elites": cfg.elites, "iterations": cfg.iterations,
                             "min_discrete_prob": cfg.min_discrete_prob, "shrunk_fraction": cfg.shrunk_fraction}}
        for k, m in rows.items():
            if m.any():
                out[name][k] = {"states": int(m.sum() // cem_seeds),
                                "median_regret_ratio": round(float(np.median(ratio[m])), 3),
                                "mean_regret_ratio": round(float(ratio[m].mean()), 3),
                                "median_q_cem_pick": round(float(np.median(q_pick[m])), 3),
                                "median_q_dense_best": round(float(np.median(q_best[m])), 3)}
    return {**out, "median_q_scripted_action": {k: round(float(np.median(q_behaviour[data["kinds"] == k])), 3)
                                                for k in ("move", "close", "terminate") if (data["kinds"] == k).any()},
            "episodes": len(data["successes"]), "scripted_successes": int(sum(data["successes"])),
            "seeds": [int(s) for s in seeds], "cem_seeds": cem_seeds, "dense_candidates": 1024,
            "states": f"scripted episodes on unseen test objects, {data['domain']} domain, input generator "
                      f"{Path(str(data['generator'])).name}",
            "seconds_cem_and_dense": round(time.perf_counter() - t, 1),
            "ratio": "Q(CEM pick) / max(Q over 1024 dense candidates (zero-motion options, uniform, near-zero) "
                     "+ the scripted action, Q(CEM pick)); 1 = the search found the best"}


def main() -> dict:
    t0 = time.perf_counter()
    generator = None
    if SHIPPED.is_file():
        net, meta = load_policy_net(SHIPPED)
        source = str(SHIPPED.relative_to(ROOT))
        if meta.get("generator") and (ROOT / meta["generator"]).is_file():
            generator = str(ROOT / meta["generator"])  # the G the policy was trained on
    else:
        torch.manual_seed(0)
        net, source = QNetwork(QNetConfig(in_channels=6, image_size=64, width=32)).eval(), "random init (no shipped model)"
    target_cem = CEMConfig(samples=32, elites=4, iterations=2)
    result = {
        "model": source, "qnet": net.cfg.to_dict(),
        "decision_latency_1_thread": bench_decision(net, threads=1),
        "decision_latency_2_threads": bench_decision(net, threads=2),
        "learner": bench_updates(net.cfg, target_cem),
        "learner_paper_target_cem": bench_updates(net.cfg, CEMConfig(), updates=3),
        "collector": bench_collect(net),
        "cem_regret": bench_regret(net, generator=generator),
        "labels": bench_labels(),
        "labels_descend": bench_labels(completion="descend", candidates=8),  # what make policy labels with
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__},
    }
    result["merge8"] = bench_merge8(net.cfg, result["decision_latency_1_thread"], result["learner"], target_cem)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(OUT, result)
    print(json.dumps({k: result[k] for k in ("decision_latency_1_thread", "learner", "merge8", "collector", "cem_regret",
                                             "labels", "labels_descend", "seconds")}, indent=1))
    return result


if __name__ == "__main__":
    main()
