"""rcan check-aiming: the privileged aiming target, its metrics, and a tiny run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rcan_common.action import ActionBounds, decode_action
from rcan_grasp_policy import aim_check
from rcan_grasp_policy import labels as L


def test_random_moves_are_pure_moves_inside_the_step_bounds():
    bounds = ActionBounds()
    moves = aim_check.random_moves(np.random.default_rng(0), 3, 50, bounds)
    assert moves.shape == (3, 50, 8)
    for a in moves.reshape(-1, 8):
        cmd = decode_action(a, bounds)
        assert cmd.gripper == "open" and not cmd.terminate  # the open gripper stays open: a pure move
        np.testing.assert_allclose(cmd.translation, a[:3])  # inside the bounds, so nothing is clipped
        assert abs(cmd.dtheta) <= bounds.max_rotation


def test_aiming_metrics_by_hand():
    distance = np.array([[0.03, 0.01, 0.02, 0.05], [0.04, 0.02, 0.01, 0.03]])
    exact = aim_check.aiming_metrics(-distance, distance)
    assert exact == {"aim_cm": pytest.approx(1.0), "nearest_cm": pytest.approx(1.0), "rank_corr": pytest.approx(1.0)}
    reversed_ = aim_check.aiming_metrics(distance, distance)
    assert reversed_["aim_cm"] == pytest.approx(4.5) and reversed_["rank_corr"] == pytest.approx(-1.0)
    # the first state's best-scored move is its third (2 cm), the second's its first (4 cm): median 3 cm
    scores = np.array([[0.0, 0.1, 0.9, 0.2], [0.8, 0.1, 0.0, 0.3]])
    assert aim_check.aiming_metrics(scores, distance)["aim_cm"] == pytest.approx(3.0)


def test_nearest_object_distance_is_from_where_the_move_leaves_the_tcp():
    centres = np.array([[[0.5, 0.0], [0.7, 0.1]]])
    target = np.array([[0.45, 0.0, 0.2]])
    moves = np.zeros((1, 3, 8), np.float32)
    moves[0, :, :2] = [[0.05, 0.0], [0.0, 0.0], [0.05, 0.03]]
    np.testing.assert_allclose(L.nearest_object_distance(centres, target, moves), [[0.0, 0.05, 0.03]], atol=1e-6)


def test_tiny_aiming_run_reports_its_curve(tmp_path):
    L.run(L.LabelConfig(out_dir=tmp_path / "lab", scenes=2, scenes_per_task=1, split="test", image_size=32,
                        candidates=3, max_steps=4), progress=False)
    out = tmp_path / "aim.jsonl"
    args = ["--labels", str(tmp_path / "lab"), "--eval-labels", str(tmp_path / "lab"), "--image-size", "32",
            "--width", "4", "--batch-states", "4", "--moves-per-state", "3", "--updates", "3", "--eval-every", "2",
            "--eval-states", "5", "--eval-moves", "4", "--out", str(out)]
    assert aim_check.main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["updates"] for r in rows] == [0, 2, 3]
    assert "loss" not in rows[0] and all(0 < r["loss"] < 1 for r in rows[1:])
    for r in rows:
        for name in ("heldout", "train"):
            assert r[f"{name}_nearest_cm"] <= r[f"{name}_aim_cm"]
            assert -1.0 <= r[f"{name}_rank_corr"] <= 1.0
    with pytest.raises(SystemExit, match="2"):
        aim_check.main(args + ["--sigma", "0"])
    assert aim_check.main(args + ["--init-from", str(tmp_path / "missing.safetensors")]) == 2
