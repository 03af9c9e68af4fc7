"""CEM over a known synthetic Q: finds the optimum, is seeded, handles the discrete parts."""
import numpy as np
import pytest

from rcan_common.config import ConfigError
from rcan_grasp_policy.cem import CEMConfig, CEMPolicy, build_actions, cem_search, refit, sample, SearchDistribution
from rcan_sim.action import CLOSE, COS, OPEN, SIN, TERMINATE, ActionBounds

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
    new = refit(cont, grip, term, elite, CEMConfig(), BOUNDS)
    np.testing.assert_allclose(new.gripper_probs, [[0, 0, 1]] * 3)
    assert (new.std >= 0.05 * np.array([0.05, 0.05, 0.05, 0.5]) - 1e-12).all()
    cont2, grip2, _ = sample(new, 100, BOUNDS, rng)
    assert (grip2 == 2).all()


def test_policy_validates_and_explores():
    goals = np.zeros((2, 4))
    qf = QuadraticQ(goals)
    pol = CEMPolicy(qf, CEMConfig(), BOUNDS, seed=0, epsilon=1.0)
    a, _ = pol.act(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 2), np.float32))
    assert a.shape == (2, 8)
    with pytest.raises(ValueError, match="uint8"):
        pol.act(np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="elites"):
        CEMConfig(samples=4, elites=6)


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
