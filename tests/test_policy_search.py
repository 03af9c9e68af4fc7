"""The data meets the search: the replay stores the executed action, and scripted close / terminate carry a small,
seeded motion (so the data covers what CEM samples).  CEM's own side is in test_cem.py."""
import dataclasses
import math

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # several test processes share 2 cores

from rcan_common.config import ConfigError  # noqa: E402
from rcan_grasp_policy import collect, train  # noqa: E402
from rcan_grasp_policy.collect import CollectTask, collect_episodes  # noqa: E402
from rcan_common.action import CLOSE, COS, SIN, TERMINATE, decode_action  # noqa: E402
from rcan_sim.scripted import ScriptedGraspPolicy  # noqa: E402

SEEDS = (3, 0)  # test-split scene 3: the scripted policy's first turn is 1.39 rad


@pytest.fixture(scope="module")
def scripted_task():
    return CollectTask(seeds=SEEDS, variant="canonical", domain="canonical", image_size=32, split="test",
                       max_steps=20, policy="scripted", close_jitter=0.005)


def test_replay_stores_the_executed_action(scripted_task, monkeypatch):
    env = collect._env(scripted_task)
    commanded, executed = [], []
    step = env.step

    def recording_step(action, *args, **kwargs):
        out = step(action, *args, **kwargs)
        commanded.append(np.asarray(action, np.float32).copy())
        executed.append(out[4]["executed_action"])
        return out

    monkeypatch.setattr(env, "step", recording_step)
    res = collect_episodes(scripted_task)
    stored = res.transitions.action
    assert len(stored) == len(executed) == res.env_steps
    np.testing.assert_array_equal(stored, np.asarray(executed, np.float32))
    # The scripted policy turns by the whole yaw error at once; the env executes at most max_rotation (0.5 rad).
    cmd_theta = np.array([math.atan2(a[SIN], a[COS]) for a in commanded])
    stored_theta = np.arctan2(stored[:, SIN], stored[:, COS])
    assert np.abs(cmd_theta).max() > 0.6
    assert np.abs(stored_theta).max() <= 0.5 + 1e-6 and np.abs(stored[:, :3]).max() <= 0.05 + 1e-6
    big = np.abs(cmd_theta) > 0.5
    np.testing.assert_allclose(np.abs(stored_theta[big]), 0.5, atol=1e-6)  # clipped, not dropped
    for a, e in zip(commanded, stored):  # the discrete parts are the commanded ones
        cmd = decode_action(a)
        assert (cmd.gripper == "close") == bool(e[CLOSE]) and cmd.terminate == bool(e[TERMINATE])


def _close_and_terminate_actions(policy, env, seed):
    obs, _ = env.reset(seed)
    out, done = [], False
    while not done:
        a = policy(obs, env)
        if a[CLOSE] or a[TERMINATE]:
            out.append(a)
        obs, _, term, trunc, _ = env.step(a, render=False)
        done = term or trunc
    return out


def test_scripted_close_and_terminate_carry_a_small_seeded_motion(scripted_task):
    env = collect._env(scripted_task)
    with pytest.raises(ValueError, match="close_jitter"):
        ScriptedGraspPolicy(close_jitter=-0.001)
    for seed in SEEDS:
        plain = _close_and_terminate_actions(ScriptedGraspPolicy(), env, seed)
        assert plain and all((a[:3] == 0).all() and a[SIN] == 0 for a in plain)  # default: exactly zero motion
        jittered = _close_and_terminate_actions(ScriptedGraspPolicy(close_jitter=0.005), env, seed)
        again = _close_and_terminate_actions(ScriptedGraspPolicy(close_jitter=0.005), env, seed)
        np.testing.assert_array_equal(np.asarray(jittered), np.asarray(again))  # seeded by episode and step
        assert len(jittered) >= 2 and any(a[TERMINATE] for a in jittered) and any(a[CLOSE] for a in jittered)
        for a in jittered:
            assert 0 < np.abs(a[:2]).max() <= 0.005 and abs(a[2]) <= 0.0025
            assert 0 < abs(math.atan2(a[SIN], a[COS])) <= 0.05 + 1e-6
        assert not np.array_equal(jittered[0][:3], jittered[-1][:3])  # a fresh draw per step


def test_training_plumbs_the_close_jitter_into_scripted_tasks(tmp_path):
    cli = ["--variant", "canonical", "--image-size", "32", "--width", "4", "--fc-width", "8", "--no-progress",
           "--out-dir", str(tmp_path), "--run-name", "j"]
    assert train.parse_cli(train.TrainConfig, cli).scripted_close_jitter == 0.005  # training data jitters by default
    tr = train.Trainer(train.parse_cli(train.TrainConfig, cli + ["--scripted-close-jitter", "0.003"]))
    assert tr._task("scripted", 1, 0, 0.1, None).close_jitter == 0.003
    assert tr._task("qnet", 1, 0, 0.1, tr._weights()).close_jitter == 0.0
    with pytest.raises(ConfigError, match="scripted_close_jitter"):
        dataclasses.replace(tr.cfg, scripted_close_jitter=-0.01)
