"""End-to-end smoke: train -> resume -> eval -> export, tiny net at 32 px, a few steps."""
import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

torch.set_num_threads(1)  # several test processes share 2 cores

from rcan_common.config import ConfigError  # noqa: E402
from rcan_grasp_policy import evaluate, export, train  # noqa: E402
from rcan_grasp_policy.replay import returns_to_go  # noqa: E402

TINY = ["--variant", "canonical", "--image-size", "32", "--width", "4", "--fc-width", "8", "--max-steps", "3",
        "--bootstrap-episodes", "2", "--episodes-per-task", "1", "--tasks-per-round", "1", "--eval-episodes", "1", "--eval-every", "0",
        "--algo.batch-size", "4", "--cem.samples", "8", "--cem.elites", "2", "--algo.target-cem.samples", "8",
        "--algo.target-cem.elites", "2", "--algo.target-cem.iterations", "1", "--log-every", "2",
        "--checkpoint-every", "4", "--no-progress", "--updates-per-transition", "2"]


def _weights(run_dir):
    return load_file(str(run_dir / "policy.safetensors"))


@pytest.mark.timeout(240)
def test_train_resume_eval_export(tmp_path):
    # Runs stop at the end of the collection round that reaches total_updates.
    assert train.main(TINY + ["--out-dir", str(tmp_path), "--run-name", "split", "--total-updates", "4",
                              "--scripted-aim-offset", "0.02"]) == 0
    run = tmp_path / "split"
    before = json.loads((run / "checkpoint.json").read_text())
    replay_before = np.load(run / "replay.npz")
    with pytest.raises(ConfigError, match="run_name"):
        train.main(TINY + ["--out-dir", str(tmp_path), "--run-name", "split", "--total-updates", "8"])
    with pytest.raises(ConfigError, match="width"):
        train.main(TINY[:5] + ["5"] + TINY[6:] + ["--out-dir", str(tmp_path), "--run-name", "split", "--resume"])
    with pytest.raises(ConfigError, match="algo.gamma"):
        train.main(TINY + ["--out-dir", str(tmp_path), "--run-name", "split", "--resume", "--algo.gamma", "0.8"])
    # The restored learner is the saved one, tensor for tensor.
    tr = train.Trainer(train.parse_cli(train.TrainConfig, TINY + ["--out-dir", str(tmp_path), "--run-name", "split"]))
    tr.restore()
    saved = load_file(str(run / "checkpoint.safetensors"))
    for k, v in tr.algo.q.state_dict().items():
        torch.testing.assert_close(v, saved["q." + k], rtol=0, atol=0)
    assert tr.algo.updates == before["updates"] and len(tr.replay) == int(replay_before["meta"][2])

    # the options beyond the paper may be switched on when resuming (they do not shape the networks)
    assert train.main(TINY + ["--out-dir", str(tmp_path), "--run-name", "split", "--total-updates", "8",
                              "--resume", "--algo.mc-lower-bound", "--algo.random-shift", "2"]) == 0
    after = json.loads((run / "checkpoint.json").read_text())
    assert after["updates"] >= 8 > before["updates"] >= 4
    assert after["episodes"] > before["episodes"]  # new episode seeds, none repeated
    replay_after = np.load(run / "replay.npz")
    n = int(replay_before["meta"][2])
    np.testing.assert_array_equal(replay_after["image"][:n], replay_before["image"])  # old data kept, new appended
    assert int(replay_after["meta"][2]) > n
    # Each transition carries its episode's discounted return-to-go (episodes are written whole, in order).
    np.testing.assert_allclose(replay_after["mc_return"],
                               returns_to_go(replay_after["reward"], replay_after["done"], 0.9), atol=1e-6)
    assert not np.array_equal(_weights(run)["head_fc.4.weight"], saved["q.head_fc.4.weight"])
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("updates,") and len(rows) == 1 + after["updates"] // 2  # a row every 2 updates
    config = json.loads((run / "config.json").read_text())
    assert config["algo"]["gamma"] == 0.9 and config["width"] == 4 and config["total_updates"] == 8
    assert config["algo"]["mc_lower_bound"] and config["algo"]["random_shift"] == 2

    # Evaluation is reproducible and writes per-episode records.
    args = ["--policy", str(run), "--episodes", "2", "--max-steps", "3", "--cem.samples", "8",
            "--cem.elites", "2"]
    assert evaluate.main(args + ["--out", str(tmp_path / "e1.json")]) == 0
    assert evaluate.main(args + ["--out", str(tmp_path / "e2.json")]) == 0
    e1, e2 = (json.loads((tmp_path / f"e{i}.json").read_text()) for i in (1, 2))
    assert e1["records"] == e2["records"] and len(e1["records"]) == 2 and e1["seeds"] == [0, 1]
    assert e1["split"] == "test" and 0 <= e1["wilson95"][0] <= e1["success_rate"] <= e1["wilson95"][1] <= 1

    # Export: ONNX parity and the same CEM decision from torch and ORT; the ONNX file evaluates too.
    card = export.export(export.ExportConfig(checkpoint=run, out=tmp_path / "p.onnx",
                                             evals=(tmp_path / "e1.json",), parity_states=3))
    assert card["parity"]["cem_same_actions"] and card["parity"]["q_max_abs_diff"] < 1e-4
    assert (tmp_path / "p.md").read_text().startswith("# p")
    assert evaluate.main(["--policy", str(tmp_path / "p.onnx"), "--episodes", "1", "--max-steps", "3",
                          "--cem.samples", "8", "--cem.elites", "2", "--out", str(tmp_path / "e3.json")]) == 0
    e3 = json.loads((tmp_path / "e3.json").read_text())
    assert e3["records"][0] == e1["records"][0]  # same weights, same seed, ORT backend: same episode

    # Fine-tuning starts from a run directory's policy weights (fresh replay and optimizer).
    tuned = train.Trainer(train.parse_cli(train.TrainConfig, TINY + ["--out-dir", str(tmp_path), "--run-name", "ft",
                                                                      "--init-from", str(run)]))
    for k, v in tuned.algo.q.state_dict().items():
        torch.testing.assert_close(v, _weights(run)[k], rtol=0, atol=0)
    assert len(tuned.replay) == 0


def test_sigterm_ends_the_run_with_a_checkpoint_that_resumes(tmp_path):
    run = ["--out-dir", str(tmp_path), "--run-name", "term", "--total-updates", "4"]
    train._stop(15, None)  # what the SIGTERM handler does: finish the round, checkpoint, no final eval
    try:
        assert train.main(TINY + run) == 0
        with pytest.raises(KeyboardInterrupt):
            train._stop(15, None)  # a second signal aborts
    finally:
        train.STOP.clear()
    saved = json.loads((tmp_path / "term/checkpoint.json").read_text())
    assert saved["updates"] == 0 and saved["episodes"] == 2  # the bootstrap episodes are kept
    assert not (tmp_path / "term/evals.jsonl").exists()
    assert train.main(TINY + run + ["--resume"]) == 0
    assert json.loads((tmp_path / "term/checkpoint.json").read_text())["updates"] >= 4


def test_conservative_penalty_pushes_down_untried_actions():
    from rcan_grasp_policy.qnet import QNetConfig, QNetwork
    from rcan_grasp_policy.qtopt import QTOpt, QTOptConfig
    from rcan_grasp_policy.replay import Transitions

    rng = np.random.default_rng(0)
    n = 8
    batch = Transitions(image=rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8), state=np.zeros((n, 2), np.float32),
                        action=np.zeros((n, 8), np.float32), reward=np.zeros(n, np.float32), done=np.ones(n, bool),
                        next_image=np.zeros((n, 32, 32, 3), np.uint8), next_state=np.zeros((n, 2), np.float32),
                        source=np.zeros(n, np.uint8), mc_return=np.zeros(n, np.float32))
    batch.action[:, 4] = 1.0  # every taken action: no motion (cos 0 = 1), gripper unchanged
    torch.manual_seed(0)
    net = QNetwork(QNetConfig(in_channels=3, image_size=32, width=4, fc_width=8))
    plain = QTOpt(copy.deepcopy(net), QTOptConfig(batch_size=n))
    conservative = QTOpt(copy.deepcopy(net), QTOptConfig(batch_size=n, conservative_weight=1.0, conservative_samples=4))
    assert "conservative_penalty" not in plain.update(batch, np.random.default_rng(1))
    first = conservative.update(batch, np.random.default_rng(1))["conservative_penalty"]
    for _ in range(30):
        last = conservative.update(batch, np.random.default_rng(1))["conservative_penalty"]
    assert 0 < last < first  # the taken action's logit rises above the random ones'


def test_bad_inputs_name_the_field(tmp_path):
    with pytest.raises(SystemExit):
        train.main(["--epsilon", "1.5", "--out-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="generator"):
        train.main(["--variant", "rcan", "--generator", str(tmp_path / "missing.onnx"), "--out-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="policy"):
        evaluate.main(["--policy", str(tmp_path / "nope.onnx")])


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    from rcan_bringup import cli

    assert cli.main(["train-policy", "--variant", "canonical", "--out-dir", str(tmp_path),
                     "--init-from", str(tmp_path / "no-run")]) == 2
    err = capsys.readouterr().err
    assert "rcan train-policy: error: invalid config field 'init_from'" in err and "Traceback" not in err
