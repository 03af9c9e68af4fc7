"""The policy contract (rcan_grasp_policy.contract): JSON round trip, derivation from older metadata,
prepare() against the one image builder, and the loader's choice of contract."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from rcan_common.action import ACTION_NAMES, STATE_NAMES, ActionBounds
from rcan_common.config import ConfigError
from rcan_grasp_policy.contract import PolicyContract, contract_path, inputs_for_variant
from rcan_grasp_policy.inputs import build_policy_images


def test_round_trip_through_json_and_file(tmp_path):
    c = PolicyContract(inputs="canonical", image_size=32, bounds=ActionBounds(0.03, 0.25))
    assert PolicyContract.from_json(c.to_json()) == c
    path = contract_path(tmp_path / "p.onnx")
    assert path.name == "p.contract.json"
    c.save(path)
    assert PolicyContract.load(path) == c
    data = json.loads(path.read_text())
    assert data["crop"] is None and data["interpolation"] == "area" and data["scaling"] == "uint8/255"
    assert data["state_names"] == list(STATE_NAMES) and data["action_names"] == list(ACTION_NAMES)
    assert data["bounds"] == {"max_translation": 0.03, "max_rotation": 0.25}


def test_invalid_contracts_are_refused(tmp_path):
    with pytest.raises(ConfigError):
        PolicyContract(inputs="depth")
    with pytest.raises(ConfigError):
        PolicyContract(state_names=("gripper_height", "gripper_open"))
    with pytest.raises(ConfigError):
        PolicyContract.from_json(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError):
        PolicyContract.from_json(json.dumps({"image_size": 64, "unknown": 1}))
    with pytest.raises(FileNotFoundError):
        PolicyContract.load(tmp_path / "missing.contract.json")


@pytest.mark.parametrize("variant, channels, inputs", [("rcan", 6, "source+canonical"), ("canonical", 3, "canonical"),
                                                       ("dr-heavy", 3, "source"), (None, 6, "source+canonical"),
                                                       (None, 3, "canonical")])
def test_derived_from_metadata_of_older_exports(variant, channels, inputs):
    meta = {"variant": variant, "qnet": {"in_channels": channels, "image_size": 48}}
    c = PolicyContract.from_metadata(meta)
    assert (c.inputs, c.channels, c.image_size) == (inputs, channels, 48)
    assert inputs_for_variant(variant, channels) == inputs
    assert c.bounds == ActionBounds() and c.crop is None


def test_metadata_that_disagrees_with_the_network_is_refused():
    with pytest.raises(ConfigError):
        PolicyContract.from_metadata({"variant": "rcan", "qnet": {"in_channels": 3, "image_size": 64}})
    with pytest.raises(ConfigError):
        PolicyContract.from_metadata({"variant": "rcan"})


def test_prepare_is_the_image_builder_at_the_contract_size():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    can = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    for inputs, want_c in (("source+canonical", 6), ("canonical", 3), ("source", 3)):
        c = PolicyContract(inputs=inputs, image_size=32)
        x = c.prepare(src, can)
        assert x.shape == (32, 32, want_c) and x.dtype == np.uint8
        assert np.array_equal(x, build_policy_images(src, can, inputs, 32))
    # Shrinking is area averaging: a 2x2 block of the 64 px image becomes one 32 px pixel.
    small = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    x = PolicyContract(inputs="source", image_size=32).prepare(small, None)
    want = small.reshape(32, 2, 32, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(x.astype(np.float64) - want).max() <= 1.0
    # At the contract size the image passes unchanged; the two halves are source then canonical.
    src32, can32 = src[:32, :32], can[:32, :32]
    x = PolicyContract(inputs="source+canonical", image_size=32).prepare(src32, can32)
    assert np.array_equal(x[..., :3], src32) and np.array_equal(x[..., 3:], can32)


def _tiny_policy(tmp_path, variant="canonical"):
    pytest.importorskip("torch")
    from rcan_grasp_policy.backends import save_policy
    from rcan_grasp_policy.qnet import QNetConfig, QNetwork

    cfg = QNetConfig(in_channels=6 if variant == "rcan" else 3, image_size=32, width=8, fc_width=8, merge_downsample=16)
    path = tmp_path / "policy.safetensors"
    save_policy(path, QNetwork(cfg), {"variant": variant})
    return path


def test_loader_derives_the_contract_or_reads_the_sidecar(tmp_path):
    from rcan_grasp_policy.backends import PolicyLoadError, load_qfunction

    path = _tiny_policy(tmp_path)
    qf, _ = load_qfunction(path)
    assert qf.contract == PolicyContract(inputs="canonical", image_size=32)
    sidecar = PolicyContract(inputs="source", image_size=32, bounds=ActionBounds(0.02, 0.1))
    sidecar.save(contract_path(path))
    assert load_qfunction(path)[0].contract == sidecar
    dataclasses.replace(sidecar, inputs="source+canonical").save(contract_path(path))
    with pytest.raises(PolicyLoadError, match="does not match the network"):
        load_qfunction(path)


def test_export_embeds_and_writes_the_contract(tmp_path):
    from rcan_grasp_policy.backends import load_qfunction
    from rcan_grasp_policy.contract import ONNX_CONTRACT_KEY, write_sidecar
    from rcan_grasp_policy.export import ExportConfig, export

    ckpt = _tiny_policy(tmp_path, "rcan")
    out = tmp_path / "out" / "p.onnx"
    card = export(ExportConfig(checkpoint=ckpt, out=out, parity_states=1), command="test")
    want = PolicyContract(inputs="source+canonical", image_size=32)
    assert PolicyContract.load(contract_path(out)) == want
    assert card["contract"] == json.loads(contract_path(out).read_text())
    qf, _ = load_qfunction(out)
    assert ONNX_CONTRACT_KEY in qf.model.metadata and qf.contract == want
    # The sidecar writer reads the ONNX file only.
    before = out.read_bytes()
    contract_path(out).unlink()
    assert write_sidecar(out) == contract_path(out)
    assert PolicyContract.load(contract_path(out)) == want and out.read_bytes() == before


def test_center_crop_is_a_narrower_view_of_the_same_camera():
    from rcan_grasp_policy.contract import SIM_CAMERA_FOV_DEG, crop_for_fov, fov_for_crop
    from rcan_sim.world import WorldConfig

    assert WorldConfig().camera_fov_deg == SIM_CAMERA_FOV_DEG
    assert crop_for_fov(SIM_CAMERA_FOV_DEG) == pytest.approx(1.0)
    assert fov_for_crop(crop_for_fov(30.0)) == pytest.approx(30.0)
    # prepare keeps the centred square of that fraction of the side, then resizes it.
    img = np.zeros((100, 100, 3), np.uint8)
    img[25:75, 25:75] = 200
    x = PolicyContract(inputs="canonical", image_size=50, center_crop=0.5).prepare(None, img)
    assert x.shape == (50, 50, 3) and (x == 200).all()
    # A policy trained on a narrower render carries the crop; one trained on the labelling view does not.
    meta = {"variant": "canonical", "qnet": {"in_channels": 3, "image_size": 64}}
    assert PolicyContract.from_metadata(meta | {"train_config": {"camera_fov_deg": 30.0}}).center_crop == \
        pytest.approx(crop_for_fov(30.0))
    assert PolicyContract.from_metadata(meta | {"train_config": {"camera_fov_deg": 0.0}}).center_crop == 1.0
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError):
            PolicyContract(center_crop=bad)


def test_center_crop_of_the_camera_image_matches_the_narrow_render():
    """The robot-side crop of a full camera frame and the sim's render at the narrower field of view (what the
    policy was trained and is evaluated on) show the same scene at the same place in the image."""
    from rcan_grasp_policy.contract import crop_for_fov
    from rcan_sim.env import EnvConfig, GraspEnv
    from rcan_sim.world import WorldConfig

    frames = {}
    for size, fov in ((256, 40.0), (64, 30.0)):
        env = GraspEnv(EnvConfig(world=WorldConfig(image_size=size, split="test", camera_fov_deg=fov),
                                 domain="canonical"))
        try:
            frames[fov] = env.reset(3)[0]["image"]
        finally:
            env.close()
    cropped = PolicyContract(inputs="canonical", image_size=64, center_crop=crop_for_fov(30.0)).prepare(
        None, frames[40.0])
    err = np.abs(cropped.astype(np.float64) - frames[30.0].astype(np.float64)).mean()
    uncropped = PolicyContract(inputs="canonical", image_size=64).prepare(None, frames[40.0])
    assert err < 0.5 * np.abs(uncropped.astype(np.float64) - frames[30.0].astype(np.float64)).mean()
    assert err < 12.0
