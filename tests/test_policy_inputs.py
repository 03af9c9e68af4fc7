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


def test_view_through_keeps_only_the_detail_of_a_smaller_image():
    """--view-through N (diagnostic): a canonical policy's image passes through N px, as G(x) does at the contract's
    size, so one-pixel detail is gone and smooth content stays; other variants refuse it."""
    from rcan_grasp_policy.inputs import through_size

    board = np.indices((8, 8)).sum(axis=0) % 2 * 254
    obs = {"image": np.repeat(board[..., None], 3, axis=2).astype(np.uint8)}
    seen = InputEncoder("canonical", view_through=4)(obs)
    assert seen.shape == (8, 8, 3) and seen.dtype == np.uint8 and (seen == 127).all()
    np.testing.assert_array_equal(seen, through_size(obs["image"], 4))
    flat = {"image": np.full((8, 8, 3), 90, np.uint8)}
    np.testing.assert_array_equal(InputEncoder("canonical", view_through=4)(flat), flat["image"])
    with pytest.raises(ValueError, match="view_through"):
        InputEncoder("rcan", adapter=lambda rgb: rgb, view_through=4)
    with pytest.raises(ValueError, match="view_through"):
        InputEncoder("canonical", view_through=-1)


def test_evaluation_passes_the_view_through_to_its_workers_and_refuses_other_policies(tmp_path):
    from pathlib import Path

    import torch

    from rcan_common.config import ConfigError
    from rcan_grasp_policy import collect, evaluate
    from rcan_grasp_policy.backends import save_policy
    from rcan_grasp_policy.qnet import QNetConfig, QNetwork

    torch.manual_seed(0)
    policy = tmp_path / "canonical.safetensors"
    save_policy(policy, QNetwork(QNetConfig(in_channels=3, image_size=32, width=4, fc_width=8)).eval(),
                {"variant": "canonical"})
    args = ["--policy", str(policy), "--episodes", "1", "--max-steps", "2", "--seed", "40"]
    result = evaluate.evaluate(evaluate.parse_cli(evaluate.EvalConfig, args + ["--view-through", "8"]))
    assert result["config"]["view_through"] == 8 and result["episodes"] == 1
    encoders = [v for k, v in collect._CACHE.items() if k[0] == "encoder" and k[-1] == 8]
    assert encoders and encoders[0].view_through == 8
    rcan = str(Path(__file__).resolve().parents[1] / "models" / "policy_rcan_128.onnx")
    for other in (rcan, "scripted"):
        with pytest.raises(ConfigError, match="view_through"):
            evaluate.evaluate(evaluate.parse_cli(evaluate.EvalConfig, ["--policy", other, "--view-through", "64"]))
