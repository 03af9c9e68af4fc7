"""Counterfactual action labels from simulator resets (rcan_grasp_policy.labels) and the env snapshot they rest on."""
import numpy as np
import pytest

from rcan_grasp_policy import labels as L
from rcan_common.action import DZ, make_action
from rcan_sim.env import EnvConfig, GraspEnv
from rcan_sim.scripted import DescendGraspPolicy, ScriptedGraspPolicy
from rcan_sim.world import WorldConfig


@pytest.fixture(scope="module")
def env():
    e = GraspEnv(EnvConfig(world=WorldConfig(image_size=32, split="test")))
    yield e
    e.close()


def _advance(env, seed, steps):
    policy = ScriptedGraspPolicy()
    obs, _ = env.reset(seed)
    for _ in range(steps):
        obs, *_ = env.step(policy(obs, env))
    return policy


def _finish(env, policy, gamma=0.9):
    return L.completion_return(env, policy, gamma)


def test_restore_replays_the_same_outcome(env):
    """The same actions from a restored state give the same outcome (restore is exact)."""
    for seed in (0, 3):
        policy = _advance(env, seed, 3)
        snap = env.snapshot()
        first = _finish(env, policy)
        poses_first = env.world.scene_state()["object_poses"]
        env.restore(snap)
        assert env.steps == 3 and not env.done
        second = _finish(env, policy)
        env.release(snap)
        assert first == second
        np.testing.assert_allclose(env.world.scene_state()["object_poses"], poses_first, atol=1e-4)


def test_restore_reapplies_motor_targets(env):
    """pybullet's restoreState keeps no motor targets: without re-applying them the arm would drift to the
    targets of whatever ran last."""
    _advance(env, 1, 2)
    snap = env.snapshot()
    q_before = env.world.joint_positions()
    env.step(make_action([0.05, 0.05, -0.05]), render=False)  # new motor targets
    env.restore(snap)
    np.testing.assert_allclose(env.world._arm_targets[0], snap.world.arm_targets)
    env.world.step_physics(30)  # holding the snapshot's targets: the arm stays where it was
    np.testing.assert_allclose(env.world.joint_positions(), q_before, atol=2e-3)
    env.release(snap)


def test_snapshot_from_another_episode_is_refused(env):
    _advance(env, 2, 1)
    snap = env.snapshot()
    env.reset(4)
    with pytest.raises(RuntimeError, match="another episode"):
        env.restore(snap)


def test_executed_action_is_the_clipped_one(env):
    env.reset(5)
    _, _, _, _, info = env.step(make_action([0.3, 0.0, -0.01], dtheta=1.2))
    executed = info["executed_action"]
    assert executed[0] == pytest.approx(0.05, abs=1e-6)  # per-step translation bound
    assert np.arctan2(executed[3], executed[4]) == pytest.approx(0.5, abs=1e-6)  # per-step rotation bound


def test_behaviour_label_equals_the_recorded_outcome(env):
    """Labelling the action the scripted episode then takes gives exactly that episode's discounted return."""
    policy = _advance(env, 0, 2)
    action = policy(None, env)
    label = L.label_actions(env, np.stack([action]), policy, 0.9)[0]
    _, reward, te, tr, _ = env.step(action, render=False)
    ret = reward + (0.0 if te or tr else 0.9 * _finish(env, policy))
    assert label == pytest.approx(np.clip(ret, 0, 1))


def test_close_label_is_the_exact_grasp_outcome(env):
    """At the step where the script closes, the label of close is gamma * success - step cost."""
    policy = ScriptedGraspPolicy()
    obs, _ = env.reset(0)
    while True:
        a = policy(obs, env)
        if a[5] > 0.5:  # the script closes now
            break
        obs, *_ = env.step(a)
    lab = L.label_actions(env, np.stack([a, make_action(terminate=True)]), policy, 0.9)
    assert lab[0] in (0.0, pytest.approx(0.85))
    assert lab[1] == 0.0  # lifting an open gripper holds nothing


def test_regrasp_labels_every_closed_state_and_reopens_there(tmp_path):
    """--regrasp: each closed-gripper state the behaviour visits is labelled, whatever label_prob says, and its
    aimed candidates open the gripper after their move; open states keep pure aimed moves."""
    from rcan_common.action import OPEN

    cfg = L.LabelConfig(out_dir=tmp_path, scenes=4, scenes_per_task=4, split="train", image_size=32, candidates=6,
                        aimed_candidates=2, completion="descend", behaviour_epsilon=0.0, aim_offset=0.0,
                        label_prob=0.05, regrasp=True)
    L.run(cfg, progress=False)
    data = L.load_labels(tmp_path)
    closed = ~data["gripper_open"]
    assert closed.sum() >= 3  # the scripted behaviour closes, then terminates from a closed state: one a scene
    assert (data["candidates"][closed][:, -2:, OPEN] == 1).all()
    assert (data["candidates"][~closed][:, -2:, OPEN] == 0).all()
    assert closed.mean() > 0.5  # open states are labelled with label_prob only
    # before the first lift, a closed state has a lift candidate; half the time the behaviour lifts instead of
    # terminating, and the lifted state is labelled as a closed one too
    lift = np.isclose(data["candidates"][:, :, 2], L.REGRASP_LIFT) & (data["candidates"][:, :, 5:].sum(2) == 0)
    assert lift[closed].any(axis=1).sum() >= 1
    assert ((data["labels"] >= 0) & (data["labels"] <= 1)).all()


def test_lift_check_label_looks_one_step_ahead():
    """The lift's label is its step reward plus the discounted best label at the lifted state; the env is
    left where it was."""
    from rcan_common.action import make_action

    env = GraspEnv(EnvConfig(world=WorldConfig(image_size=32, split="train")))
    try:
        obs, _ = env.reset(5)
        script = ScriptedGraspPolicy(aim_offset=0.0)
        while obs["gripper_open"]:
            obs, *_ = env.step(script(obs, env))
        before = env.world.scene_state()
        terminate = make_action(terminate=True)
        now = L.label_actions(env, terminate[None], DescendGraspPolicy(), 0.9)[0]
        lift = L.lift_check_label(env, lambda e: terminate[None], DescendGraspPolicy(), 0.9)
        assert lift == pytest.approx(max(0.0, -0.05 + 0.9 * now), abs=1e-6)  # lifting keeps what it holds
        after = env.world.scene_state()
        np.testing.assert_allclose(after["object_poses"], before["object_poses"], atol=1e-6)
    finally:
        env.close()


def test_label_run_writes_shards_resumes_and_rerenders(tmp_path):
    cfg = L.LabelConfig(out_dir=tmp_path, scenes=3, scenes_per_task=2, split="test", image_size=32, candidates=4)
    L.run(cfg, progress=False)
    data = L.load_labels(tmp_path)
    n = len(data["seed"])
    assert n > 0 and data["candidates"].shape == (n, 4, 8) and data["labels"].shape == (n, 4)
    assert ((data["labels"] >= 0) & (data["labels"] <= 1)).all()
    # the close and terminate candidates come with a small motion, within the jitter
    assert (np.abs(data["candidates"][:, 1:3, :3]) <= cfg.jitter_translation + 1e-6).all()
    assert data["candidates"][:, 1, 5].all() and data["candidates"][:, 2, 7].all()
    # a stored scene state re-renders to the image stored at labelling time
    env = GraspEnv(EnvConfig(world=WorldConfig(image_size=32, split="test")))
    try:
        for i in (0, n - 1):
            again = L.render_record(env, data, i)
            np.testing.assert_array_equal(again, data["image"][i])
    finally:
        env.close()
    # a second run without --resume refuses; with it, nothing is left to do
    with pytest.raises(Exception, match="resume"):
        L.run(cfg, progress=False)
    from dataclasses import replace

    assert L.run(replace(cfg, resume=True), progress=False)["shards"] == 0
    # a manifest written before a setting existed resumes when the run used that setting's default
    import json

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["settings"]["behaviour"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert L.run(replace(cfg, resume=True), progress=False)["shards"] == 0
    with pytest.raises(Exception, match="other settings"):
        L.run(replace(cfg, resume=True, candidates=5), progress=False)


def test_a_label_set_is_the_same_whatever_the_number_of_workers(tmp_path):
    # one worker runs all four tasks in turn, two split them: a world reused across tasks moved objects by up to
    # 1.3 cm between the two (pybullet's history); a new world per task gives the same set
    common = dict(scenes=4, scenes_per_task=1, split="test", image_size=32, candidates=4, seed=3, behaviour_epsilon=0.3)
    L.run(L.LabelConfig(out_dir=tmp_path / "one", workers=1, **common), progress=False)
    L.run(L.LabelConfig(out_dir=tmp_path / "two", workers=2, **common), progress=False)
    one, two = L.load_labels(tmp_path / "one"), L.load_labels(tmp_path / "two")
    for k in one:
        np.testing.assert_array_equal(one[k], two[k], err_msg=k)


def test_a_packed_set_keeps_everything_but_the_images_and_renders_them_again(tmp_path):
    from dataclasses import replace

    cfg = L.LabelConfig(out_dir=tmp_path / "lab", scenes=3, scenes_per_task=1, split="test", image_size=32,
                        candidates=4, seed=5)
    L.run(replace(cfg, scenes=2), progress=False)  # two of the three shards, as a stopped run leaves them
    data = L.load_labels(cfg.out_dir)
    assert L.pack_main(["--src", str(cfg.out_dir), "--out", str(tmp_path / "packed")]) == 0
    packed_shards = sorted((tmp_path / "packed").glob("labels-*.npz"))
    assert [p.name for p in packed_shards] == [p.name for p in sorted(cfg.out_dir.glob("labels-*.npz"))]
    assert all("image" not in np.load(p).files for p in packed_shards)
    assert sum(p.stat().st_size for p in packed_shards) < sum(p.stat().st_size for p in cfg.out_dir.glob("labels-*"))
    lean = L.load_labels(tmp_path / "packed", images=False)  # a reader of other inputs renders only those
    assert "image" not in lean
    assert L.policy_images(tmp_path / "packed", lean, "canonical", image_size=64).shape[1:] == (64, 64, 3)
    assert not list((tmp_path / "packed").glob("images-stored-*"))
    again = L.load_labels(tmp_path / "packed", workers=2)  # rendered from the scene states, then cached
    assert again.keys() == data.keys()
    for k in data:
        np.testing.assert_array_equal(again[k], data[k], err_msg=k)
    np.testing.assert_array_equal(L.policy_images(tmp_path / "packed", lean, "canonical"), data["image"])
    assert len(list((tmp_path / "packed").glob("images-stored-canonical-32-*.npy"))) == 1
    # a packed set resumes: only the missing shard is labelled, and it holds images until packed again
    assert L.run(replace(cfg, out_dir=tmp_path / "packed", resume=True), progress=False)["shards"] == 1
    with pytest.raises(ValueError, match="pack the set again"):
        L.load_labels(tmp_path / "packed")
    L.pack_labels(tmp_path / "packed", tmp_path / "packed")  # in place
    assert len(L.load_labels(tmp_path / "packed")["seed"]) > len(data["seed"])
    assert L.pack_main(["--src", str(tmp_path / "nothing")]) == 2


def test_auc_and_label_metrics_by_hand():
    from rcan_grasp_policy.label_train import auc, label_metrics

    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)  # sklearn's roc_auc_score
    assert auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)
    q = np.array([[0.9, 0.1, 0.2], [0.1, 0.8, 0.3]])
    lab = np.array([[0.85, 0.0, 0.3], [0.0, 0.0, 0.5]])
    m = label_metrics(q, lab)
    assert m["pick_label"] == pytest.approx((0.85 + 0.0) / 2) and m["oracle_label"] == pytest.approx((0.85 + 0.5) / 2)
    assert m["within_state_auc"] == pytest.approx((1.0 + 0.5) / 2)
    # close_auc: only the close candidates of low open-gripper states count
    cands = np.zeros((2, 3, 8), np.float32)
    cands[:, 0, 5] = cands[:, 2, 5] = 1.0  # candidates 0 and 2 close
    state = np.array([[1.0, 0.03], [1.0, 0.03]], np.float32)
    m = label_metrics(q, lab, cands, state)
    assert m["close_auc"] == pytest.approx(auc([0.9, 0.2, 0.1, 0.3], [1, 1, 0, 1]))
    assert m["behaviour_label"] == pytest.approx((0.85 + 0.0) / 2)
    assert np.isnan(m["move_auc"])  # one move per state: nothing to rank
    cands[:, 2, 5] = 0.0  # candidate 2 becomes a move: state 0 ranks its moves right, state 1 wrong
    assert label_metrics(q, lab, cands, state)["move_auc"] == pytest.approx((1.0 + 0.0) / 2)
    state[1, 1] = 0.2  # the second state is too high: its candidates drop out
    assert np.isnan(label_metrics(q, lab, cands, state)["close_auc"])  # only positives left


def test_within_state_rank_loss_by_hand():
    """Only the order inside a state counts, weighted by the label gap; alike labels give no loss."""
    import torch

    from rcan_grasp_policy.label_train import within_state_rank_loss

    labels = torch.tensor([[1.0, 0.0, 0.5], [0.3, 0.3, 0.3]])
    logits = torch.tensor([[2.0, -1.0, 0.0], [5.0, -5.0, 0.0]])
    sp = torch.nn.functional.softplus
    # pairs of state 0: (0 over 1, gap 1), (0 over 2, gap 0.5), (2 over 1, gap 0.5); state 1 has none
    expected = (1.0 * sp(torch.tensor(-3.0)) + 0.5 * sp(torch.tensor(-2.0)) + 0.5 * sp(torch.tensor(-1.0))) / 2.0
    assert float(within_state_rank_loss(logits, labels)) == pytest.approx(float(expected))
    # adding a constant to a state's logits (its value) changes nothing; reversing the order costs more
    assert float(within_state_rank_loss(logits + torch.tensor([[7.0], [-3.0]]), labels)) == pytest.approx(float(expected))
    assert float(within_state_rank_loss(-logits, labels)) > float(expected)
    assert float(within_state_rank_loss(logits, torch.full_like(labels, 0.4))) == 0.0


def test_aim_labels_average_the_moves_that_end_as_far_and_as_high():
    """train-labels --aim-weight: each pure move of an open-gripper state gets the mean label of its bin."""
    from rcan_grasp_policy.label_train import aim_labels

    move, close, stop = make_action([0.01, 0.0, -0.05]), make_action(gripper="close"), make_action(terminate=True)
    candidates = np.stack([[move, move, close], [move, move, stop], [move, move, move]])
    data = {"candidates": candidates,
            "state": np.array([[1.0, 0.10], [1.0, 0.11], [0.0, 0.10]], np.float32),  # the third: gripper closed
            "aim": np.array([[0.001, 0.03, 0.001], [0.004, 0.2, 0.001], [0.001, 0.001, 0.001]], np.float32),
            "labels": np.array([[0.6, 0.1, 0.9], [0.2, 0.0, 0.5], [1.0, 1.0, 1.0]], np.float32)}
    out = aim_labels(data)
    # (0, 0) and (1, 0) share the first 5 mm and the same 4 cm of height: both get (0.6 + 0.2) / 2
    np.testing.assert_allclose(out[:2, 0], [0.4, 0.4])
    np.testing.assert_allclose([out[0, 1], out[1, 1]], [0.1, 0.0])  # alone in their bins (0.2 m: the last bin)
    assert np.isnan(out[:, 2]).all() and np.isnan(out[2]).all()  # closes, terminations, a closed gripper


def test_within_state_aim_loss_teaches_differences_between_moves_only():
    """The aiming loss by hand: moves' Q against their targets, each relative to the mean over the state's moves."""
    import torch

    from rcan_grasp_policy.label_train import within_state_aim_loss

    nan = float("nan")
    targets = torch.tensor([[0.5, 0.2, nan], [0.3, nan, nan]])  # the second state has one move: nothing to compare
    logits = torch.tensor([[1.0, 0.0, 5.0], [2.0, 0.0, 0.0]])
    gap = float(torch.sigmoid(torch.tensor(1.0)) - torch.sigmoid(torch.tensor(0.0)))
    expected = 2 * (gap / 2 - 0.15) ** 2 / 2  # centred Q +-gap/2 against centred targets +-0.15, over 2 moves
    assert float(within_state_aim_loss(logits, targets)) == pytest.approx(expected)
    # a non-move's logit is not the aiming loss's business; the single move of the second state neither
    assert float(within_state_aim_loss(logits + torch.tensor([[0.0], [4.0]]), targets)) == pytest.approx(expected)
    assert float(within_state_aim_loss(logits + torch.tensor([[0.0, 0.0, 9.0]] * 2), targets)) == pytest.approx(expected)
    assert float(within_state_aim_loss(logits, torch.full_like(targets, nan))) == 0.0


def test_rediscounted_labels_recover_the_steps_to_the_grasp():
    """train-labels --label-discount: a grasp k steps on, labelled 0.9**k - 0.05 * (1 - 0.9**k) / 0.1, becomes
    discount**k; failures stay 0; the labelling discount itself only takes the step rewards out."""
    from rcan_grasp_policy.label_train import rediscounted_labels

    steps = np.array([0, 1, 2, 5, 9])
    labels = np.append(0.9 ** steps - 0.05 * (1 - 0.9 ** steps) / 0.1, 0.0).astype(np.float32)
    np.testing.assert_allclose(rediscounted_labels(labels, 0.9, 0.97), np.append(0.97 ** steps, 0.0), rtol=1e-5)
    np.testing.assert_allclose(rediscounted_labels(labels, 0.9, 1.0), [1, 1, 1, 1, 1, 0], rtol=1e-5)
    np.testing.assert_allclose(rediscounted_labels(labels, 0.9, 0.9), np.append(0.9 ** steps, 0.0), rtol=1e-5)


def test_move_pick_scores_the_best_scored_move_of_each_open_gripper_state():
    """label_metrics' move_pick_label and move_pick_grasp, and check-labels' move_pick_distance_cm by hand: only
    pure moves of open-gripper states with two or more of them count, whatever a close or termination scores."""
    from rcan_grasp_policy.label_check import move_pick_distance_cm
    from rcan_grasp_policy.label_train import label_metrics

    move, close = make_action([0.01, 0.0, -0.05]), make_action(gripper="close")
    candidates = np.stack([[move, move, close], [move, close, close], [move, move, move]])
    state = np.array([[1.0, 0.1], [1.0, 0.1], [1.0, 0.05]], np.float32)  # the second state has a single move
    q = np.array([[0.2, 0.5, 0.9], [0.9, 0.1, 0.1], [0.3, 0.1, 0.2]])
    labels = np.array([[1.0, 0.25, 1.0], [1.0, 0.0, 0.0], [0.5, 1.0, 0.0]], np.float32)
    distance = np.array([[0.01, 0.03, 0.0], [0.0, 0.0, 0.0], [0.02, 0.0, 0.05]])
    metrics = label_metrics(q, labels, candidates, state)
    assert metrics["move_pick_label"] == pytest.approx((0.25 + 0.5) / 2) and metrics["move_pick_grasp"] == 1.0
    assert label_metrics(q, labels * [[1, 0, 1]], candidates, state)["move_pick_grasp"] == 0.5
    data = {"candidates": candidates, "state": state}
    assert move_pick_distance_cm(q, distance, data) == pytest.approx(2.5)  # the median of 3 and 2 cm
    assert np.isnan(move_pick_distance_cm(q, distance, {"candidates": candidates, "state": state * 0}))


def test_behaviour_successors_follow_each_episode_one_step_on():
    from rcan_common.action import make_action
    from rcan_grasp_policy.label_train import behaviour_successors

    seed = np.array([7, 7, 7, 9, 9, 7])
    step = np.array([0, 1, 3, 1, 2, 4])  # episode 7's step 2 was not labelled
    move, stop = make_action([0.01, 0.0, -0.02]), make_action(terminate=True)
    candidates = np.stack([np.stack([a, move]) for a in (move, move, move, move, stop, stop)])
    # 0 -> 1; 1's next state (step 2) is missing; 2 -> 5; 3 -> 4; 4 and 5 terminate (5 would have no successor anyway)
    assert behaviour_successors(seed, step, candidates).tolist() == [1, -1, 5, 4, -1, -1]


def test_bellman_labels_raise_only_the_behaviour_action_and_its_copies():
    from rcan_grasp_policy.label_train import bellman_labels

    labels = np.array([[0.0, 0.3, 0.0], [0.6, 0.0, 0.6], [0.2, 0.9, 0.0]], np.float32)
    candidates = np.zeros((3, 3, 8), np.float32)
    candidates[:, 1, 0] = 0.01  # candidate 1 differs from the behaviour action; candidate 2 is a copy of it
    candidates[2, 2, 1] = 0.02  # ... except in row 2
    out = bellman_labels(labels, candidates, np.array([0, 1, 2]), q1_next=np.array([0.5, 0.5, 1.0]),
                         q2_next=np.array([0.8, 0.2, 1.0]), gamma=0.9, step_reward=-0.05)
    # row 0: min(0.5, 0.8) -> -0.05 + 0.45 = 0.4 raises the behaviour and its copy; row 1: 0.13 < 0.6, kept;
    # row 2: clipped at 0.85, the other candidates keep their labels
    np.testing.assert_allclose(out, [[0.4, 0.3, 0.4], [0.6, 0.0, 0.6], [0.85, 0.9, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(bellman_labels(labels, candidates, np.array([1]), np.array([1.0]), np.array([1.0]),
                                              0.9)[[0, 2]], labels[[0, 2]])  # rows without a successor: unchanged


def _tiny_label_run(tmp_path) -> list[str]:
    """Label two scenes at 32 px into tmp_path/lab; the train-labels arguments of a tiny network on them."""
    L.run(L.LabelConfig(out_dir=tmp_path / "lab", scenes=2, scenes_per_task=1, split="test", image_size=32,
                        candidates=3, max_steps=4), progress=False)
    return ["--labels", str(tmp_path / "lab"), "--eval-labels", str(tmp_path / "lab"), "--out-dir", str(tmp_path),
            "--image-size", "32", "--width", "4", "--fc-width", "8", "--batch-states", "4", "--eval-every", "4",
            "--eval-episodes", "1", "--checkpoint-every", "2", "--log-every", "2", "--threads", "1",
            "--cem.samples", "8", "--cem.elites", "2"]


@pytest.mark.timeout(300)
def test_label_train_resume_eval_export_smoke(tmp_path, capsys):
    """Tiny label -> train -> resume (exact) -> greedy check -> export -> eval-policy run."""
    import json

    import torch
    from safetensors.torch import load_file

    from rcan_grasp_policy import evaluate, export, label_train

    torch.set_num_threads(1)
    args = _tiny_label_run(tmp_path)
    assert label_train.main(args + ["--total-updates", "4"]) == 0
    run = tmp_path / "labels-canonical-64"
    assert label_train.main(args + ["--total-updates", "6"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert label_train.main(args + ["--total-updates", "6", "--resume", "--width", "5"]) == 2
    assert "'width'" in capsys.readouterr().err
    # SIGTERM (its handler sets STOP) ends a run after the current update, with a checkpoint
    label_train._stop(15, None)
    try:
        assert label_train.main(args + ["--total-updates", "6", "--run-name", "term"]) == 0
    finally:
        label_train.STOP.clear()
    assert json.loads((tmp_path / "term" / "checkpoint.json").read_text())["updates"] == 0
    # resume continues from the saved state: 4 more updates after the restore equal an uninterrupted 8
    assert label_train.main(args + ["--total-updates", "8", "--resume"]) == 0
    resumed = load_file(str(run / "policy.safetensors"))
    assert label_train.main(args + ["--total-updates", "8", "--run-name", "straight"]) == 0
    straight = load_file(str(tmp_path / "straight" / "policy.safetensors"))
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=0)
    evals = [json.loads(x) for x in (run / "evals.jsonl").read_text().splitlines()]
    assert [e["updates"] for e in evals] == [4, 8]
    assert sorted(p.name for p in (run / "snapshots").glob("*.safetensors")) == ["policy-4.safetensors",
                                                                                  "policy-8.safetensors"]
    assert {"label_auc", "within_state_auc", "pick_label", "cem_regret", "greedy_success"} <= set(evals[0])
    # the same checks for any snapshot on any label set (rcan check-labels)
    from rcan_grasp_policy import label_check

    assert label_check.main(["--policy", str(run / "snapshots" / "policy-8.safetensors"), "--labels",
                             str(tmp_path / "lab"), "--out", str(tmp_path / "check.json")]) == 0
    checked = json.loads((tmp_path / "check.json").read_text())["labels"][str(tmp_path / "lab")]
    assert checked["pick_label"] == pytest.approx(evals[-1]["pick_label"], abs=1e-4)
    assert label_check.main(["--policy", str(tmp_path / "missing.onnx")]) == 2
    assert label_check.main(["--policy", "nearest-object", "--labels", str(tmp_path / "lab"), "--out",
                             str(tmp_path / "reference.json")]) == 0
    reference = json.loads((tmp_path / "reference.json").read_text())["labels"][str(tmp_path / "lab")]
    assert reference["states"] == checked["states"] and 0.0 <= reference["pick_label"] <= 1.0 and "move_auc" in reference
    assert {"grasp_rate_0-1cm", "grasp_rate_10+cm", "move_pick_distance_cm", "move_pick_label"} <= set(reference)
    assert {"move_pick_distance_cm", "move_pick_label"} <= set(checked) and 0.0 <= checked["cem_regret"] <= 1.0
    assert label_check.main(["--policy", "nearest-object", "--feature-teacher", "x.safetensors"]) == 2
    # training-only auxiliary heads: resumable like the rest, dropped from the exported policy
    assert label_train.main(args + ["--total-updates", "2", "--run-name", "aux", "--aux-weight", "0.5",
                                    "--eval-every", "0"]) == 0
    assert label_train.main(args + ["--total-updates", "4", "--run-name", "aux", "--aux-weight", "0.5",
                                    "--eval-every", "0", "--resume"]) == 0
    aux_ckpt = load_file(str(tmp_path / "aux" / "checkpoint.safetensors"))
    assert any(k.startswith("aux.") for k in aux_ckpt)
    assert set(load_file(str(tmp_path / "aux" / "policy.safetensors"))) == set(straight)
    # the within-state ranking loss: logged beside the loss, and part of what a resume must keep
    assert label_train.main(args + ["--total-updates", "2", "--run-name", "rank", "--rank-weight", "1",
                                    "--eval-every", "0", "--log-every", "1"]) == 0
    assert "rank_loss" in (tmp_path / "rank" / "metrics.csv").read_text().splitlines()[0]
    assert label_train.main(args + ["--total-updates", "4", "--run-name", "rank", "--eval-every", "0", "--resume"]) == 2
    assert "'rank_weight'" in capsys.readouterr().err
    # the privileged aiming loss: logged, and fixed across a resume like the ranking loss
    assert label_train.main(args + ["--total-updates", "2", "--run-name", "aim", "--aim-weight", "1",
                                    "--eval-every", "0", "--log-every", "1"]) == 0
    aim_log = (tmp_path / "aim" / "metrics.csv").read_text().splitlines()
    assert "aim_loss" in aim_log[0] and aim_log[1].split(",")[aim_log[0].split(",").index("aim_loss")] != ""
    assert label_train.main(args + ["--total-updates", "4", "--run-name", "aim", "--eval-every", "0", "--resume"]) == 2
    assert "'aim_weight'" in capsys.readouterr().err
    # re-discounted labels: fixed across a resume too
    assert label_train.main(args + ["--total-updates", "2", "--run-name", "disc", "--label-discount", "0.97",
                                    "--eval-every", "0"]) == 0
    assert label_train.main(args + ["--total-updates", "4", "--run-name", "disc", "--eval-every", "0", "--resume"]) == 2
    assert "'label_discount'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        label_train.main(args + ["--run-name", "disc2", "--label-discount", "1.5"])
    assert "'label_discount'" in capsys.readouterr().err
    # QT-Opt's Bellman targets beside the labels: the target networks are checkpointed, resume stays exact
    bellman = args + ["--eval-every", "0", "--bellman", "--bellman-target2-lag", "3", "--log-every", "1"]
    assert label_train.main(bellman + ["--total-updates", "2", "--run-name", "bellman"]) == 0
    assert label_train.main(bellman + ["--total-updates", "4", "--run-name", "bellman", "--resume"]) == 0
    assert label_train.main(bellman + ["--total-updates", "4", "--run-name", "bellman-straight"]) == 0
    resumed, straight_ckpt = (load_file(str(tmp_path / r / "checkpoint.safetensors"))
                              for r in ("bellman", "bellman-straight"))
    assert any(k.startswith("target2.") for k in straight_ckpt)
    for k, v in straight_ckpt.items():
        torch.testing.assert_close(resumed[k], v, rtol=0, atol=0)
    assert any(not torch.equal(straight_ckpt[f"target1.{k}"], v) for k, v in load_file(
        str(tmp_path / "bellman-straight" / "policy.safetensors")).items() if v.is_floating_point())  # Polyak, lagging
    bellman_log = (tmp_path / "bellman" / "metrics.csv").read_text().splitlines()
    raises = [float(r.split(",")[bellman_log[0].split(",").index("bellman_raise")]) for r in bellman_log[1:]]
    assert len(raises) == 4 and all(r >= 0 for r in raises) and max(raises) > 0
    assert label_train.main(args + ["--total-updates", "6", "--run-name", "bellman", "--eval-every", "0",
                                    "--resume"]) == 2
    assert "'bellman'" in capsys.readouterr().err
    # one discount for all the sets it bootstraps through
    L.run(L.LabelConfig(out_dir=tmp_path / "gamma", scenes=1, split="test", image_size=32, candidates=3, max_steps=3,
                        gamma=0.8), progress=False)
    assert label_train.main(bellman + ["--total-updates", "1", "--run-name", "bellman-gamma", "--labels",
                                       str(tmp_path / "lab"), str(tmp_path / "gamma")]) == 2
    assert "gamma [0.8, 0.9]" in capsys.readouterr().err
    # cosine learning-rate decay: the rate is a function of the update counter (so resume stays exact)
    assert label_train.main(args + ["--total-updates", "4", "--run-name", "cos", "--lr-decay", "--eval-every", "0"]) == 0
    lr = json.loads((tmp_path / "cos" / "checkpoint.json").read_text())["optim_param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 3 / 4)))  # the rate of the 4th (last) update
    # the learner's device: a name torch does not know is refused, a GPU torch cannot see too, before any work
    with pytest.raises(SystemExit):
        label_train.main(args + ["--device", "gpu", "--run-name", "gpu"])
    assert "'device'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert label_train.main(args + ["--device", "cuda", "--run-name", "gpu"]) == 2
        assert "'device'" in capsys.readouterr().err
    # bfloat16 autocast: float32 weights, a different result from float32 updates, exact resume, fixed across it
    bf16 = args + ["--eval-every", "0", "--bf16"]
    assert label_train.main(bf16 + ["--total-updates", "2", "--run-name", "bf16"]) == 0
    assert label_train.main(bf16 + ["--total-updates", "4", "--run-name", "bf16", "--resume"]) == 0
    assert label_train.main(bf16 + ["--total-updates", "4", "--run-name", "bf16-straight"]) == 0
    assert label_train.main(args + ["--eval-every", "0", "--total-updates", "4", "--run-name", "fp32-straight"]) == 0
    half = load_file(str(tmp_path / "bf16" / "policy.safetensors"))
    full = load_file(str(tmp_path / "fp32-straight" / "policy.safetensors"))
    for k, v in load_file(str(tmp_path / "bf16-straight" / "policy.safetensors")).items():
        torch.testing.assert_close(half[k], v, rtol=0, atol=0)
        assert v.dtype == full[k].dtype and (v.dtype != torch.bfloat16)
    assert any(not torch.equal(half[k], v) for k, v in full.items() if v.is_floating_point())
    assert label_train.main(args + ["--eval-every", "0", "--total-updates", "6", "--run-name", "bf16", "--resume"]) == 2
    assert "'bf16'" in capsys.readouterr().err
    # weight averaging: the checks, snapshots and policy.safetensors are the average; resume stays exact
    ema = args + ["--eval-every", "0", "--ema-decay", "0.5"]
    assert label_train.main(ema + ["--total-updates", "2", "--run-name", "ema"]) == 0
    assert label_train.main(ema + ["--total-updates", "4", "--run-name", "ema", "--resume"]) == 0
    assert label_train.main(ema + ["--total-updates", "4", "--run-name", "ema-straight"]) == 0
    averaged = load_file(str(tmp_path / "ema" / "policy.safetensors"))
    ema_ckpt = load_file(str(tmp_path / "ema" / "checkpoint.safetensors"))
    for k, v in load_file(str(tmp_path / "ema-straight" / "policy.safetensors")).items():
        torch.testing.assert_close(averaged[k], v, rtol=0, atol=0)
        torch.testing.assert_close(ema_ckpt[f"ema.{k}"], v, rtol=0, atol=0)
    assert any(not torch.equal(ema_ckpt[f"net.{k}"], v) for k, v in averaged.items() if v.is_floating_point())
    assert label_train.main(ema + ["--total-updates", "6", "--run-name", "ema", "--resume", "--ema-decay", "0.9"]) == 2
    assert "'ema_decay'" in capsys.readouterr().err
    trainer = label_train.LabelTrainer(label_train.LabelTrainConfig(
        labels=(tmp_path / "lab",), eval_labels=tmp_path / "lab", image_size=32, width=4, fc_width=8, ema_decay=0.5))
    trainer.updates = 100  # past the warm-up: the decay is 0.5
    for avg, cur in trainer.ema_pairs:
        avg.zero_()
        cur.fill_(1)
    trainer._average()
    for name, value in trainer.ema.state_dict().items():
        assert torch.all(value == (1 if name.endswith("num_batches_tracked") else 0.5)), name
    # a warm start from another run's weights; a network of another shape is refused
    init = args + ["--eval-every", "0", "--init-from", str(run / "policy.safetensors")]
    assert label_train.main(init + ["--total-updates", "0", "--run-name", "init"]) == 0
    for k, v in load_file(str(run / "policy.safetensors")).items():
        torch.testing.assert_close(load_file(str(tmp_path / "init" / "policy.safetensors"))[k], v, rtol=0, atol=0)
    assert label_train.main(init + ["--total-updates", "0", "--run-name", "init-wide", "--width", "5"]) == 0  # widened
    assert label_train.main(init + ["--total-updates", "0", "--run-name", "init-fc", "--fc-width", "5"]) == 2
    assert "'init_from'" in capsys.readouterr().err
    # a narrower view of the camera: greedy checks render it, the exported contract carries it as a centre crop
    assert label_train.main(args + ["--total-updates", "2", "--run-name", "fov", "--camera-fov-deg", "30",
                                    "--eval-every", "2"]) == 0
    assert json.loads((tmp_path / "fov" / "evals.jsonl").read_text())["greedy_success"] in (0.0, 1.0)
    fov_card = export.export(export.ExportConfig(checkpoint=tmp_path / "fov", out=tmp_path / "fov.onnx",
                                                 parity_states=2, cem=label_train.CEMConfig(samples=8, elites=2)))
    assert fov_card["parity"]["cem_same_actions"]
    crop = json.loads((tmp_path / "fov.contract.json").read_text())["center_crop"]
    assert crop == pytest.approx(np.tan(np.radians(15)) / np.tan(np.radians(20)))
    for policy in (tmp_path / "fov.onnx", tmp_path / "fov"):
        assert evaluate.resolve_policy(evaluate.EvalConfig(policy=str(policy)))["camera_fov_deg"] == pytest.approx(30)
    assert evaluate.resolve_policy(evaluate.EvalConfig(policy=str(run)))["camera_fov_deg"] == 0.0
    # DAgger-style: the trained policy's own episodes visit the next states to label
    L.run(L.LabelConfig(out_dir=tmp_path / "dagger", scenes=1, split="test", image_size=32, candidates=3,
                        max_steps=3, behaviour=str(run), behaviour_epsilon=0.0), progress=False)
    assert len(L.load_labels(tmp_path / "dagger")["seed"]) > 0
    # ... and a policy trained on a narrower view is shown renders at its view, not the labelling camera's
    L.run(L.LabelConfig(out_dir=tmp_path / "dagger-fov", scenes=1, split="test", image_size=32, candidates=3,
                        max_steps=3, behaviour=str(tmp_path / "fov.onnx"), behaviour_epsilon=0.0), progress=False)
    assert len(L.load_labels(tmp_path / "dagger-fov")["seed"]) > 0
    # sets labelled with different K train together (aimed candidates on top of the usual ones)
    L.run(L.LabelConfig(out_dir=tmp_path / "aimed", scenes=1, split="test", image_size=32, candidates=4,
                        aimed_candidates=1, max_steps=3), progress=False)
    assert L.load_labels(tmp_path / "aimed")["labels"].shape[1] == 4
    assert label_train.main(args + ["--total-updates", "2", "--run-name", "mixed", "--eval-every", "0",
                                    "--labels", str(tmp_path / "lab"), str(tmp_path / "aimed")]) == 0
    card = export.export(export.ExportConfig(checkpoint=run, out=tmp_path / "p.onnx", parity_states=2,
                                             cem=label_train.CEMConfig(samples=8, elites=2)))
    assert card["parity"]["cem_same_actions"]
    assert evaluate.main(["--policy", str(tmp_path / "p.onnx"), "--episodes", "1", "--max-steps", "3",
                          "--cem.samples", "8", "--cem.elites", "2"]) == 0


def test_label_train_on_a_gpu_learns_what_the_cpu_learns_and_resumes(tmp_path, monkeypatch):
    """--device cuda (skipped where torch sees no GPU): the same network as the CPU's up to rounding, a resumed
    run that continues where it stopped, greedy checks run on the CPU from the GPU's weights, bf16 too."""
    import json

    import torch

    from rcan_grasp_policy import label_train
    from rcan_grasp_policy.backends import TorchQFunction, load_policy_net

    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    torch.set_num_threads(1)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 convolutions, to compare with the CPU
    args = _tiny_label_run(tmp_path) + ["--ema-decay", "0.5"]
    for run, extra in (("init", ["--total-updates", "0"]), ("cpu", ["--total-updates", "8"]),
                       ("gpu", ["--total-updates", "8", "--device", "cuda"]),
                       ("resumed", ["--total-updates", "4", "--device", "cuda"]),
                       ("resumed", ["--total-updates", "8", "--device", "cuda", "--resume"]),
                       ("bf16", ["--total-updates", "4", "--device", "cuda", "--bf16", "--eval-every", "0"])):
        assert label_train.main(args + extra + ["--run-name", run]) == 0
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    state, actions = rng.random((6, 2), dtype=np.float32), rng.uniform(-1, 1, (6, 5, 8)).astype(np.float32)

    def q(run: str) -> np.ndarray:
        qf = TorchQFunction(load_policy_net(tmp_path / run / "policy.safetensors")[0])  # read onto the CPU
        return qf.score(qf.embed(images, state), actions)

    trained = np.abs(q("cpu") - q("init")).max()
    assert np.abs(q("gpu") - q("cpu")).max() < 0.05 * trained
    assert np.abs(q("resumed") - q("gpu")).max() < 0.05 * trained
    evals = [json.loads(x) for x in (tmp_path / "gpu" / "evals.jsonl").read_text().splitlines()]
    assert [e["updates"] for e in evals] == [4, 8] and all("greedy_success" in e for e in evals)
    assert np.isfinite(q("bf16")).all()


def test_rcan_inputs_are_rendered_from_the_scene_states_and_cached(tmp_path):
    """One label set trains every variant: rcan inputs are [randomized render, G(render)] of the stored states."""
    from pathlib import Path

    gen = Path(__file__).resolve().parents[1] / "models" / "generator_64.onnx"
    L.run(L.LabelConfig(out_dir=tmp_path, scenes=1, scenes_per_task=1, split="test", image_size=64, candidates=3,
                        max_steps=3), progress=False)
    data = L.load_labels(tmp_path)
    images = L.policy_images(tmp_path, data, "rcan", str(gen))
    assert images.shape == data["image"].shape[:3] + (6,)
    env = GraspEnv(EnvConfig(world=WorldConfig(image_size=64, split="test"), domain="randomized"))
    try:
        np.testing.assert_array_equal(images[-1, :, :, :3], L.render_record(env, data, len(images) - 1))
    finally:
        env.close()
    assert not np.array_equal(images[..., :3], data["image"])  # randomized, not the stored canonical renders
    assert len(list(tmp_path.glob("images-rcan-64-*.npy"))) == 1
    np.testing.assert_array_equal(L.policy_images(tmp_path, data, "rcan", str(gen)), images)  # from the cache
    assert L.policy_images(tmp_path, data, "canonical") is data["image"]
    # framing experiment: the same camera, narrower: the tray fills more of the frame
    narrow = L.policy_images(tmp_path, data, "canonical", camera_fov_deg=24)
    assert narrow.shape == data["image"].shape and not np.array_equal(narrow, data["image"])
    assert len(list(tmp_path.glob("images-canonical-64-fov24-*.npy"))) == 1
    # ... and at any size: the state is stored, not only its pixels
    env = GraspEnv(EnvConfig(world=WorldConfig(image_size=32, split="test", camera_fov_deg=24)))
    try:
        small = L.policy_images(tmp_path, data, "canonical", camera_fov_deg=24, image_size=32)
        assert small.shape == (len(data["seed"]), 32, 32, 3)
        np.testing.assert_array_equal(small[0], L.render_record(env, data, 0))
    finally:
        env.close()
    assert len(list(tmp_path.glob("images-canonical-32-fov24-*.npy"))) == 1


def test_oracle_inputs_pair_each_randomized_render_with_its_canonical_render(tmp_path):
    """`--generator oracle` (a perfect G, sim only): the second half is the simulator's paired canonical render of
    the same randomization, jitter included; a real generator then borrows its randomized renders."""
    from pathlib import Path

    L.run(L.LabelConfig(out_dir=tmp_path, scenes=1, scenes_per_task=1, split="test", image_size=32, candidates=3,
                        max_steps=2), progress=False)
    data = L.load_labels(tmp_path)
    images = L.policy_images(tmp_path, data, "rcan", "oracle")
    assert images.shape == data["image"].shape[:3] + (6,)
    assert len(list(tmp_path.glob("images-rcan-32-oracle-*.npy"))) == 1
    env = GraspEnv(EnvConfig(world=WorldConfig(image_size=32, split="test"), domain="randomized"))
    try:
        last = len(images) - 1
        np.testing.assert_array_equal(images[last, :, :, :3], L.render_record(env, data, last))
        pair = env.world.render_pair(int(data["step"][last]), domain="randomized")
        np.testing.assert_array_equal(images[last, :, :, 3:], pair.canonical_rgb)
    finally:
        env.close()
    gen = Path(__file__).resolve().parents[1] / "models" / "generator_64.onnx"
    cache = tmp_path / f"images-rcan-32-{L.file_sha256(gen)[:12]}-{L._records_key(data)}.npy"
    assert L._rendered_sources(cache) == next(tmp_path.glob("images-rcan-32-oracle-*.npy"))
    through_g = L.policy_images(tmp_path, data, "rcan", str(gen))
    np.testing.assert_array_equal(through_g[..., :3], images[..., :3])
    assert not np.array_equal(through_g[..., 3:], images[..., 3:])
    with pytest.raises(FileNotFoundError, match="oracle"):
        L.policy_images(tmp_path, data, "rcan", str(tmp_path / "missing.onnx"))


def test_policy_inputs_rendered_by_several_workers_equal_one_workers(tmp_path, monkeypatch):
    """Each state is rendered from its stored scene state alone: a pool of fresh envs gives the same cache."""
    from pathlib import Path

    gen = Path(__file__).resolve().parents[1] / "models" / "generator_64.onnx"
    L.run(L.LabelConfig(out_dir=tmp_path, scenes=2, scenes_per_task=1, split="test", image_size=32, candidates=3,
                        max_steps=2, label_prob=1.0), progress=False)
    data = L.load_labels(tmp_path)
    assert len(data["seed"]) >= 3
    one = L.policy_images(tmp_path, data, "rcan", str(gen))
    for cache in tmp_path.glob("images-*.npy"):
        cache.unlink()
    monkeypatch.setattr(L, "_RENDER_CHUNK", 1)  # a task per state, spread over the pool
    np.testing.assert_array_equal(L.policy_images(tmp_path, data, "rcan", str(gen), workers=2), one)


def test_render_at_a_narrower_view_is_the_narrower_camera():
    narrow = GraspEnv(EnvConfig(world=WorldConfig(image_size=32, split="test", camera_fov_deg=30.0)))
    wide = GraspEnv(EnvConfig(world=WorldConfig(image_size=32, split="test")))
    try:
        narrow.reset(5), wide.reset(5)
        frame = wide.world.render("canonical", fov_deg=30.0)
        np.testing.assert_array_equal(frame.rgb, narrow.world.render("canonical").rgb)
        np.testing.assert_allclose(frame.camera.K, narrow.world.camera.K)
        assert not np.array_equal(frame.rgb, wide.world.render("canonical").rgb)
        np.testing.assert_allclose(wide.world.render("canonical").camera.K, wide.world.camera.K)
    finally:
        narrow.close(), wide.close()


def test_shift_moves_pixel_targets_with_the_image():
    from rcan_grasp_policy.label_train import shift_with_offsets
    from rcan_grasp_policy.qtopt import shift_images

    img = np.zeros((3, 16, 16, 1), np.uint8)
    img[:, 5, 9] = 255  # a bright pixel at (v, u) = (5, 9)
    shifted, shift = shift_with_offsets(img, 3, np.random.default_rng(1))
    np.testing.assert_array_equal(shifted, shift_images(img, 3, np.random.default_rng(1)))  # same draws
    for k in range(3):
        v, u = np.argwhere(shifted[k, ..., 0] == 255)[0]
        assert (v, u) == (5 + shift[k, 0], 9 + shift[k, 1])


def test_shift_replicates_the_edges_and_shifts_a_tensor_where_it_lies_alike():
    """The clamped-index shift is padding with the edge pixels and cropping; a torch batch (on a GPU: there) gets
    the same draws and pixels, and network_input gives images_to_nchw's numbers, channels-last."""
    import torch

    from rcan_grasp_policy.inputs import images_to_nchw
    from rcan_grasp_policy.label_train import network_input
    from rcan_grasp_policy.qtopt import shift_with_offsets

    img = np.random.default_rng(0).integers(0, 256, (5, 12, 10, 4), dtype=np.uint8)
    shifted, shift = shift_with_offsets(img, 3, np.random.default_rng(2))
    offsets = np.random.default_rng(2).integers(0, 7, size=(5, 2))
    padded = np.pad(img, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="edge")
    np.testing.assert_array_equal(shifted, np.stack([padded[i, dy:dy + 12, dx:dx + 10]
                                                     for i, (dy, dx) in enumerate(offsets)]))
    np.testing.assert_array_equal(shift, 3 - offsets)
    on_torch, torch_shift = shift_with_offsets(torch.from_numpy(img), 3, np.random.default_rng(2))
    np.testing.assert_array_equal(on_torch.numpy(), shifted)
    np.testing.assert_array_equal(torch_shift, shift)
    x = network_input(on_torch[..., :3])
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(x.numpy(), images_to_nchw(shifted[..., :3]))


def test_descend_completion_goes_straight_down_closes_and_terminates(env):
    _advance(env, 6, 2)
    blind = DescendGraspPolicy()
    start = env.tcp_target
    actions = []
    while not env.done:
        a = blind(None, env)
        actions.append(a)
        env.step(a, render=False)
        if not a[7]:
            np.testing.assert_allclose(env.tcp_target[:2], start[:2])  # no sideways motion
    assert actions[-2][5] == 1 and actions[-1][7] == 1  # close, then terminate
    assert env.tcp_target[2] == pytest.approx(env.workspace_low[2] + env.cfg.lift_height)  # closed at the bottom


def test_descend_labels_contrast_moves_where_the_script_does_not(env):
    """Above an object (the script's aligned pre-grasp state), staying put and descending grasps; a 5 cm move
    away mostly does not.  The privileged script corrects the move and labels both alike."""
    stay, away, stay_s, away_s = [], [], [], []
    for seed in range(4):
        policy = ScriptedGraspPolicy()
        obs, _ = env.reset(seed)
        while (a := policy(obs, env))[DZ] >= 0 or np.abs(a[:2]).max() > 0.006:  # until the descent starts
            obs, *_ = env.step(a)
        moves = np.stack([make_action([0, 0, -0.02]), make_action([0.05, 0.05, -0.02])])
        stay_d, away_d = L.label_actions(env, moves, DescendGraspPolicy(), 0.9)
        stay_p, away_p = L.label_actions(env, moves, policy, 0.9)
        stay.append(stay_d), away.append(away_d), stay_s.append(stay_p), away_s.append(away_p)
    assert np.mean(stay) - np.mean(away) > 0.1
    assert abs(np.mean(stay_s) - np.mean(away_s)) < np.mean(stay) - np.mean(away)


def test_aimed_candidates_go_to_an_object_grasp_point(env):
    """Without noise an aimed candidate is the (clipped) move onto some object's hull centre at its grasp yaw;
    with the default noise they land on something graspable far more often than CEM's draws."""
    import math

    from rcan_common.action import COS, SIN
    from rcan_sim.scripted import grasp_yaw, object_centre_xy

    env.reset(11)
    t, r = env.cfg.bounds.max_translation, env.cfg.bounds.max_rotation
    state = env.world.scene_state()
    goals = [(object_centre_xy(int(o), p[:3], p[3:]), grasp_yaw(int(o), p[3:])[0])
             for o, p in zip(state["object_ids"], state["object_poses"])]
    for a in L.aimed_actions(env, 6, np.random.default_rng(0), 0.0, 0.0):
        assert a[5:].sum() == 0  # a pure move
        dyaw = math.atan2(a[SIN], a[COS])
        assert any(np.allclose(a[:2], np.clip(c - env.tcp_target[:2], -t, t), atol=1e-5) and
                   abs(dyaw - np.clip(math.remainder(y - env.yaw, math.pi), -r, r)) < 1e-4 for c, y in goals)
    with pytest.raises(Exception, match="aimed_candidates"):
        L.LabelConfig(candidates=6, aimed_candidates=4)


def test_aimed_candidates_label_more_grasps_than_cem_draws(env):
    from rcan_grasp_policy.cem import CEMConfig, SearchDistribution, build_actions, sample

    rng = np.random.default_rng(3)
    aimed, drawn = [], []
    env.world.rebuild()  # a fresh pybullet client: the outcomes must not depend on which tests used `env` before
    for seed in range(16):
        env.reset(20 + seed)  # then a random step, so the gripper is not where the script would put it
        env.step(make_action([*rng.uniform(-0.05, 0.05, 2), -0.05]), render=False)
        cont, grip, term = sample(SearchDistribution.initial(1, CEMConfig(), env.cfg.bounds), 5, env.cfg.bounds, rng)
        draws = build_actions(cont, np.zeros_like(grip), np.zeros_like(term))[0]
        labels = L.label_actions(env, np.concatenate([L.aimed_actions(env, 5, rng, 0.015, 0.3), draws]),
                                 DescendGraspPolicy(), 0.9)
        aimed.append(labels[:5] > 0), drawn.append(labels[5:] > 0)
    assert np.mean(aimed) > max(2 * np.mean(drawn), np.mean(drawn) + 0.05)


def test_rcan_network_starts_as_the_canonical_one_on_g_of_x(tmp_path):
    import dataclasses

    import torch

    from rcan_common.config import ConfigError
    from rcan_grasp_policy.backends import save_policy
    from rcan_grasp_policy.label_train import start_weights
    from rcan_grasp_policy.qnet import QNetConfig, QNetwork

    torch.manual_seed(0)
    cfg3 = QNetConfig(in_channels=3, image_size=32, width=4, fc_width=8)
    canonical = QNetwork(cfg3)
    for m in canonical.modules():  # BatchNorm statistics other than the initial ones
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    save_policy(tmp_path / "c.safetensors", canonical.eval(), {"variant": "canonical"})
    rcan = QNetwork(dataclasses.replace(cfg3, in_channels=6))
    rcan.load_state_dict(start_weights(tmp_path / "c.safetensors", "rcan", rcan.cfg))
    rcan.eval()
    x, g = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    state, actions = torch.rand(3, 2), torch.rand(3, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(rcan(torch.cat([x, g], 1), state, actions), canonical(g, state, actions))
    assert set(start_weights(tmp_path / "c.safetensors", "canonical", cfg3)) == set(canonical.state_dict())
    # with CoordConv channels the coordinates stay where they were, after the image channels
    coord3 = dataclasses.replace(cfg3, coord_channels=True)
    save_policy(tmp_path / "cc.safetensors", QNetwork(coord3).eval(), {"variant": "canonical"})
    QNetwork(dataclasses.replace(coord3, in_channels=6)).load_state_dict(
        start_weights(tmp_path / "cc.safetensors", "rcan", dataclasses.replace(coord3, in_channels=6)))
    with pytest.raises(ConfigError, match="init_from"):
        start_weights(tmp_path / "c.safetensors", "rcan", dataclasses.replace(cfg3, in_channels=6, fc_width=9))
    # a wider trunk (trunk_width) starts as the same function: its extra channels feed nothing yet, and learn
    wide = QNetwork(dataclasses.replace(cfg3, in_channels=6, trunk_width=7))
    wide.load_state_dict(start_weights(tmp_path / "c.safetensors", "rcan", wide.cfg))
    wide.eval()
    with torch.no_grad():
        torch.testing.assert_close(wide(torch.cat([x, g], 1), state, actions), canonical(g, state, actions))
        assert wide.embed(torch.cat([x, g], 1)).shape == canonical.embed(g).shape
    wide.train()
    wide(torch.cat([x, g], 1), state, actions).sum().backward()
    assert wide.trunk[-4].weight.grad[:, 4:].abs().sum() > 0  # the zeroed links into the old channels get gradient
    # a domain-randomized student (the DR baseline) starts as the canonical network itself, on its own images
    dr = start_weights(tmp_path / "c.safetensors", "dr-heavy", cfg3)
    assert all(torch.equal(dr[k], v) for k, v in canonical.state_dict().items())
    save_policy(tmp_path / "r.safetensors", rcan, {"variant": "rcan"})
    with pytest.raises(ConfigError, match="init_from"):
        start_weights(tmp_path / "r.safetensors", "dr-heavy", cfg3)
    # a canonical network starts a wider canonical one the same way
    wide3 = QNetwork(dataclasses.replace(cfg3, trunk_width=7))
    wide3.load_state_dict(start_weights(tmp_path / "c.safetensors", "canonical", wide3.cfg))
    with torch.no_grad():
        torch.testing.assert_close(wide3.eval()(g, state, actions), canonical(g, state, actions))
    with pytest.raises(ConfigError, match="init_from"):  # never narrower
        start_weights(tmp_path / "c.safetensors", "canonical", dataclasses.replace(cfg3, trunk_width=2))
    # a wider network throughout (width: trunk, action embedding and head) starts as the same function too
    wider = QNetwork(dataclasses.replace(cfg3, width=9))
    wider.load_state_dict(start_weights(tmp_path / "c.safetensors", "canonical", wider.cfg))
    with torch.no_grad():
        torch.testing.assert_close(wider.eval()(g, state, actions), canonical(g, state, actions))
    wider.train()
    wider(g, state, actions).sum().backward()
    assert wider.head_fc[1].weight.grad[:, 4 * cfg3.head_side ** 2:].abs().sum() > 0  # new channels' links learn
    with pytest.raises(ConfigError, match="init_from"):  # never narrower
        start_weights(tmp_path / "c.safetensors", "canonical", dataclasses.replace(cfg3, width=3))


def test_yaw_state_network_starts_as_the_one_without_it(tmp_path):
    """`--yaw-state --init-from` a network without it: the yaw's two state numbers start with zero weight (the
    same Q whatever the yaw), then get gradient; the state is checked against the network's width."""
    import dataclasses

    import torch

    from rcan_common.action import with_yaw
    from rcan_grasp_policy.backends import TorchQFunction, save_policy
    from rcan_grasp_policy.cem import CEMPolicy
    from rcan_grasp_policy.label_train import start_weights
    from rcan_grasp_policy.qnet import QNetConfig, QNetwork

    torch.manual_seed(0)
    cfg = QNetConfig(in_channels=3, image_size=32, width=4, fc_width=8)
    plain = QNetwork(cfg).eval()
    save_policy(tmp_path / "c.safetensors", plain, {"variant": "canonical"})
    yaw = QNetwork(dataclasses.replace(cfg, yaw_state=True))
    yaw.load_state_dict(start_weights(tmp_path / "c.safetensors", "canonical", yaw.cfg))
    yaw.eval()
    images, state, actions = torch.rand(3, 3, 32, 32), torch.rand(3, 2), torch.rand(3, 5, 8)
    yaw_state = torch.from_numpy(with_yaw(state.numpy(), np.array([0.0, 1.0, -1.4])))
    assert yaw_state.shape == (3, 4)
    with torch.no_grad():
        torch.testing.assert_close(yaw(images, yaw_state, actions), plain(images, state, actions))
    yaw.train()
    yaw(images, yaw_state, actions).sum().backward()
    assert yaw.action_state[0].weight.grad[:, -2:].abs().sum() > 0
    # the gripper is symmetric under a half turn, and so is its yaw state
    np.testing.assert_allclose(with_yaw(state.numpy(), np.full(3, 0.3)), with_yaw(state.numpy(), np.full(3, 0.3 - np.pi)),
                               atol=1e-6)
    policy = CEMPolicy(TorchQFunction(yaw.eval()), seed=0)
    uint8 = np.zeros((3, 32, 32, 3), np.uint8)
    policy.act(uint8, yaw_state.numpy())
    with pytest.raises(ValueError, match="state must have shape"):
        policy.act(uint8, state.numpy())


def test_rcan_behaviour_sees_its_own_inputs(tmp_path, monkeypatch):
    """DAgger along an rcan policy: it acts on [randomized render, G(render)] of the labelling env's state, as
    `rcan eval-policy` shows it; without its generator it is refused by name."""
    import json
    from pathlib import Path

    import torch

    from rcan_common.config import ConfigError
    from rcan_grasp_policy.backends import load_qfunction, save_policy
    from rcan_grasp_policy.cem import CEMConfig, CEMPolicy
    from rcan_grasp_policy.inputs import InputEncoder, state_vector
    from rcan_grasp_policy.qnet import QNetConfig, QNetwork

    gen = str(Path(__file__).resolve().parents[1] / "models" / "generator_64.onnx")
    torch.manual_seed(0)
    policy = tmp_path / "rcan.safetensors"
    save_policy(policy, QNetwork(QNetConfig(in_channels=6, image_size=64, width=4, fc_width=8)).eval(),
                {"variant": "rcan", "generator": gen})
    world = GraspEnv(EnvConfig(world=WorldConfig(image_size=64, split="test"), domain="canonical", max_steps=3))
    try:
        world.reset(7)
        obs = world.step(make_action([0.01, 0.0, -0.02]))[0]
        act = L._behaviour_policy(str(policy), world, CEMConfig())
        qf, _ = load_qfunction(policy, threads=1)
        randomized = world.world.render("randomized", randomization_seed=world.steps, labels=False).rgb
        expected = CEMPolicy(qf, seed=0).act(InputEncoder("rcan", gen)({"image": randomized})[None],
                                             state_vector(obs)[None])[0][0]
        np.testing.assert_array_equal(act(obs, world), expected)
        # --behaviour-close-threshold, -hold-check-threshold, -close-gate-last-steps: the behaviour's CEM carries the
        # card's acting options (a tiny network need not close here, so the search's config is recorded as well as
        # its decision compared), and is told the steps left, which the last-steps option refuses to act without.
        import rcan_grasp_policy.cem as cem

        options = []

        class RecordingCEMPolicy(CEMPolicy):
            def __init__(self, qf, cfg=CEMConfig(), *args, **kwargs):
                options.append((cfg.close_threshold, cfg.hold_check_threshold, cfg.close_gate_last_steps))
                super().__init__(qf, cfg, *args, **kwargs)

        def behaviour_cem(**options):
            return L.LabelConfig(behaviour=str(policy), **options).behaviour_cem()

        monkeypatch.setattr(cem, "CEMPolicy", RecordingCEMPolicy)
        gated = L._behaviour_policy(str(policy), world, behaviour_cem(behaviour_close_threshold=0.5))
        last = L._behaviour_policy(str(policy), world, behaviour_cem(
            behaviour_close_threshold=0.5, behaviour_hold_check_threshold=0.1, behaviour_close_gate_last_steps=2))
        monkeypatch.undo()
        assert options == [(0.5, 0.0, 0), (0.5, 0.1, 2)]
        images = InputEncoder("rcan", gen)({"image": randomized})[None]
        expected = CEMPolicy(qf, CEMConfig(close_threshold=0.5), seed=0).act(images, state_vector(obs)[None])[0][0]
        np.testing.assert_array_equal(gated(obs, world), expected)
        expected = CEMPolicy(qf, CEMConfig(close_threshold=0.5, hold_check_threshold=0.1, close_gate_last_steps=2),
                             seed=0).act(images, state_vector(obs)[None], steps_left=2)[0][0]  # 3 steps, 1 taken
        np.testing.assert_array_equal(last(obs, world), expected)
        with pytest.raises(ConfigError, match="behaviour_close_threshold"):
            L.LabelConfig(behaviour_close_threshold=0.5)  # the scripted behaviour has no CEM
        with pytest.raises(ConfigError, match="behaviour_hold_check_threshold"):
            L.LabelConfig(behaviour_hold_check_threshold=0.1)
        with pytest.raises(ConfigError, match="behaviour_close_gate_last_steps"):
            L.LabelConfig(behaviour_close_gate_last_steps=6)
        meta = json.loads(policy.with_suffix(".json").read_text())
        policy.with_suffix(".json").write_text(json.dumps({**meta, "generator": str(tmp_path / "gone.onnx")}))
        with pytest.raises(ConfigError, match="gone.onnx"):
            L._behaviour_policy(str(policy), world, CEMConfig())
        # A policy of another resolution is refused, not fed an image of the wrong size.
        finer = tmp_path / "canonical128.safetensors"
        save_policy(finer, QNetwork(QNetConfig(in_channels=3, image_size=128, width=4, fc_width=8)).eval(),
                    {"variant": "canonical"})
        with pytest.raises(ConfigError, match="--image-size 128"):
            L._behaviour_policy(str(finer), world, CEMConfig())
    finally:
        world.close()


def test_teacher_labels_are_the_canonical_networks_q(tmp_path):
    """--teacher: every candidate's label is the teacher's Q on the stored canonical observation, and a teacher
    that cannot read the labelling env's images is refused by name."""
    import torch

    from rcan_common.config import ConfigError
    from rcan_grasp_policy.backends import load_qfunction, save_policy
    from rcan_grasp_policy.qnet import QNetConfig, QNetwork

    torch.manual_seed(0)
    teacher = tmp_path / "teacher.safetensors"
    save_policy(teacher, QNetwork(QNetConfig(in_channels=3, image_size=32, width=4, fc_width=8)).eval(),
                {"variant": "canonical"})
    out = tmp_path / "labels"
    cfg = L.LabelConfig(out_dir=out, scenes=2, scenes_per_task=2, image_size=32, candidates=6, aimed_candidates=1,
                        teacher=str(teacher), label_prob=1.0, max_steps=4)
    L.run(cfg, progress=False)
    data = L.load_labels(out)
    assert data["candidates"].shape[1:] == (6, 8) and len(data["seed"]) >= 2
    qf, _ = load_qfunction(teacher, threads=1)
    q = qf.score(qf.embed(data["image"], data["state"]), data["candidates"])
    np.testing.assert_allclose(data["labels"], q, atol=1e-5)
    with pytest.raises(ConfigError, match="--image-size 32"):
        L.run(L.LabelConfig(out_dir=tmp_path / "other", scenes=1, image_size=64, teacher=str(teacher)), progress=False)
    with pytest.raises(ConfigError, match="domain"):
        L.LabelConfig(teacher=str(teacher), domain="randomized")
    rcan = tmp_path / "rcan.safetensors"
    save_policy(rcan, QNetwork(QNetConfig(in_channels=6, image_size=32, width=4, fc_width=8)).eval(), {"variant": "rcan"})
    with pytest.raises(ConfigError, match="canonical policy"):
        L.run(L.LabelConfig(out_dir=tmp_path / "r", scenes=1, image_size=32, teacher=str(rcan)), progress=False)


def test_feature_teacher_pulls_the_rcan_trunk_towards_the_canonical_one(tmp_path):
    """--feature-teacher: the student's trunk features on [x, G(x)] are regressed onto the frozen canonical
    network's features on the canonical render of the same (shifted alike) state; the loss is what the trainer
    reports, it falls with training, the teacher stays untouched and is no part of the saved policy; a teacher
    of another shape or a canonical student is refused by name (a domain-randomized one is a student too)."""
    import dataclasses
    from pathlib import Path

    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    from rcan_common.config import ConfigError
    from rcan_grasp_policy import label_train
    from rcan_grasp_policy.backends import save_policy
    from rcan_grasp_policy.inputs import images_to_nchw
    from rcan_grasp_policy.qnet import QNetConfig, QNetwork

    torch.set_num_threads(1)
    gen = str(Path(__file__).resolve().parents[1] / "models" / "generator_64.onnx")
    L.run(L.LabelConfig(out_dir=tmp_path / "lab", scenes=1, split="test", image_size=32, candidates=3, max_steps=3),
          progress=False)
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.safetensors"
    save_policy(teacher, QNetwork(QNetConfig(in_channels=3, image_size=32, width=4, fc_width=8)).eval(),
                {"variant": "canonical"})
    cfg = label_train.LabelTrainConfig(labels=(tmp_path / "lab",), eval_labels=tmp_path / "lab", variant="rcan",
                                       generator=gen, image_size=32, width=4, fc_width=8, batch_states=4,
                                       random_shift=0, feature_teacher=teacher, feature_weight=10.0,
                                       out_dir=tmp_path, run_name="feat")
    tr = label_train.LabelTrainer(cfg)
    before = {k: v.clone() for k, v in tr.teacher.state_dict().items()}
    np.testing.assert_array_equal(tr.train["canonical"], L.load_labels(tmp_path / "lab")["image"])
    rng = np.random.default_rng()
    rng.bit_generator.state = tr.rng.bit_generator.state
    idx = rng.integers(0, len(tr.train["labels"]), cfg.batch_states)  # the batch the first update draws
    with torch.no_grad():
        student = tr.net.embed(torch.from_numpy(images_to_nchw(tr.train["image"][idx])))
        target = tr.teacher.embed(torch.from_numpy(images_to_nchw(tr.train["canonical"][idx])))
    first = tr.update()
    assert first["feature_loss"] == pytest.approx(float(F.mse_loss(student, target)), rel=1e-4)
    losses = [tr.update()["feature_loss"] for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.5 * first["feature_loss"]
    for k, v in tr.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    tr.checkpoint()
    assert not any("teacher" in k for k in load_file(str(tmp_path / "feat" / "checkpoint.safetensors")))
    import json

    from rcan_common.provenance import file_sha256

    meta = json.loads((tmp_path / "feat" / "policy.json").read_text())  # names its G by digest (the launch checks it)
    assert meta["generator"] == gen and meta["generator_sha256"] == file_sha256(gen)
    # rcan check-labels --feature-teacher measures the same error on any label set, without the random shift
    from rcan_grasp_policy import label_check

    with torch.no_grad():
        data = L.load_labels(tmp_path / "lab")
        expected = F.mse_loss(tr.deployed.eval().embed(torch.from_numpy(images_to_nchw(tr.train["image"]))),
                              tr.teacher.embed(torch.from_numpy(images_to_nchw(data["image"]))))
    got = label_check.check(label_check.LabelCheckConfig(policy=str(tmp_path / "feat"), labels=[tmp_path / "lab"],
                                                         feature_teacher=teacher))
    assert got[str(tmp_path / "lab")]["feature_mse"] == pytest.approx(float(expected), abs=1e-4)
    with pytest.raises(ConfigError, match="feature_teacher"):
        label_check.check(label_check.LabelCheckConfig(policy=str(teacher), labels=[tmp_path / "lab"],
                                                       feature_teacher=teacher))
    assert set(load_file(str(tmp_path / "feat" / "policy.safetensors"))) == set(tr.net.state_dict())
    wide = tmp_path / "wide.safetensors"
    save_policy(wide, QNetwork(QNetConfig(in_channels=3, image_size=32, width=5, fc_width=8)).eval(),
                {"variant": "canonical"})
    with pytest.raises(ConfigError, match="feature_teacher"):
        label_train.LabelTrainer(dataclasses.replace(cfg, feature_teacher=wide))
    with pytest.raises(ConfigError, match="feature_teacher"):
        label_train.LabelTrainConfig(variant="canonical", feature_teacher=teacher)
    label_train.LabelTrainConfig(variant="dr-heavy", feature_teacher=teacher)


def test_a_new_generator_reuses_the_randomized_renders_of_another_generators_cache(tmp_path, monkeypatch):
    """Changing G re-runs G only: the x half comes from the other cache, and equals a fresh render."""
    from pathlib import Path

    from rcan_common.provenance import file_sha256

    from tiny_models import export_tiny_generator

    shipped = Path(__file__).resolve().parents[1] / "models" / "generator_64.onnx"
    tiny = export_tiny_generator(tmp_path / "tiny_g.onnx", size=32)
    L.run(L.LabelConfig(out_dir=tmp_path / "lab", scenes=1, split="test", image_size=32, candidates=3,
                        max_steps=2, label_prob=1.0), progress=False)
    data = L.load_labels(tmp_path / "lab")
    first = L.policy_images(tmp_path / "lab", data, "rcan", str(shipped))
    narrow = L.policy_images(tmp_path / "lab", data, "rcan", str(shipped), camera_fov_deg=24)
    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    for f in (tmp_path / "lab").glob("[lm]*"):  # the shards and the manifest, no image cache
        (fresh_dir / f.name).write_bytes(f.read_bytes())
    rendered = L.policy_images(fresh_dir, data, "rcan", str(tiny))
    monkeypatch.setattr(L, "_render_inputs", None)  # a render now would fail
    reused = L.policy_images(tmp_path / "lab", data, "rcan", str(tiny))
    np.testing.assert_array_equal(reused, rendered)
    for made in (tmp_path / "lab").glob(f"images-rcan-32-{file_sha256(tiny)[:12]}-*.npy"):
        made.unlink()  # once more, G in two processes
    np.testing.assert_array_equal(L.policy_images(tmp_path / "lab", data, "rcan", str(tiny), workers=2), rendered)
    np.testing.assert_array_equal(reused[..., :3], first[..., :3])
    assert not np.array_equal(reused[..., 3:], first[..., 3:])
    # a narrower view's cache is another set of renders: it is not lent to the full view, nor taken from it
    assert not np.array_equal(narrow[..., :3], first[..., :3])
    assert len(list((tmp_path / "lab").glob("images-rcan-32-*.npy"))) == 3
    key = L._records_key(data)
    only_narrow = tmp_path / "only_narrow"
    only_narrow.mkdir()
    (only_narrow / f"images-rcan-32-fov24-{'a' * 12}-{key}.npy").write_bytes(b"")
    assert L._rendered_sources(only_narrow / f"images-rcan-32-{'b' * 12}-{key}.npy") is None


def test_nearest_object_reference_scores_by_distance_to_the_closest_hull_centre():
    """check-labels --policy nearest-object: minus the distance from each candidate's end to the nearest centre."""
    from rcan_common.action import make_action
    from rcan_grasp_policy.labels import nearest_object_scores
    from rcan_sim.scripted import object_centre_xy

    poses = np.array([[[0.5, 0.0, -0.15, 0, 0, 0, 1], [0.7, 0.1, -0.15, 0, 0, 0.3826834, 0.9238795]]])
    ids = np.array([[3, 8]])
    centres = [object_centre_xy(int(i), p[:3], p[3:]) for i, p in zip(ids[0], poses[0])]
    target = np.array([[centres[0][0] - 0.02, centres[0][1], 0.1]])
    candidates = np.stack([make_action([0.02, 0.0, -0.05]), make_action([0.0, 0.0, 0.0]),
                           make_action([*(centres[1] - target[0, :2]), 0.0], 0.3)])[None]
    scores = nearest_object_scores({"object_ids": ids, "object_poses": poses, "target": target,
                                    "candidates": candidates})
    np.testing.assert_allclose(scores, [[0.0, -0.02, 0.0]], atol=1e-6)


def test_committed_label_sets_are_packed_and_complete():
    # datasets/labels/ holds packed sets only (images would make them ten times larger) with their manifest
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "datasets" / "labels"
    sets = sorted(p for p in root.iterdir() if p.is_dir())
    assert sets, "no committed label sets"
    for d in sets:
        settings = L.label_settings(d)
        shards = sorted(d.glob("labels-*.npz"))
        assert shards, d
        for shard in shards:
            with np.load(shard) as z:
                assert "image" not in z.files, f"{shard} holds images: run `rcan pack-labels --src {d}`"
                assert z["candidates"].shape[1:] == (settings["candidates"], 8), shard
