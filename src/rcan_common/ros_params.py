"""ROS parameters from a flat config dataclass: declared once, validated at start-up and on every change.

:func:`declare_config` declares one parameter per field of a flat dataclass (bool, int,
float, str, list[float], list[str]) and builds the config through :func:`build_config`,
the same validation a running node applies to a SetParameters request:

* a parameter not named in ``runtime`` is declared **read-only** (``ros2 param describe``
  shows it); rclpy rejects any change with "Trying to set a read-only parameter: <name>".
  Model paths, image sizes, topic names, QoS, rates of timers: everything the node uses
  only at start-up.
* a parameter named in ``runtime`` is **validated**: the change is applied to a copy of the
  current config, :func:`build_config` runs on it (types, finite numbers, the dataclass's
  ``__post_init__``), and only a valid candidate is handed to ``on_change`` and accepted.
  A bad value is rejected with the validation message as the reason; the old value stays.

Non-finite floats (NaN, inf) are rejected for every float field, at start-up as at runtime.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable, Iterable, TypeVar

from rcan_common.config import ConfigError, from_dict

T = TypeVar("T")

READ_ONLY_NOTE = "read-only: used at start-up; restart the node to change it"
RUNTIME_NOTE = "validated at runtime: a change is checked like a start-up value and applied"


def _ros_type(tp: Any) -> int:
    from rcl_interfaces.msg import ParameterType

    table = {
        bool: ParameterType.PARAMETER_BOOL,
        int: ParameterType.PARAMETER_INTEGER,
        float: ParameterType.PARAMETER_DOUBLE,
        str: ParameterType.PARAMETER_STRING,
        list[float]: ParameterType.PARAMETER_DOUBLE_ARRAY,
        list[str]: ParameterType.PARAMETER_STRING_ARRAY,
    }
    if tp not in table:
        raise TypeError(f"no ROS parameter type for {tp!r}")
    return table[tp]


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"invalid config field '{field}': expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"invalid config field '{field}': must be a finite number, got {value!r}")
    return float(value)


def _value(tp: Any, value: Any, field: str) -> Any:
    """A ROS parameter value as the dataclass field's type (strict; numbers must be finite)."""
    if tp is float:
        return _number(value, field)
    if tp == list[float]:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ConfigError(f"invalid config field '{field}': expected a list of numbers, got {value!r}")
        return [_number(v, field) for v in value]
    if tp == list[str]:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") \
                or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"invalid config field '{field}': expected a list of strings, got {value!r}")
        return list(value)
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"invalid config field '{field}': expected an integer, got {value!r}")
    if tp in (str, bool) and not isinstance(value, tp):
        raise ConfigError(f"invalid config field '{field}': expected {tp.__name__}, got {value!r}")
    return value


def build_config(cls: type[T], values: dict[str, Any]) -> T:
    """The validated config from parameter values (raises ConfigError naming the field)."""
    hints = typing.get_type_hints(cls)
    return from_dict(cls, {name: _value(hints[name], value, name) for name, value in values.items()})


def declare_config(node, cls: type[T], runtime: Iterable[str] = (),
                   on_change: Callable[[T], None] | None = None) -> T:
    """Declare every field of `cls` as a parameter of `node` and return the validated config.

    Fields in `runtime` may change while the node runs: each change is validated with
    :func:`build_config` and, if valid, passed to `on_change` (which must apply it) before it
    is accepted.  Every other field is read-only.  Raises ConfigError on a bad start-up value.
    """
    from rcl_interfaces.msg import ParameterDescriptor, ParameterType, SetParametersResult
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    runtime = frozenset(runtime)
    unknown = runtime - set(names)
    if unknown:
        raise ValueError(f"runtime parameters {sorted(unknown)} are not fields of {cls.__name__}")
    if runtime and on_change is None:
        raise ValueError("runtime parameters need an on_change callback that applies them")
    defaults = cls()
    values: dict[str, Any] = {}
    for name in names:
        ptype = _ros_type(hints[name])
        read_only = name not in runtime
        # Doubles also accept integers written in YAML (`rate_hz: 10`); build_config checks and converts.
        dynamic = ptype == ParameterType.PARAMETER_DOUBLE
        descriptor = ParameterDescriptor(
            name=name, type=ParameterType.PARAMETER_NOT_SET if dynamic else ptype, dynamic_typing=dynamic,
            read_only=read_only, description=READ_ONLY_NOTE if read_only else RUNTIME_NOTE)
        default = getattr(defaults, name)
        try:
            values[name] = node.declare_parameter(name, default, descriptor).value
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            raise ConfigError(f"invalid config field '{name}': {exc}") from exc
    state = {"config": build_config(cls, values), "values": values}

    def on_set(parameters) -> SetParametersResult:
        changes = {}
        for p in parameters:
            if p.name not in values:
                continue  # rclpy's own (use_sim_time, ...)
            if p.name not in runtime:  # rclpy checks the descriptor first; kept for clarity
                return SetParametersResult(successful=False, reason=f"{p.name} is {READ_ONLY_NOTE}")
            changes[p.name] = p.value
        if not changes:
            return SetParametersResult(successful=True)
        candidate_values = {**state["values"], **changes}
        try:
            candidate = build_config(cls, candidate_values)
            on_change(candidate)
        except (ConfigError, ValueError, TypeError) as exc:
            return SetParametersResult(successful=False, reason=f"rejected: {exc}")
        state["config"], state["values"] = candidate, candidate_values
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
    return state["config"]
