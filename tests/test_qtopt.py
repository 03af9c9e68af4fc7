"""QT-Opt pieces: clipped double-Q Bellman target, Polyak averaging, replay, update, checkpoint state."""
import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # several test processes share 2 cores; OpenMP spinning makes >1 thread slower

from rcan_grasp_policy.backends import TorchQFunction
from rcan_grasp_policy.cem import CEMConfig, random_actions
from rcan_grasp_policy.qnet import QNetConfig, QNetwork
from rcan_grasp_policy.qtopt import QTOpt, QTOptConfig, bellman_target, polyak_update, shift_images
from rcan_grasp_policy.replay import ReplayBuffer, Transitions, returns_to_go


def test_bellman_target_hand_computed():
    r = torch.tensor([-0.05, 1.0, 0.0, -0.05, -0.05])
    done = torch.tensor([False, True, True, False, False])
    q1 = torch.tensor([0.8, 0.9, 0.9, 0.2, 0.0])
    q2 = torch.tensor([0.6, 0.9, 0.9, 0.7, 0.5])
    t = bellman_target(r, done, q1, q2, gamma=0.9)
    # row 0: -0.05 + 0.9*min(0.8, 0.6) = 0.49; terminal rows: r; row 3: -0.05 + 0.9*0.2 = 0.13; row 4 clipped to 0.
    np.testing.assert_allclose(t.numpy(), [0.49, 1.0, 0.0, 0.13, 0.0], atol=1e-6)


def test_polyak_update_params_and_batchnorm_buffers():
    cfg = QNetConfig(in_channels=3, image_size=32, width=4, fc_width=8)
    torch.manual_seed(0)
    a, b = QNetwork(cfg), QNetwork(cfg)
    for m in b.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(1.0)
            m.num_batches_tracked.fill_(5)
    pa, pb = [p.clone() for p in a.parameters()], [p.clone() for p in b.parameters()]
    polyak_update(a, b, tau=0.25)
    for x, y, z in zip(a.parameters(), pa, pb):
        torch.testing.assert_close(x, 0.75 * y + 0.25 * z)
    bn = a.trunk[1]
    torch.testing.assert_close(bn.running_mean, torch.full_like(bn.running_mean, 0.25))
    assert int(bn.num_batches_tracked) == 5


def _transitions(n, rng, c=3, s=32):
    return Transitions(
        image=rng.integers(0, 256, (n, s, s, c), dtype=np.uint8), state=rng.random((n, 2), dtype=np.float32),
        action=rng.standard_normal((n, 8)).astype(np.float32), reward=rng.choice([-0.05, 0.0, 1.0], n).astype(np.float32),
        done=rng.random(n) < 0.3, next_image=rng.integers(0, 256, (n, s, s, c), dtype=np.uint8),
        next_state=rng.random((n, 2), dtype=np.float32), source=rng.integers(0, 2, n).astype(np.uint8),
        mc_return=rng.random(n, dtype=np.float32))


def test_replay_ring_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(10, (32, 32, 3))
    first, second = _transitions(7, rng), _transitions(6, rng)
    buf.add(first)
    buf.add(second)
    assert (len(buf), buf.pos, buf.total_added) == (10, 3, 13)
    # Slots 0..2 were overwritten by the last three of `second`.
    np.testing.assert_array_equal(buf.image[:3], second.image[3:])
    np.testing.assert_array_equal(buf.image[3:7], first.image[3:])
    buf.save(tmp_path / "r.npz")
    back = ReplayBuffer.load(tmp_path / "r.npz", gamma=0.9)
    assert (back.capacity, back.pos, back.size, back.total_added) == (10, 3, 10, 13)
    for f in Transitions.FIELDS:
        np.testing.assert_array_equal(getattr(back, f), getattr(buf, f))
    s1, s2 = buf.sample(4, np.random.default_rng(3)), back.sample(4, np.random.default_rng(3))
    np.testing.assert_array_equal(s1.next_image, s2.next_image)
    with pytest.raises(ValueError, match="replay holds"):
        buf.add(_transitions(1, rng, c=6))


def _algo(seed=0, **algo_options):
    torch.manual_seed(seed)
    net = QNetwork(QNetConfig(in_channels=3, image_size=32, width=4, fc_width=8))
    return QTOpt(net, QTOptConfig(batch_size=8, target2_lag=2, target_cem=CEMConfig(samples=8, elites=2), **algo_options))


def _calibrate_batchnorm(net: QNetwork, rng: np.random.Generator, bounds) -> None:
    """Give BatchNorm running statistics from one train-mode pass on random data.  A fresh network in eval
    mode (mean 0, var 1) gives the same Q to every action (std ~1e-8), so nothing about a search can show."""
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the stats of this one pass
    t = _transitions(32, rng)
    actions = torch.from_numpy(random_actions(32 * 8, bounds, rng).reshape(32, 8, -1)).float()
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(t.image).permute(0, 3, 1, 2).float() / 255.0, torch.from_numpy(t.state), actions)
    net.eval()


def test_next_q_uses_cem_argmax_of_target1_and_both_targets():
    algo = _algo()
    _calibrate_batchnorm(algo.target1, np.random.default_rng(7), algo.bounds)
    algo.target2.load_state_dict(algo.target1.state_dict())
    batch = _transitions(6, np.random.default_rng(1))
    q1, q2 = algo.next_q(batch, np.random.default_rng(0))
    assert (q1[torch.from_numpy(batch.done)] == 0).all() and (q2[torch.from_numpy(batch.done)] == 0).all()
    live = ~batch.done
    # a* maximises target 1 over its CEM samples, so Q_target1(s', a*) >= Q_target1(s', a_random) on average:
    # score 256 uniformly random actions per live next state with target 1 and compare.
    t1 = TorchQFunction(algo.target1)
    ctx = t1.embed(batch.next_image[live], batch.next_state[live])
    n_live, k = int(live.sum()), 256
    rand = random_actions(n_live * k, algo.bounds, np.random.default_rng(5)).reshape(n_live, k, -1)
    q_rand = t1.score(ctx, rand)
    assert q_rand.shape == (n_live, k) and q_rand.std(axis=1).min() > 1e-4  # Q varies with the action
    assert (q1.numpy()[live] >= q_rand.mean(axis=1)).all()
    # ... and a* is near the top of the random actions too (a random pick would sit at the median).
    assert (q1.numpy()[live][:, None] >= q_rand).mean(axis=1).min() > 0.75
    # Identical targets give identical values (q2 is target 2 at target 1's a*); a perturbed target 2 changes q2 only.
    torch.testing.assert_close(q2, q1)
    with torch.no_grad():
        algo.target2.head_fc[-1].bias.add_(-3.0)
    q1b, q2b = algo.next_q(batch, np.random.default_rng(0))
    torch.testing.assert_close(q1b, q1)
    assert (q2b.numpy()[live] < q1b.numpy()[live]).all()


def test_update_learns_and_state_round_trips():
    rng = np.random.default_rng(0)
    batch = _transitions(8, rng)
    algo = _algo()
    before = [p.clone() for p in algo.target1.parameters()]
    losses = [algo.update(batch, np.random.default_rng(i))["loss"] for i in range(20)]
    assert losses[-1] < losses[0]
    assert algo.updates == 20
    assert any(not torch.equal(a, b) for a, b in zip(before, algo.target1.parameters()))
    # target 2 is a copy of target 1 taken every target2_lag (=2) updates; 20 is a multiple.
    for a, b in zip(algo.target1.state_dict().values(), algo.target2.state_dict().values()):
        torch.testing.assert_close(a, b)
    tensors, extra = algo.state_tensors()
    other = _algo(seed=1)
    other.load_state_tensors(tensors, extra)
    assert other.updates == 20
    m1 = algo.update(batch, np.random.default_rng(99))
    m2 = other.update(batch, np.random.default_rng(99))
    assert m1 == pytest.approx(m2, rel=1e-5)


def test_returns_to_go_hand_computed():
    # two episodes: [-0.05, -0.05, 1] (success) and [-0.05, 0] (failure), then an unfinished one
    r = np.array([-0.05, -0.05, 1.0, -0.05, 0.0, -0.05], np.float32)
    done = np.array([False, False, True, False, True, False])
    np.testing.assert_allclose(returns_to_go(r, done, 0.9),
                               [-0.05 + 0.9 * (-0.05 + 0.9), -0.05 + 0.9, 1.0, -0.05, 0.0, -0.05], atol=1e-6)


def test_replay_without_mc_return_gets_it_recomputed_in_write_order(tmp_path):
    """Replays saved before `mc_return` existed: recomputed per episode, across the ring's wrap-around."""
    buf = ReplayBuffer(5, (4, 4, 3))
    rng = np.random.default_rng(0)
    t = _transitions(7, rng, s=4)
    t.reward[:] = [-0.05, 1.0, -0.05, -0.05, -0.05, -0.05, 1.0]
    t.done[:] = [False, True, False, False, False, False, True]
    buf.add(t)  # ring now holds transitions 2..6 at slots 2,3,4,0,1
    legacy = {f: getattr(buf, f) for f in Transitions.FIELDS if f != "mc_return"}
    np.savez(tmp_path / "old.npz", **legacy, meta=np.array([5, buf.pos, buf.size, buf.total_added], np.int64))
    back = ReplayBuffer.load(tmp_path / "old.npz", gamma=0.5)
    expected = returns_to_go(t.reward[2:], t.done[2:], 0.5)  # one episode of 5 steps ending in success
    np.testing.assert_allclose(back.mc_return[[2, 3, 4, 0, 1]], expected, atol=1e-6)
    assert expected[0] == pytest.approx(-0.05 * (1 + 0.5 + 0.25 + 0.125) + 0.5 ** 4)


def test_mc_lower_bound_raises_targets_to_the_episode_return():
    batch = _transitions(8, np.random.default_rng(2))
    batch.done[:] = False
    batch.reward[:] = -0.05
    batch.mc_return[:] = 0.7  # what the data policy achieved from these states
    plain, bounded = _algo(), _algo(mc_lower_bound=True)
    t_plain = plain.update(batch, np.random.default_rng(0))["target_mean"]
    t_bounded = bounded.update(batch, np.random.default_rng(0))["target_mean"]
    assert t_plain < 0.7 - 1e-3  # a fresh network's Bellman targets are below the bound ...
    assert t_bounded == pytest.approx(0.7, abs=1e-6)  # ... which the option lifts them to


def test_shift_images_translates_with_edge_replication():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 8, 8, 2), dtype=np.uint8)
    assert shift_images(images, 0, rng) is images
    out = shift_images(images, 2, np.random.default_rng(1))
    assert out.shape == images.shape and out.dtype == np.uint8
    offsets = np.random.default_rng(1).integers(0, 5, size=(16, 2)) - 2  # the same draws: (dy, dx) - pad
    for img, got, (dy, dx) in zip(images, out, offsets):
        # pixel (y, x) of the output is the input's (y + dy, x + dx), clamped to the border
        ys = np.clip(np.arange(8) + dy, 0, 7)
        xs = np.clip(np.arange(8) + dx, 0, 7)
        np.testing.assert_array_equal(got, img[ys][:, xs])
    assert any((dy, dx) != (0, 0) for dy, dx in offsets) and not np.array_equal(out, images)
