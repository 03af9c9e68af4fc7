"""ament_python entry point.

Package metadata, dependencies and console scripts live in pyproject.toml (so plain pip and
colcon read the same source).  This file only adds the ROS-specific data_files: the ament
index marker and the share/ folders that `ros2 launch` / `ros2 run` look up.
"""
from pathlib import Path

from setuptools import setup

PACKAGE = "rcan_bringup"
HERE = Path(__file__).parent


def share_tree(folder: str) -> list[tuple[str, list[str]]]:
    """Every file under `folder`, mapped to share/<pkg>/<folder>/<same sub-path>."""
    entries: dict[str, list[str]] = {}
    for path in sorted((HERE / folder).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(HERE)
            entries.setdefault(f"share/{PACKAGE}/{rel.parent}", []).append(str(rel))
    return sorted(entries.items())


setup(
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *share_tree("launch"),
        *share_tree("config"),
        *share_tree("rviz"),
        *share_tree("models"),
    ],
)
