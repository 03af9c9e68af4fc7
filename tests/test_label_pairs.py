"""`rcan label-pairs`: generator training pairs rendered from labelled scene states."""
import numpy as np
import pytest

from rcan_common.config import ConfigError
from rcan_common.io import OutputError
from rcan_grasp_policy import label_pairs as P
from rcan_grasp_policy import labels as L
from rcan_sim import shards
from rcan_sim.datagen import randomization_seed
from rcan_sim.env import EnvConfig, GraspEnv
from rcan_sim.world import WorldConfig


@pytest.fixture(scope="module")
def label_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    L.run(L.LabelConfig(out_dir=root, scenes=3, scenes_per_task=2, split="test", image_size=32, candidates=3,
                        max_steps=3, label_prob=1.0), progress=False)
    return root


def test_pairs_are_the_stored_states_rendered_in_the_source_domain(label_set, tmp_path):
    out = tmp_path / "pairs"
    manifest = P.run(P.LabelPairsConfig(labels=[label_set], out=out, image_size=32, seed=5), progress=False)
    data = L.load_labels(label_set)
    frames = shards.read_frames(out)
    assert manifest["complete"] and manifest["counts"]["frames"] == len(data["seed"]) == len(frames["step"])
    assert manifest["counts"]["episodes"] == 3 and manifest["config"]["split"] == "test"
    np.testing.assert_array_equal(frames["episode_seed"], data["seed"])
    np.testing.assert_array_equal(frames["action"], data["candidates"][:, 0])
    # the last frame is the last stored state, rendered as a pair in the test split's held-out domain
    env = GraspEnv(EnvConfig(world=WorldConfig(image_size=32, split="test")))
    try:
        i = len(data["seed"]) - 1
        L.place_record(env, data, i)
        pair = env.world.render_pair(randomization_seed(5, 2, int(data["step"][i])), domain="held-out")
    finally:
        env.close()
    np.testing.assert_array_equal(frames["randomized"][-1], pair.randomized_rgb)
    np.testing.assert_array_equal(frames["canonical"][-1], pair.canonical_rgb)
    np.testing.assert_array_equal(frames["segmentation"][-1], pair.segmentation)
    assert not np.array_equal(frames["randomized"], frames["canonical"])


def test_resume_renders_only_missing_shards_and_refuses_other_settings(label_set, tmp_path):
    out = tmp_path / "pairs"
    cfg = P.LabelPairsConfig(labels=[label_set], out=out, image_size=32, workers=2)
    first = P.run(cfg, progress=False)
    assert first["counts"]["shards"] == 2  # one output shard per label shard
    lost = out / first["shards"][1]["file"]
    kept = out / first["shards"][0]["file"]
    lost.unlink()
    stamp = kept.stat().st_mtime_ns
    with pytest.raises(OutputError, match="--resume"):
        P.run(cfg, progress=False)
    cfg.resume = True
    # the manifest still lists the lost shard: drop it as a killed run would have left it
    man = shards.load_manifest(out)
    man["shards"] = man["shards"][:1]
    shards.write_manifest(out, man)
    again = P.run(cfg, progress=False)
    assert again["complete"] and again["counts"] == first["counts"] and lost.is_file()
    assert kept.stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="other settings"):
        P.run(P.LabelPairsConfig(labels=[label_set], out=out, image_size=32, seed=1, resume=True), progress=False)


def test_bad_label_sets_are_config_errors(label_set, tmp_path):
    with pytest.raises(ConfigError, match="labels"):
        P.LabelPairsConfig(labels=[], out=tmp_path / "x")
    with pytest.raises(ConfigError, match="not a label set"):
        P.run(P.LabelPairsConfig(labels=[tmp_path], out=tmp_path / "x"), progress=False)
    assert P.main(["--labels", str(tmp_path), "--out", str(tmp_path / "y")]) == 2


def test_generator_trains_on_label_pairs(label_set, tmp_path):
    from rcan_perception.export import datagen_command
    from rcan_perception.train import main as train_generator

    out = tmp_path / "pairs"
    P.run(P.LabelPairsConfig(labels=[label_set], out=out, image_size=32), progress=False)
    assert train_generator(["--data", str(out), "--eval-data", str(out), "--runs-dir", str(tmp_path / "runs"),
                            "--steps", "2", "--batch-size", "2", "--generator.channels", "4", "4", "4",
                            "--threads", "1", "--no-progress", "--sample-every", "0", "--eval-every", "0",
                            "--checkpoint-every", "0"]) == 0
    assert datagen_command(str(out), shards.read_manifest(out)).startswith(f"rcan label-pairs --labels {label_set}")
