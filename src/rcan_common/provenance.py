"""Provenance of what a command writes (datasets, evaluation reports, model cards): file digests,
installed package versions and the source commit.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Iterable

_SRC = Path(__file__).resolve().parents[1]  # src/ in a checkout: the rcan packages


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def git_commit() -> str:
    """The source commit of the rcan packages (with '+dirty' when tracked files under src/ have local
    changes), or 'unknown' outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_SRC, capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=_SRC,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def package_versions(dists: Iterable[str]) -> dict[str, str]:
    """{"python": version, dist: installed version or "not installed", ...}; the rcan_bringup
    distribution (this project) is reported as "rcan"."""
    out = {"python": platform.python_version()}
    for dist in dists:
        key = "rcan" if dist == "rcan_bringup" else dist
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = "not installed"
    return out
