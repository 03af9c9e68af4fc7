"""Policy inputs per variant: channel layout of [x, G(x)], domains, errors."""
import numpy as np
import pytest

from rcan_grasp_policy.inputs import InputEncoder, state_vector, training_domain, variant_channels


def test_variants_map_to_domains_and_channels():
    assert [training_domain(v) for v in ("rcan", "canonical", "dr-mild", "dr-medium", "dr-heavy")] == \
        ["randomized", "canonical", "mild", "medium", "heavy"]
    assert variant_channels("rcan") == 6 and variant_channels("dr-heavy") == 3
    with pytest.raises(ValueError, match="unknown policy variant"):
        training_domain("rcan2")


def test_rcan_input_is_source_then_generated():
    obs = {"image": np.full((8, 8, 3), 7, np.uint8), "gripper_open": 1.0, "gripper_height": 0.25}
    enc = InputEncoder("rcan", adapter=lambda rgb: 255 - rgb)
    x = enc(obs)
    assert x.shape == (8, 8, 6) and x.dtype == np.uint8 and enc.channels == 6
    assert (x[..., :3] == 7).all() and (x[..., 3:] == 248).all()
    assert InputEncoder("canonical")(obs) is obs["image"]
    np.testing.assert_allclose(state_vector(obs), [1.0, 0.25])
    with pytest.raises(ValueError, match="needs a generator"):
        InputEncoder("rcan")
    with pytest.raises(FileNotFoundError, match="generator ONNX not found"):
        InputEncoder("rcan", "/nonexistent/g.onnx")


def test_one_builder_for_sim_and_robot_images():
    import cv2

    from rcan_grasp_policy.inputs import build_policy_images

    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (472, 472, 3), dtype=np.uint8)
    can = np.full((16, 16, 3), 200, np.uint8)
    x = build_policy_images(src, can, "source+canonical", 64)
    assert x.shape == (64, 64, 6) and x.dtype == np.uint8 and (x[..., 3:] == 200).all()
    # Camera-sized images shrink with area interpolation; smaller ones grow linearly.
    assert np.array_equal(x[..., :3], cv2.resize(src, (64, 64), interpolation=cv2.INTER_AREA))
    small = src[:16, :16]
    assert np.array_equal(build_policy_images(src, small, "canonical", 32),
                          cv2.resize(small, (32, 32), interpolation=cv2.INTER_LINEAR))
    assert build_policy_images(src, can, "source", 32).shape == (32, 32, 3)
    # Images already at the policy size (the sim renders at it) pass through untouched.
    obs = {"image": src[:64, :64], "gripper_open": 1.0, "gripper_height": 0.2}
    assert build_policy_images(obs["image"], None, "source", 64) is obs["image"]
    assert build_policy_images(obs["image"], None, "source") is obs["image"]
    # The sim's encoder is the same builder: [x, G(x)] at the render size.
    g = lambda rgb: 255 - rgb  # noqa: E731
    assert np.array_equal(InputEncoder("rcan", adapter=g)(obs),
                          build_policy_images(obs["image"], g(obs["image"][None])[0], "source+canonical", 64))


def test_oracle_input_is_the_sim_pair_of_the_observed_state():
    from rcan_common.action import make_action
    from rcan_sim.env import EnvConfig, GraspEnv
    from rcan_sim.world import WorldConfig

    env = GraspEnv(EnvConfig(world=WorldConfig(image_size=32, settle_steps=30), domain="randomized"))
    try:
        enc = InputEncoder("rcan", "oracle")
        obs, _ = env.reset(5)
        obs, *_ = env.step(make_action([0.02, 0.0, -0.03]))
        x = enc(obs, env)
        pair = env.render_pair()  # both halves rendered afresh for this step
        assert np.array_equal(x, np.concatenate([pair.randomized_rgb, pair.canonical_rgb], axis=2))
    finally:
        env.close()
