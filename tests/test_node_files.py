"""Every node module stays thin wiring (ARCHITECTURE.md): the logic lives in ROS-free modules."""
from __future__ import annotations

from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 150


@pytest.mark.parametrize("path", sorted(SRC.rglob("*_node.py")), ids=lambda p: p.name)
def test_node_module_is_at_most_150_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines (at most {MAX_LINES})"
