"""`rcan render-grid` and the scripted baseline (`rcan eval-policy --policy scripted`) end to end (tiny sizes)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from rcan_bringup.cli import main as rcan


def test_render_grid_writes_png(tmp_path):
    out = tmp_path / "grid.png"
    assert rcan(["render-grid", "--out", str(out), "--image-size", "32", "--rows", "2", "--steps-between", "1"]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (2 * 32 + 2, 4 * 32 + 3 * 2, 3)


def test_render_grid_rejects_bad_config(tmp_path, capsys):
    with pytest.raises(SystemExit):
        rcan(["render-grid", "--out", str(tmp_path / "grid.jpg")])
    assert "out" in capsys.readouterr().err


def test_scripted_eval_reports_wilson_interval(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert rcan(["eval-policy", "--policy", "scripted", "--episodes", "2", "--image-size", "16", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["episodes"] == 2 and result["split"] == "test" and 0 <= result["successes"] <= 2
    lo, hi = result["wilson95"]
    assert 0.0 <= lo <= result["success_rate"] <= hi <= 1.0
    assert "Wilson" in capsys.readouterr().out
