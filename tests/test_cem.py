"""CEM over a known synthetic Q: finds the optimum, is seeded, handles the discrete parts."""
import numpy as np
import pytest

from rcan_common.config import ConfigError
from rcan_grasp_policy.cem import (CHECK_LIFT, HOLD_CHECK_LIFT, LIFT_NOW, REOPEN, CEMConfig, CEMPolicy,
                                  SearchDistribution, build_actions, cem_regret, cem_search, dense_candidates, refit,
                                  sample)
from rcan_common.action import CLOSE, COS, OPEN, SIN, TERMINATE, ActionBounds

BOUNDS = ActionBounds(max_translation=0.05, max_rotation=0.5)


class QuadraticQ:
    """Q peaks at a per-state translation/angle goal with gripper 'close' and terminate=0."""

    def __init__(self, goals):
        self.goals = np.asarray(goals)  # (B, 4): dx, dy, dz, dtheta
        self.calls = 0

    def embed(self, images, state):
        return self.goals

    def score(self, goals, actions):
        self.calls += 1
        theta = np.arctan2(actions[..., SIN], actions[..., COS])
        cont = np.concatenate([actions[..., :3], theta[..., None]], axis=-1)
        scale = np.array([0.05, 0.05, 0.05, 0.5])
        dist2 = (((cont - goals[:, None]) / scale) ** 2).sum(-1)
        bonus = 0.5 * actions[..., CLOSE] - 0.5 * actions[..., OPEN] - 0.5 * actions[..., TERMINATE]
        return 1.0 / (1.0 + np.exp(-(2.0 - dist2 + bonus)))


def test_finds_the_maximum_of_a_quadratic():
    goals = np.array([[0.02, -0.03, 0.01, 0.3], [-0.04, 0.0, -0.02, -0.2]])
    qf = QuadraticQ(goals)
    actions, q = cem_search(qf, qf.embed(None, None), 2, np.random.default_rng(0),
                            CEMConfig(samples=256, elites=16, iterations=4), BOUNDS)
    theta = np.arctan2(actions[:, SIN], actions[:, COS])
    np.testing.assert_allclose(actions[:, :3], goals[:, :3], atol=0.01)
    np.testing.assert_allclose(theta, goals[:, 3], atol=0.12)
    assert (actions[:, CLOSE] == 1).all() and (actions[:, OPEN] == 0).all() and (actions[:, TERMINATE] == 0).all()
    assert qf.calls == 4
    # The default QT-Opt setting (64 x 6 x 2) does much better than random guessing.
    qf = QuadraticQ(goals)
    _, q_default = cem_search(qf, goals, 2, np.random.default_rng(1), CEMConfig(), BOUNDS)
    rand = qf.score(goals, build_actions(np.random.default_rng(2).uniform(-0.05, 0.05, (2, 64, 4)),
                                         np.zeros((2, 64), int), np.zeros((2, 64), bool)))
    assert (q_default > np.median(rand, axis=1)).all()


def test_seeded_determinism():
    goals = np.array([[0.01, 0.01, 0.0, 0.1]])
    runs = [cem_search(QuadraticQ(goals), goals, 1, np.random.default_rng(s), CEMConfig(), BOUNDS)[0] for s in (7, 7, 8)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_discrete_parts_are_exact_one_hot_and_refit_from_elites():
    rng = np.random.default_rng(0)
    dist = SearchDistribution.initial(3, CEMConfig(), BOUNDS)
    cont, grip, term = sample(dist, 500, BOUNDS, rng)
    a = build_actions(cont, grip, term)
    assert set(np.unique(a[..., CLOSE])) <= {0.0, 1.0} and set(np.unique(a[..., TERMINATE])) <= {0.0, 1.0}
    assert (a[..., CLOSE] + a[..., OPEN] <= 1).all()
    np.testing.assert_allclose(a[..., SIN] ** 2 + a[..., COS] ** 2, 1.0, atol=1e-6)
    assert np.abs(cont[..., :3]).max() <= 0.05 and np.abs(cont[..., 3]).max() <= 0.5
    # All three gripper classes appear with roughly uniform initial probabilities.
    freq = np.bincount(grip.ravel(), minlength=3) / grip.size
    np.testing.assert_allclose(freq, 1 / 3, atol=0.05)
    # Refit: elites are chosen as all 'open' -> probability 1 for open; terminate as observed.
    elite = np.argsort(-(grip == 2).astype(float) - 0.001 * term, axis=1, kind="stable")[:, :6]
    new = refit(cont, grip, term, elite, CEMConfig(min_discrete_prob=0.0), BOUNDS)
    np.testing.assert_allclose(new.gripper_probs, [[0, 0, 1]] * 3)
    assert (new.std >= 0.05 * np.array([0.05, 0.05, 0.05, 0.5]) - 1e-12).all()
    cont2, grip2, _ = sample(new, 100, BOUNDS, rng)
    assert (grip2 == 2).all()


def test_policy_validates_and_explores():
    n = 200
    qf = QuadraticQ(np.tile([0.02, -0.01, 0.0, 0.2], (n, 1)))
    images, state = np.zeros((n, 8, 8, 3), np.uint8), np.zeros((n, 2), np.float32)
    greedy, _ = CEMPolicy(qf, CEMConfig(), BOUNDS, seed=0).act(images, state)
    explore, _ = CEMPolicy(qf, CEMConfig(), BOUNDS, seed=0, epsilon=1.0).act(images, state)
    assert explore.shape == (n, 8)
    # epsilon = 1: every action is the random one, not CEM's, spread over the whole bounds.
    assert (np.abs(explore[:, :3] - greedy[:, :3]).max(axis=1) > 1e-3).all()
    np.testing.assert_allclose(greedy[:, :3].mean(0), [0.02, -0.01, 0.0], atol=0.01)
    for lo, hi in ((explore[:, :3].min(0), explore[:, :3].max(0)),):
        assert (lo < -0.04).all() and (hi > 0.04).all() and (np.abs(explore[:, :3]) <= 0.05).all()
    theta = np.arctan2(explore[:, SIN], explore[:, COS])
    assert theta.min() < -0.4 and theta.max() > 0.4 and np.abs(theta).max() <= 0.5 + 1e-6
    assert set(np.unique(explore[:, CLOSE] + 2 * explore[:, OPEN])) == {0.0, 1.0, 2.0}
    pol = CEMPolicy(qf, CEMConfig(), BOUNDS, seed=0, epsilon=1.0)
    with pytest.raises(ValueError, match="uint8"):
        pol.act(np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="elites"):
        CEMConfig(samples=4, elites=6)
    with pytest.raises(ConfigError, match="min_discrete_prob"):
        CEMConfig(min_discrete_prob=0.4)
    with pytest.raises(ConfigError, match="shrunk_fraction"):
        CEMConfig(shrunk_fraction=1.5)


def test_refit_floor_keeps_every_discrete_option():
    """Elites that are all 'open' and never terminate: one refit still leaves every option at >= the floor."""
    rng = np.random.default_rng(0)
    cfg = CEMConfig(min_discrete_prob=0.05)
    cont, grip, term = sample(SearchDistribution.initial(2, cfg, BOUNDS), 300, BOUNDS, rng)
    elite = np.argsort(-((grip == 2) & ~term).astype(float), axis=1, kind="stable")[:, :6]
    assert (grip[np.arange(2)[:, None], elite] == 2).all() and not term[np.arange(2)[:, None], elite].any()
    new = refit(cont, grip, term, elite, cfg, BOUNDS)
    np.testing.assert_allclose(new.gripper_probs, [[0.05, 0.05, 0.9]] * 2)
    np.testing.assert_allclose(new.gripper_probs.sum(1), 1.0)
    np.testing.assert_allclose(new.terminate_prob, 0.05)
    _, grip2, term2 = sample(new, 2000, BOUNDS, rng)
    assert set(np.unique(grip2)) == {0, 1, 2} and term2.any()
    # All-terminate elites: the terminate probability stops at 1 - floor.
    elite = np.argsort(-term.astype(float), axis=1, kind="stable")[:, :6]
    np.testing.assert_allclose(refit(cont, grip, term, elite, cfg, BOUNDS).terminate_prob, 0.95)


def test_shrunk_candidates_cover_zero_motion_options_without_extra_random_numbers():
    cfg = CEMConfig()
    assert cfg.shrunk_samples == 8 and CEMConfig(shrunk_fraction=0).shrunk_samples == 0
    dist = SearchDistribution.initial(3, cfg, BOUNDS)
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    plain = sample(dist, 64, BOUNDS, r1)
    cont, grip, term = sample(dist, 64, BOUNDS, r2, shrunk=8, shrunk_scale=0.1)
    assert r1.random() == r2.random()  # same count of random numbers drawn
    np.testing.assert_array_equal(cont[:, :56], plain[0][:, :56])
    np.testing.assert_array_equal(cont[:, 56], 0.0)  # exactly zero motion, close
    assert (np.abs(cont[:, 56:]) <= 0.1 * np.abs(plain[0][:, 56:]) + 1e-12).all()
    assert (grip[:, 56] == 1).all() and not term[:, 56].any()  # close
    assert (grip[:, 57] == 0).all() and term[:, 57].all()  # terminate
    assert {(g, t) for g, t in zip(grip[0, 56:62], term[0, 56:62])} == {(g, t) for g in range(3) for t in (False, True)}


class PlantedQ:
    """A narrow optimum where the data puts it: Q = 0.9 exp(-|t - c| / 5 mm) exp(-|dtheta - c_theta| / 0.05 rad)
    for close without terminate (or, per state, terminate without a gripper command), c within 2 mm of zero
    motion; 0.05 everywhere else."""

    def __init__(self, centres, kinds):
        self.centres, self.kinds = np.asarray(centres), np.asarray(kinds)  # (B, 4); (B,) 0 close, 1 terminate

    def embed(self, images, state):
        return None

    def score(self, ctx, actions):
        theta = np.arctan2(actions[..., SIN], actions[..., COS])
        c = self.centres[:, None]
        dist = np.linalg.norm(actions[..., :3] - c[..., :3], axis=-1)
        peak = 0.9 * np.exp(-dist / 0.005) * np.exp(-np.abs(theta - c[..., 3]) / 0.05)
        close = (actions[..., CLOSE] == 1) & (actions[..., TERMINATE] == 0)
        term = (actions[..., CLOSE] == 0) & (actions[..., OPEN] == 0) & (actions[..., TERMINATE] == 1)
        right = np.where(self.kinds[:, None] == 0, close, term)
        return np.where(right, np.maximum(peak, 0.05), 0.05)


def planted_hit_rate(cfg, trials=100, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.concatenate([rng.uniform(-0.002, 0.002, (trials, 3)), rng.uniform(-0.02, 0.02, (trials, 1))], 1)
    qf = PlantedQ(centres, np.arange(trials) % 2)
    _, q = cem_search(qf, None, trials, np.random.default_rng(seed + 1), cfg, BOUNDS)
    return float((q >= 0.3).mean())  # on the peak (a third of its height); off it everything scores 0.05


def test_cem_reaches_a_planted_narrow_optimum():
    """The default 64 x 6 x 2 search finds a close / terminate peaked within millimetres of zero motion; the
    paper's CEM (no floor, no shrunk candidates) almost never does."""
    new = planted_hit_rate(CEMConfig())
    old = planted_hit_rate(CEMConfig(min_discrete_prob=0.0, shrunk_fraction=0.0))
    assert new >= 0.9
    assert old <= 0.2


class NoisyCopy:
    """Another backend's view of the same Q: equal up to float noise of the size torch vs ORT show."""

    def __init__(self, qf, noise: float, seed: int):
        self.qf, self.noise, self.rng = qf, noise, np.random.default_rng(seed)

    def embed(self, images, state):
        return self.qf.embed(images, state)

    def score(self, ctx, actions):
        q = self.qf.score(ctx, actions)
        return q + self.rng.uniform(-self.noise, self.noise, q.shape)


def test_backend_float_noise_cannot_change_the_decision():
    """A saturated Q (many candidates tied at ~1) plus 1e-7 noise: both 'backends' pick the same actions."""
    saturated = QuadraticQ(np.array([[0.0, 0.0, 0.0, 0.0]] * 3))
    saturated.score = lambda goals, actions, f=saturated.score: np.minimum(f(goals, actions) * 1.5, 1.0)
    a = NoisyCopy(saturated, 1e-7, seed=1)
    b = NoisyCopy(saturated, 1e-7, seed=2)
    act_a, _ = cem_search(a, a.embed(None, None), 3, np.random.default_rng(0), CEMConfig(), BOUNDS)
    act_b, _ = cem_search(b, b.embed(None, None), 3, np.random.default_rng(0), CEMConfig(), BOUNDS)
    np.testing.assert_array_equal(act_a, act_b)


def test_cem_regret_against_a_dense_candidate_set():
    d = dense_candidates(1024, BOUNDS)
    assert d.shape == (1024, 8) and (np.abs(d[:, :3]) <= 0.05).all()
    np.testing.assert_array_equal(d[:6, :3], 0.0)  # zero-motion close, terminate, ... first
    np.testing.assert_array_equal(d, dense_candidates(1024, BOUNDS))  # the same set every call
    assert (np.abs(d[:, :3]).max(axis=1) <= 0.01).sum() >= 400  # half of it near zero motion
    rng = np.random.default_rng(3)
    centres = np.concatenate([rng.uniform(-0.002, 0.002, (20, 3)), np.zeros((20, 1))], 1)
    qf = PlantedQ(centres, np.arange(20) % 2)
    old = cem_regret(qf, None, 20, None, np.random.default_rng(0),
                     CEMConfig(min_discrete_prob=0.0, shrunk_fraction=0.0), BOUNDS)
    new = cem_regret(qf, None, 20, None, np.random.default_rng(0), CEMConfig(), BOUNDS, chunk=100)
    assert old.ratio.shape == (20,) and ((old.ratio >= 0) & (old.ratio <= 1)).all()
    assert np.median(old.ratio) < 0.2 < 0.6 < np.median(new.ratio)
    assert (old.q_best > 0.4).all() and (new.best_actions[:, CLOSE] + new.best_actions[:, TERMINATE] == 1).all()
    # Given candidates (e.g. labelled actions) enter the maximum: the exact optimum makes it 0.9.
    exact = build_actions(centres[:, None], 1 - np.arange(20)[:, None] % 2, (np.arange(20) % 2 == 1)[:, None])
    with_labels = cem_regret(qf, None, 20, exact, np.random.default_rng(0), CEMConfig(), BOUNDS)
    np.testing.assert_allclose(with_labels.q_best, 0.9, atol=1e-6)


class CloseOrMoveQ:
    """Q = `close_q` for any close (the peak of a sure grasp is elsewhere), 0.3 for every other action."""

    def __init__(self, close_q):
        self.close_q = np.asarray(close_q, dtype=float)  # (B,)

    def embed(self, images, state):
        return None

    def score(self, ctx, actions):
        return np.where(actions[..., CLOSE] == 1, self.close_q[:, None], 0.3)


def test_close_gate_holds_back_low_q_closes_of_an_open_gripper_only():
    """close_threshold 0.5: a close at Q 0.4 loses to a move at 0.3 while the gripper is open, and is taken when
    the gripper is closed (the gate is for opening a grasp, not for a no-op); a close at 0.6 passes.  The Q
    reported is the network's, not the gated rank."""
    qf = CloseOrMoveQ([0.4, 0.4, 0.6])
    gripper_open = np.array([True, False, True])
    gated = CEMConfig(close_threshold=0.5)
    actions, q = cem_search(qf, None, 3, np.random.default_rng(0), gated, BOUNDS, gated=gripper_open)
    assert actions[:, CLOSE].tolist() == [0.0, 1.0, 1.0]
    np.testing.assert_allclose(q, [0.3, 0.4, 0.6])
    ungated, _ = cem_search(qf, None, 3, np.random.default_rng(0), CEMConfig(), BOUNDS, gated=gripper_open)
    assert ungated[:, CLOSE].tolist() == [1.0, 1.0, 1.0]
    # Without the gripper state there is no gate, and off (0) it is the search without it, bit for bit.
    blind, _ = cem_search(qf, None, 3, np.random.default_rng(0), gated, BOUNDS)
    np.testing.assert_array_equal(blind, ungated)
    # CEMPolicy reads the gripper from the state vector (gripper_open, gripper_height).
    policy = CEMPolicy(qf, gated, BOUNDS, seed=0)
    acted, _ = policy.act(np.zeros((3, 8, 8, 3), np.uint8), np.array([[1.0, 0.1], [0.0, 0.1], [1.0, 0.1]], np.float32))
    assert acted[:, CLOSE].tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="close_threshold"):
        CEMConfig(close_threshold=1.5)


def test_close_gate_stands_down_in_the_last_steps():
    """close_gate_last_steps 3: the gated close at Q 0.4 loses to the move with 4 steps left and is taken with 3 or
    fewer; without the steps left the option refuses to act rather than act as if the gate held."""
    qf = CloseOrMoveQ([0.4, 0.4, 0.4])
    images, opened = np.zeros((3, 8, 8, 3), np.uint8), np.array([[1.0, 0.1]] * 3, np.float32)
    policy = CEMPolicy(qf, CEMConfig(close_threshold=0.5, close_gate_last_steps=3), BOUNDS, seed=0)
    acted, q = policy.act(images, opened, steps_left=np.array([4, 3, 1]))
    assert acted[:, CLOSE].tolist() == [0.0, 1.0, 1.0]
    np.testing.assert_allclose(q, [0.3, 0.4, 0.4])
    assert policy.act(images, opened, steps_left=5)[0][:, CLOSE].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="steps left"):
        policy.act(images, opened)
    assert CEMConfig(close_threshold=0.55, close_gate_last_steps=6).acting_summary() == \
        ", close gate 0.55, ungated last steps 6"
    with pytest.raises(ConfigError, match="close_gate_last_steps"):
        CEMConfig(close_gate_last_steps=-1)


class TerminateQ:
    """Q = `terminate_q` (B,) for a terminate that leaves the gripper as it is, 0.2 for every other action: CEM's
    pick is such a terminate."""

    def __init__(self, terminate_q):
        self.terminate_q = np.asarray(terminate_q, dtype=float)

    def embed(self, images, state):
        return None

    def score(self, ctx, actions):
        plain = (actions[..., TERMINATE] == 1) & (actions[..., CLOSE] == 0) & (actions[..., OPEN] == 0)
        return np.where(plain, self.terminate_q[:, None], 0.2)


def test_hold_check_lifts_before_terminating_and_reopens_what_the_network_judges_empty():
    """hold_check_threshold 0.5: with the gripper closed, CEM's terminate becomes a 5 cm lift; on the next state
    Q(terminate, zero motion) decides: 0.8 terminates, 0.3 reopens where it is.  An open gripper (a new episode,
    or reopened) starts over; off (0), the picks are CEM's."""
    images = np.zeros((2, 8, 8, 3), np.uint8)
    closed = np.array([[0.0, 0.02], [0.0, 0.02]], np.float32)
    qf = TerminateQ([0.8, 0.3])
    policy = CEMPolicy(qf, CEMConfig(hold_check_threshold=0.5), BOUNDS, seed=0)
    lift, q = policy.act(images, closed)
    np.testing.assert_array_equal(lift, np.stack([CHECK_LIFT, CHECK_LIFT]))
    assert lift[0, 2] == HOLD_CHECK_LIFT and q.tolist() == pytest.approx([0.2, 0.2])  # the Q of what is sent
    decided, q = policy.act(images, closed)
    np.testing.assert_array_equal(decided, np.stack([LIFT_NOW, REOPEN]))
    np.testing.assert_allclose(q, [0.8, 0.2])
    # the reopened state (gripper open) and a new episode start without a pending check
    again, _ = policy.act(images, np.array([[1.0, 0.07], [0.0, 0.02]], np.float32))
    assert again[0, TERMINATE] == 1  # open gripper: a terminate is not checked
    np.testing.assert_array_equal(again[1], CHECK_LIFT)  # closed, no pending check: check again
    assert CEMConfig(close_threshold=0.55, hold_check_threshold=0.1).acting_summary() == ", close gate 0.55, hold check 0.1"
    assert CEMConfig().acting_summary() == ""
    off, _ = CEMPolicy(qf, CEMConfig(), BOUNDS, seed=0).act(images, closed)
    assert off[:, TERMINATE].tolist() == [1.0, 1.0]
    with pytest.raises(ConfigError, match="hold_check_threshold"):
        CEMConfig(hold_check_threshold=-0.1)


def test_hold_check_closes_first_when_a_pick_closes_and_terminates_at_once():
    class CloseTerminateQ:
        def embed(self, images, state):
            return None

        def score(self, ctx, actions):
            return np.where((actions[..., CLOSE] == 1) & (actions[..., TERMINATE] == 1), 0.9, 0.1)

    policy = CEMPolicy(CloseTerminateQ(), CEMConfig(hold_check_threshold=0.5), BOUNDS, seed=0)
    images = np.zeros((1, 8, 8, 3), np.uint8)
    closing, _ = policy.act(images, np.array([[1.0, 0.02]], np.float32))
    assert closing[0, CLOSE] == 1 and closing[0, TERMINATE] == 0
    lift, _ = policy.act(images, np.array([[0.0, 0.02]], np.float32))  # lifted next, whatever CEM picks
    np.testing.assert_array_equal(lift[0], CHECK_LIFT)
    decided, _ = policy.act(images, np.array([[0.0, 0.07]], np.float32))  # Q(terminate alone) 0.1: reopen
    np.testing.assert_array_equal(decided[0], REOPEN)


def test_policy_node_parameter_sets_the_close_gate():
    from rcan_grasp_policy.policy_params import PolicyNodeParams

    assert PolicyNodeParams().cem_config().close_threshold == 0.0  # off unless the card's value is configured
    assert PolicyNodeParams(cem_close_threshold=0.55).cem_config().close_threshold == 0.55
    assert PolicyNodeParams().cem_config().hold_check_threshold == 0.0
    assert PolicyNodeParams(cem_hold_check_threshold=0.1).cem_config().hold_check_threshold == 0.1
    assert PolicyNodeParams(cem_close_gate_last_steps=6).cem_config().close_gate_last_steps == 6
    with pytest.raises(ConfigError, match="close_gate_last_steps"):
        PolicyNodeParams(cem_close_gate_last_steps=-2)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="close_threshold"):
            PolicyNodeParams(cem_close_threshold=bad)
