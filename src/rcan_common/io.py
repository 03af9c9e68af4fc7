"""Crash-safe file writes and early checks on output locations."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class OutputError(OSError):
    """An output location is unusable (not writable, disk full); the message says which."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file owner-only; give it the usual permissions (shipped models are shared).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if exc.errno == errno.ENOSPC:
            raise OutputError(errno.ENOSPC, f"disk full while writing {path}; the previous version is intact") from exc
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and prove it is writable, before any expensive work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise OutputError(exc.errno or errno.EACCES, f"output directory {path} is not writable: {exc.strerror or exc}") from exc
    return path
