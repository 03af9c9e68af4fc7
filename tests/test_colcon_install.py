"""Build the package with colcon into a temporary install tree, as on the robot.

This is how `ros2 run rcan_bringup <exe>` and `ros2 launch rcan_bringup grasp.launch.py`
find things: the ament index marker, share/rcan_bringup/{package.xml,launch,config,rviz,models}
and one executable per console script under lib/rcan_bringup/.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "rcan_bringup"


def console_scripts() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return sorted(tomllib.load(f)["project"]["scripts"])


@pytest.fixture(scope="module")
def install_tree(tmp_path_factory) -> Path:
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        colcon = shutil.which("colcon")
    assert colcon, "colcon is part of the dev extra; run `make setup`"
    work = tmp_path_factory.mktemp("colcon")
    # Build from a copy of the tracked tree so the checkout gets no build artefacts.
    src = work / "src" / PACKAGE
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    result = subprocess.run(
        [str(colcon), "--log-base", str(work / "log"), "build", "--base-paths", str(work / "src"),
         "--build-base", str(work / "build"), "--install-base", str(work / "install"),
         "--event-handlers", "console_direct-"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work / "install" / PACKAGE


def test_ament_index_marker(install_tree: Path):
    assert (install_tree / "share/ament_index/resource_index/packages" / PACKAGE).is_file()


@pytest.mark.parametrize("folder", ["launch", "config", "rviz", "models"])
def test_share_folders_installed(install_tree: Path, folder: str):
    share = install_tree / "share" / PACKAGE
    assert (share / "package.xml").is_file()
    installed = [p for p in (share / folder).rglob("*") if p.is_file()]
    assert installed, f"share/{PACKAGE}/{folder} is missing or empty"
    tracked = [p for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert len(installed) == len(tracked)


def test_every_executable_installed(install_tree: Path):
    lib = install_tree / "lib" / PACKAGE
    for exe in console_scripts():
        assert (lib / exe).is_file(), f"lib/{PACKAGE}/{exe} missing"
    assert (lib / "sim_node").read_text().startswith("#!")


def test_launch_file_installed(install_tree: Path):
    assert (install_tree / "share" / PACKAGE / "launch" / "grasp.launch.py").is_file()
