"""rcan_common: strict typed configs and crash-safe writes."""
from __future__ import annotations

import dataclasses
import errno
import os
import stat
from pathlib import Path

import pytest

from rcan_common import io as rio
from rcan_common.config import ConfigError, from_dict, parse_cli, require


@dataclasses.dataclass
class Inner:
    rate: float = 1.0
    """Rate in Hz."""

    def __post_init__(self):
        require(self.rate > 0, "rate", "must be > 0")


@dataclasses.dataclass
class Outer:
    out: Path = Path("x")
    """Output directory."""
    episodes: int = 3
    """Episodes."""
    ray: bool = False
    """Use Ray."""
    inner: Inner = dataclasses.field(default_factory=Inner)
    """Nested part."""


def test_unknown_and_invalid_fields_are_named():
    with pytest.raises(ConfigError, match="episods"):
        from_dict(Outer, {"episods": 2})
    with pytest.raises(ConfigError, match="inner.rat"):
        from_dict(Outer, {"inner": {"rat": 2}})
    with pytest.raises(ConfigError, match="'rate'"):
        from_dict(Outer, {"inner": {"rate": -1}})
    with pytest.raises(ConfigError, match="episodes"):
        from_dict(Outer, {"episodes": "many"})
    cfg = from_dict(Outer, {"out": "d", "inner": {"rate": 2}})
    assert cfg.out == Path("d") and cfg.inner.rate == 2.0


def test_cli_flags_and_validation_exit():
    cfg = parse_cli(Outer, ["--episodes", "5", "--ray", "--inner.rate", "3"])
    assert cfg.episodes == 5 and cfg.ray is True and cfg.inner.rate == 3.0
    with pytest.raises(SystemExit):
        parse_cli(Outer, ["--inner.rate", "0"])


def test_atomic_write_keeps_old_file_on_disk_full(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    rio.atomic_write_json(target, {"v": 1})
    assert stat.S_IMODE(target.stat().st_mode) & 0o044  # readable by others, like a normal file

    def full(fd, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(rio.OutputError, match="disk full"):
        rio.atomic_write_json(target, {"v": 2})
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_unwritable_dir_fails_early(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(rio.OutputError, match="not writable"):
        rio.ensure_writable_dir(blocker / "sub")
