"""policy_node's plain-Python parts: stamp matcher, observation building, the episode state machine.

The Q-function here is a stub defined in this test (no model file).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from rcan_common.config import ConfigError
from rcan_grasp_policy.episode import CoreConfig, Decision, EEState, EpisodeCore, GripperState, ImagePair, Phase
from rcan_grasp_policy.inputs import build_policy_images
from rcan_grasp_policy.planner import apply_action, resolve_inputs
from rcan_grasp_policy.stamp_matcher import StampMatcher
from rcan_common.action import ActionBounds, make_action


# ---- stamp matcher
def test_matcher_pairs_exact_stamps_only():
    m = StampMatcher(capacity=3)
    assert m.add("source", 100, "s100") is None
    assert m.add("canonical", 101, "c101") is None  # different stamp: no pair
    assert m.latest() is None
    pair = m.add("canonical", 100, "c100")
    assert pair == (100, "s100", "c100") and m.latest() == pair
    assert m.pending() == {"source": 0, "canonical": 1}  # c101 still waits for its source


def test_matcher_drops_older_unmatched_and_is_bounded():
    m = StampMatcher(capacity=2)
    for t in (1, 2, 3):
        m.add("source", t, f"s{t}")
    assert m.pending()["source"] == 2 and m.dropped == 1  # s1 evicted by capacity
    m.add("canonical", 5, "c5")
    m.add("source", 5, "s5")
    assert m.latest().stamp_ns == 5
    assert m.pending() == {"source": 0, "canonical": 0}  # s2, s3 can never be the newest pair
    assert m.add("canonical", 3, "c3") is None  # older than the newest pair, and unmatched: no pair
    assert m.add("canonical", 5, "c5 again") is None and m.latest().canonical == "c5"  # a duplicate
    assert m.latest(after_ns=5) is None and m.latest(after_ns=4).stamp_ns == 5
    with pytest.raises(ValueError):
        m.add("depth", 1, None)


def test_matcher_recovers_when_stamps_go_backwards_and_says_so():
    """Issue 12.2: one pair stamped an hour ahead must not freeze the matching for good."""
    said: list[str] = []
    m = StampMatcher(capacity=4, on_reset=said.append)
    hour = 3600 * 10**9
    m.add("source", 100 + hour, "s_future")
    assert m.add("canonical", 100 + hour, "c_future").stamp_ns == 100 + hour
    # Later, correctly stamped frames are all "older": the first complete pair resets the matcher.
    assert m.add("source", 200, "s200") is None
    pair = m.add("canonical", 200, "c200")
    assert pair == (200, "s200", "c200") and m.latest() == pair
    assert m.resets == 1 and len(said) == 1 and "went backwards" in said[0] and "3600.000 s" in said[0]
    # ... and matching goes on normally from there.
    m.add("canonical", 300, "c300")
    assert m.add("source", 300, "s300").stamp_ns == 300 and m.resets == 1
    # A single late message of one stream alone never resets anything.
    assert m.add("source", 250, "late") is None and m.resets == 1 and m.latest().stamp_ns == 300
    m.reset("clock jumped")
    assert m.latest() is None and m.pending() == {"source": 0, "canonical": 0} and "clock jumped" in said[-1]


def test_matcher_single_stream_use_recovers_too():
    m = StampMatcher()
    for t in (10, 20, 5, 15):  # the policy's single-stream variant adds each image to both streams
        m.add("source", t, f"i{t}")
        assert m.add("canonical", t, f"i{t}").stamp_ns == t
    assert m.resets == 1 and m.latest().stamp_ns == 15


# ---- observation and geometry
def test_build_policy_images_variants():
    src = np.full((472, 472, 3), 10, np.uint8)
    can = np.full((64, 64, 3), 200, np.uint8)
    six = build_policy_images(src, can, "source+canonical", 64)
    assert six.shape == (64, 64, 6) and six.dtype == np.uint8
    assert (six[..., :3] == 10).all() and (six[..., 3:] == 200).all()  # source first, then G(source)
    assert (build_policy_images(src, can, "canonical", 32) == 200).all()
    assert build_policy_images(src, can, "source", 32).shape == (32, 32, 3)


def test_resolve_inputs():
    assert resolve_inputs("auto", 6) == "source+canonical"
    assert resolve_inputs("auto", 3) == "canonical"
    assert resolve_inputs("auto", 3, "dr-heavy") == "source"
    assert resolve_inputs("auto", 3, "canonical") == "canonical"
    assert resolve_inputs("auto", 6, "rcan") == "source+canonical"
    with pytest.raises(ValueError, match="gives 3 channels but the policy model takes 6"):
        resolve_inputs("canonical", 6)
    with pytest.raises(ValueError, match="image_inputs must be one of"):
        resolve_inputs("depth", 6)


def test_apply_action_rotates_about_vertical():
    down = np.array([1.0, 0.0, 0.0, 0.0])  # gripper pointing down (180 deg about x)
    pos, q = apply_action(np.array([0.5, 0.0, 0.1]), down, np.array([0.01, -0.02, 0.0]), math.pi / 2)
    np.testing.assert_allclose(pos, [0.51, -0.02, 0.1])
    # Rz(90) * Rx(180): the x axis of the tool now points along base +y, z still down.
    x, y, z, w = q
    rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                    [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                    [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    np.testing.assert_allclose(rot[:, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(rot[:, 2], [0, 0, -1], atol=1e-12)


# ---- episode state machine with a scripted stub Q-function
class Script:
    """Returns the queued actions in order (and records what it was shown)."""

    def __init__(self, *actions):
        self.actions = list(actions)
        self.seen: list[tuple[np.ndarray, np.ndarray, int]] = []

    def __call__(self, images, state, steps_left):
        self.seen.append((images, state, steps_left))
        return self.actions.pop(0), 0.5


DOWN = np.array([1.0, 0.0, 0.0, 0.0])


def ee(t, pos=(0.55, 0.0, 0.115)):
    return EEState(np.array(pos, dtype=float), DOWN, t)


def pair(t):
    return ImagePair(t, np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8))


def make_core(script, **kw):
    return EpisodeCore(CoreConfig(**kw), script, "source+canonical", 8)


def test_stale_or_missing_inputs_send_nothing():
    core = make_core(Script(make_action((0.01, 0, 0))), max_input_age=0.5)
    g = GripperState(True, 10.0)
    assert core.tick(10.0, None, g, pair(10.0)).wait == "ee_pose_missing"
    assert core.tick(10.0, ee(9.0), g, pair(10.0)).wait == "ee_pose_stale"
    assert core.tick(10.0, ee(10.0), None, pair(10.0)).wait == "gripper_state_missing"
    assert core.tick(10.0, ee(10.0), GripperState(True, 9.0), pair(10.0)).wait == "gripper_state_stale"
    assert core.tick(10.0, ee(10.0), g, None).wait == "images_missing"
    assert core.tick(10.0, ee(10.0), g, pair(9.2)).wait == "images_stale"
    # |now - stamp| is bounded both ways: inputs stamped in the future are not fresh either.
    assert core.tick(10.0, ee(10.0), g, pair(3610.0)).wait == "images_stale"
    assert core.tick(10.0, ee(11.0), g, pair(10.0)).wait == "ee_pose_stale"
    assert core.tick(10.0, ee(10.0), GripperState(True, 11.0), pair(10.0)).wait == "gripper_state_stale"
    assert core.step == 0 and core.phase is Phase.ACT
    d = core.tick(10.0, ee(10.0), g, pair(9.9))
    assert d.target is not None and core.step == 1


def test_no_command_is_computed_from_a_pair_older_than_max_input_age():
    """Whatever the stamps do, the planner only ever sees pairs with |now - stamp| <= max_input_age."""
    rng = np.random.default_rng(3)
    seen_ages: list[float] = []
    now = [0.0]
    pair_t = [0.0]

    def act(images, state, steps_left):
        seen_ages.append(abs(now[0] - pair_t[0]))
        return make_action((0.0, 0.0, 0.0)), 0.5

    core = make_core(act, max_input_age=0.5, settle_timeout=0.05, max_steps=10_000)
    for k in range(3000):
        now[0] = 100.0 + 0.01 * k
        pair_t[0] = now[0] + float(rng.choice([0.0, -0.1, -0.49, -0.51, -2.0, 0.3, 0.6, 3600.0, -3600.0]))
        core.tick(now[0], ee(now[0]), GripperState(True, now[0]), pair(pair_t[0]))
    assert len(seen_ages) > 50 and max(seen_ages) <= 0.5


def test_a_clock_that_jumps_back_does_not_freeze_the_episode():
    """After the clock goes back (sim clock restart, NTP step), fresh images on the new clock are
    'after the settle time' again and timeouts still fire."""
    core = make_core(Script(make_action((0.0, 0.0, 0.0)), make_action((0.0, 0.0, 0.0))), settle_timeout=0.5)
    g = GripperState(True, 100.0)
    d = core.tick(100.0, ee(100.0), g, pair(99.95))
    assert d.target is not None and core.phase is Phase.MOVE
    pos, _ = d.target
    core.tick(100.2, ee(100.2, pos), GripperState(True, 100.2), pair(100.15))  # arrived: settled at 100.2
    assert core.phase is Phase.ACT and core.settled_at == 100.2
    d = core.tick(40.0, ee(40.0, pos), GripperState(True, 40.0), pair(39.99))  # the clock went back 60.2 s
    assert core.clock_jumps == 1 and "clock went back 60.200 s" in d.event
    assert d.wait == "waiting_for_images_after_settle"  # settled "at 40.0" on the new clock
    d = core.tick(40.1, ee(40.1, pos), GripperState(True, 40.1), pair(40.05))
    assert d.target is not None, d
    assert core.status()["clock_jumps"] == 1
    # The move it started still times out on the new clock.
    assert core.tick(40.4, None, None, None).target is None and core.phase is Phase.MOVE
    core.tick(40.7, None, None, None)
    assert core.phase is Phase.ACT


def test_step_uses_only_images_after_settle_and_builds_state():
    script = Script(make_action((0.01, 0.0, -0.2), gripper="close"), make_action((0.0, 0.0, 0.0)))
    core = make_core(script, tray_bottom_z=-0.185, settle_tolerance=0.005)
    d = core.tick(1.0, ee(1.0), GripperState(True, 1.0), pair(0.95))
    pos, quat = d.target
    np.testing.assert_allclose(pos, [0.56, 0.0, 0.115 - 0.05])  # dz clipped to max_translation
    np.testing.assert_allclose(quat, DOWN)
    images, state, _ = script.seen[0]
    assert images.shape == (8, 8, 6) and (images[..., 3:] == 255).all()
    np.testing.assert_allclose(state, [1.0, 0.3], atol=1e-6)  # open, height above the tray bottom
    # Not arrived yet (EE far from target, no timeout): nothing happens.
    assert core.tick(1.1, ee(1.1), GripperState(True, 1.1), pair(1.05)).target is None and core.phase is Phase.MOVE
    # Arrived -> the close command follows the motion, then waits for the gripper state.
    d = core.tick(1.2, ee(1.2, pos), GripperState(True, 1.2), pair(1.15))
    assert d.gripper_open is False and core.phase is Phase.GRIP
    assert core.tick(1.3, ee(1.3, pos), GripperState(True, 1.3), pair(1.25)).wait is None and core.phase is Phase.GRIP
    core.tick(1.4, ee(1.4, pos), GripperState(False, 1.4), pair(1.35))
    assert core.phase is Phase.ACT and core.settled_at == 1.4
    # A pair stamped before the command settled is not used.
    d = core.tick(1.45, ee(1.45, pos), GripperState(False, 1.45), pair(1.35))
    assert d.wait == "waiting_for_images_after_settle" and len(script.seen) == 1
    assert core.tick(1.5, ee(1.5, pos), GripperState(False, 1.5), pair(1.46)).target is not None


def test_yaw_state_counts_the_turn_since_the_first_step():
    """A planner with QNetConfig.yaw_state gets sin, cos of twice the gripper's turn since the episode's first
    step (the sim counts it from the home pose every episode starts at)."""
    script = Script(make_action((0.0, 0.0, -0.01), 0.4), make_action((0.0, 0.0, -0.01), -0.1))
    core = EpisodeCore(CoreConfig(tray_bottom_z=-0.185), script, "source+canonical", 8, yaw_state=True)
    start = apply_action(np.zeros(3), DOWN, np.zeros(3), 0.3)[1]  # any start yaw counts as 0
    d = core.tick(1.0, EEState(np.array([0.55, 0.0, 0.115]), start, 1.0), GripperState(True, 1.0), pair(0.95))
    np.testing.assert_allclose(script.seen[0][1], [1.0, 0.3, 0.0, 1.0], atol=1e-6)
    pos, quat = d.target
    core.tick(1.2, EEState(pos, quat, 1.2), GripperState(True, 1.2), pair(1.15))
    core.tick(1.3, EEState(pos, quat, 1.3), GripperState(True, 1.3), pair(1.25))
    np.testing.assert_allclose(script.seen[1][1][2:], [math.sin(0.8), math.cos(0.8)], atol=1e-6)


def test_vertical_yaw_of_the_sim_tcp_follows_the_env_yaw():
    """What the node computes from the driver's EE pose is the yaw the env reports and label shards store."""
    from rcan_grasp_policy.planner import vertical_yaw
    from rcan_sim.env import EnvConfig, GraspEnv
    from rcan_sim.world import WorldConfig

    env = GraspEnv(EnvConfig(world=WorldConfig(image_size=64)))
    try:
        env.reset(3)
        home = vertical_yaw(env.world.to_base_frame(*env.world.ee_pose())[1])
        for dtheta in (0.5, 0.5, 0.4, -0.3):
            obs = env.step(make_action((0.0, 0.0, -0.02), dtheta), render=False)[0]
            env.world.step_physics(120)  # the node acts once the arm has arrived; an env step can end mid-turn
            turn = vertical_yaw(env.world.to_base_frame(*env.world.ee_pose())[1]) - home
            assert abs(math.remainder(turn - obs["gripper_yaw"], 2 * math.pi)) < 0.02, (turn, obs["gripper_yaw"])
    finally:
        env.close()


def test_terminate_lifts_then_reports_the_episode_end_and_waits_for_the_next_start():
    core = make_core(Script(make_action((0.0, 0.0, 0.0), terminate=True)), lift_height=0.2, settle_timeout=0.5)
    g = GripperState(False, 0.0)
    target, _ = core.tick(0.0, ee(0.0), g, pair(0.0)).target
    d = core.tick(0.1, ee(0.1, target), g, pair(0.1))  # arrived -> lift, one driver-sized step at a time
    np.testing.assert_allclose(d.target[0], target + [0, 0, 0.05])
    assert core.phase is Phase.LIFT and "terminate" in d.event and d.episode_done is None
    top = target + [0, 0, 0.2]
    t = 0.2
    for k in (2, 3, 4):
        assert core.tick(t, ee(t, target), g, pair(t)).target is None  # still lifting
        d = core.tick(t + 0.01, ee(t + 0.01, target + [0, 0, 0.05 * (k - 1)]), g, pair(t))  # increment reached
        np.testing.assert_allclose(d.target[0], target + [0, 0, 0.05 * k])
        assert d.episode_done is None
        t += 0.1
    d = core.tick(t + 0.7, ee(t + 0.7, target), g, pair(t + 0.7))  # settle timeout also ends the wait
    assert d.episode_done == {"episode": 1, "steps": 1, "ended_by": "terminate"} and "ended after 1 steps" in d.event
    assert core.phase is Phase.IDLE and core.last_result == d.episode_done
    np.testing.assert_allclose(core._target[0], top)
    status = core.status()
    assert status["phase"] == "idle" and status["episodes_finished"] == 1 and status["last_result"] == d.episode_done
    assert core.tick(0.9, ee(0.9), g, pair(0.9)).target is None  # idle: no commands until started
    assert core.start_episode(1.0) == (True, "episode 2 started") and core.phase is Phase.ACT


def test_without_autostart_it_waits_for_start_and_max_steps_ends_the_episode():
    script = Script(*[make_action((0.0, 0.0, 0.0))] * 2)
    core = make_core(script, autostart=False, max_steps=2)
    g = GripperState(True, 0.0)
    assert core.phase is Phase.IDLE and core.tick(0.0, ee(0.0), g, pair(0.0)) == Decision()
    ok, message = core.start_episode(0.1)
    assert ok and message == "episode 1 started" and core.settled_at == 0.1
    assert core.start_episode(0.15) == (False, "an episode is running (phase act)")
    assert core.tick(0.15, ee(0.15), g, pair(0.1)).wait == "waiting_for_images_after_settle"  # from before the start
    t = 0.2
    for _ in range(2):
        target, _ = core.tick(t, ee(t), g._replace(stamp=t), pair(t)).target
        core.tick(t + 0.01, ee(t + 0.01, target), g._replace(stamp=t), pair(t))
        t += 0.1
    assert core.phase is Phase.LIFT and core.step == 2
    assert [steps_left for _, _, steps_left in script.seen] == [2, 1]  # what CEMConfig.close_gate_last_steps reads
    for k in (1, 2, 3):  # each 5 cm lift increment reached -> the next one
        d = core.tick(t, ee(t, target + [0, 0, 0.05 * k]), g._replace(stamp=t), pair(t))
        np.testing.assert_allclose(d.target[0], target + [0, 0, 0.05 * (k + 1)])
        assert core.start_episode(t)[0] is False  # refused until the episode is over
        t += 0.1
    d = core.tick(t, ee(t, target + [0, 0, 0.2]), g._replace(stamp=t), pair(t))
    assert d.episode_done == {"episode": 1, "steps": 2, "ended_by": "max_steps"} and core.phase is Phase.IDLE
    assert core.start_episode(t + 0.1)[0] and core.episode == 2 and core.step == 0


def test_core_config_validation():
    with pytest.raises(ConfigError, match="max_steps"):
        CoreConfig(max_steps=0)
    with pytest.raises(ConfigError, match="max_input_age"):
        CoreConfig(max_input_age=0.0)


# ---- the node's planner opens the policy through the one loader and Q-function class
def test_planner_uses_the_one_ort_qfunction(tmp_path):
    from rcan_grasp_policy import backends
    from rcan_grasp_policy.cem import CEMConfig, CEMPolicy
    from rcan_grasp_policy.planner import load_planner
    from rcan_perception.runtime import RuntimeConfig
    from tiny_models import export_tiny_qnet

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 6), dtype=np.uint8)
    state = rng.random((2, 2), dtype=np.float32)
    path = export_tiny_qnet(tmp_path / "q.onnx")
    qf, meta = backends.load_qfunction(path, runtime=RuntimeConfig(warmup_runs=1))
    assert isinstance(qf, backends.OrtQFunction) and qf.provider == "CPUExecutionProvider"
    assert (qf.in_channels, qf.image_size) == (6, 32)
    planner = load_planner(path, RuntimeConfig(), CEMConfig(samples=8, elites=2), ActionBounds(), seed=3)
    assert (planner.in_channels, planner.image_size, planner.meta) == (6, 32, meta)
    assert planner.provider == "CPUExecutionProvider"
    action, q = planner.act(images[0], state[0], 20)
    # The same decision as CEM over the loader's Q-function with the same seed.
    actions, qs = CEMPolicy(qf, CEMConfig(samples=8, elites=2), ActionBounds(), seed=3).act(images[:1], state[:1])
    assert np.array_equal(action, actions[0]) and q == float(qs[0])


def test_ort_qfunction_rejects_models_without_metadata(tmp_path):
    from rcan_grasp_policy.backends import OrtQFunction, PolicyLoadError
    from rcan_perception.runtime import ModelError, RuntimeConfig
    from tiny_models import export_tiny_generator

    assert issubclass(PolicyLoadError, ModelError)  # the node's start-up handling catches either
    gen = export_tiny_generator(tmp_path / "not_a_policy.onnx")
    with pytest.raises(PolicyLoadError, match=r"not_a_policy\.onnx has no 'rcan_policy' metadata"):
        OrtQFunction(gen, RuntimeConfig())


def test_arm_that_stops_short_counts_as_arrived():
    # The driver clamps targets to its safety box: the EE stops 3 cm short and stays there.
    core = make_core(Script(make_action((0.05, 0, 0)), make_action((0, 0, 0))), still_time=0.5, settle_timeout=5.0)
    g = GripperState(True, 0.0)
    core.tick(0.0, ee(0.0), g, pair(0.0))
    short = (0.57, 0.0, 0.115)
    core.tick(0.1, ee(0.1, short), g, pair(0.1))
    core.tick(0.4, ee(0.4, short), g, pair(0.4))
    assert core.phase is Phase.MOVE  # still for 0.3 s only
    core.tick(0.65, ee(0.65, short), g, pair(0.65))
    assert core.phase is Phase.ACT and core.settled_at == 0.65
