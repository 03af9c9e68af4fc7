"""Typed configs: one dataclass per component, a CLI generated from it, strict loading.

Every config is a (possibly nested) dataclass whose field docstrings become the `--help`
text (tyro reads attribute docstrings).  Validation lives in each dataclass's
``__post_init__`` and raises :class:`ConfigError` naming the offending field.
Loading from a dict/JSON/YAML rejects unknown keys, so a typo never silently falls back
to a default.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the field."""


def require(condition: bool, field: str, message: str) -> None:
    """Raise ConfigError for `field` unless `condition` holds (use in __post_init__)."""
    if not condition:
        raise ConfigError(f"invalid config field '{field}': {message}")


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-friendly dict of a dataclass config (Paths and tuples become str and lists)."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    return convert(cfg)


def _coerce(tp: Any, value: Any, field: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value, _prefix=field + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, field)
            except (ConfigError, TypeError, ValueError):
                continue
        raise ConfigError(f"invalid config field '{field}': cannot use {value!r} as {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"invalid config field '{field}': {value!r} is not one of {list(args)}")
        return value
    if tp is Path:
        return Path(value)
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, field) for v in value)
        if args and len(args) != len(value):
            raise ConfigError(f"invalid config field '{field}': expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, field) for a, v in zip(args, value)) if args else tuple(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"invalid config field '{field}': expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], _prefix: str = "") -> T:
    """Build `cls` from a dict, recursing into nested dataclasses; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"config for {cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {', '.join(_prefix + u for u in unknown)} for {cls.__name__}; "
            f"known: {', '.join(sorted(known))}"
        )
    kwargs = {k: _coerce(hints[k], v, _prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid config for {cls.__name__}: {exc}") from exc


def load(cls: type[T], path: str | Path) -> T:
    """Load a config from a .json or .yaml file (strict)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    return from_dict(cls, data)


def save(cfg: Any, path: str | Path) -> None:
    """Write the config as JSON, atomically."""
    from rcan_common.io import atomic_write_json

    atomic_write_json(path, to_dict(cfg))


def load_for_resume(cls: type[T], run_dir: str | Path, cfg: T, fixed: Sequence[str]) -> T:
    """The config a run directory was started with (its config.json), after checking that a resumed run
    keeps every field in `fixed` (the ones that shape its networks or data); ConfigError names the first
    that differs, and FileNotFoundError says when there is no checkpoint to resume."""
    d = Path(run_dir)
    if not (d / "checkpoint.json").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint in {d}")
    saved = load(cls, d / "config.json")
    for f in fixed:
        if getattr(saved, f) != getattr(cfg, f):
            raise ConfigError(f"invalid config field '{f}': run {d} was trained with {getattr(saved, f)!r}, "
                              f"got {getattr(cfg, f)!r}")
    return saved


def start_or_resume(trainer: Any, cfg: Any, run_dir: str | Path) -> None:
    """Begin a training run in `run_dir`: restore the trainer's checkpoint when cfg.resume, refuse to start over
    a run that is already there, and (re)write config.json."""
    d = Path(run_dir)
    if cfg.resume:
        trainer.restore()
    elif (d / "checkpoint.json").exists():
        raise ConfigError(f"invalid config field 'run_name': {d} already holds a run; pass --resume or another --run-name")
    save(cfg, d / "config.json")


def parse_cli(cls: type[T], args: Sequence[str] | None = None, description: str | None = None,
              default: T | None = None) -> T:
    """Generate the CLI from the dataclass (field docstrings are the help text) and parse it.

    A ConfigError from validation is turned into a clean exit with the field named.
    """
    import sys

    import tyro

    try:
        return tyro.cli(cls, args=args, description=description, default=default)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
