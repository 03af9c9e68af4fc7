"""`rcan launch`: start the graph description as real processes, without `ros2 launch`.

Each node runs as its console script with the same ``--ros-args`` that launch_ros would
build (node name, namespace, parameter files, parameters, remappings).  Every child gets
its own process group, so the launcher (not the terminal) decides how it stops: Ctrl-C is
forwarded as SIGINT, stragglers get SIGTERM then SIGKILL of the whole group.  Children
also get SIGTERM if the launcher itself dies (PR_SET_PDEATHSIG), so no run leaves stray
processes behind.  The demo, the integration tests and the benchmark start nodes
through :class:`GraphProcesses` too.
"""
from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Sequence

import yaml

from rcan_bringup.graph import LaunchArgs, NodeSpec, enabled_nodes, resolve, share_dir
from rcan_common.config import parse_cli, require

_PR_SET_PDEATHSIG = 1


class LaunchError(RuntimeError):
    """A node cannot be started (missing executable, parameter file)."""


def param_text(value: object) -> str:
    """A parameter value as `-p name:=<text>` expects it (YAML, typed the way it was given)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A string that YAML would read as something else (a number, true, empty) is quoted.
        return value if value and yaml.safe_load(value) == value else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(param_text(v) for v in value) + "]"
    raise TypeError(f"unsupported parameter value {value!r}")


def find_executable(spec: NodeSpec) -> str | None:
    """The console script of `spec`: beside this interpreter first (the venv), then PATH."""
    local = Path(sys.executable).parent / spec.executable
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(spec.executable)


def node_command(spec: NodeSpec, root: Path | None = None, executable: str | None = None,
                 check_files: bool = True) -> list[str]:
    """argv for `spec`, equivalent to what launch_ros.actions.Node builds."""
    root = root or share_dir()
    exe = executable or find_executable(spec)
    if exe is None:
        raise LaunchError(f"{spec.name}: executable '{spec.executable}' not found (is package {spec.package} installed?)")
    argv = [exe, *spec.arguments, "--ros-args", "-r", f"__node:={spec.name}"]
    if spec.namespace:
        argv += ["-r", f"__ns:=/{spec.namespace.strip('/')}"]
    for rel in spec.parameter_files:
        path = resolve(rel, root)
        if check_files and not path.is_file():
            raise LaunchError(f"{spec.name}: parameter file {path} does not exist")
        argv += ["--params-file", str(path)]
    for key, value in spec.parameters.items():
        argv += ["-p", f"{key}:={param_text(value)}"]
    for src, dst in spec.remappings:
        argv += ["-r", f"{src}:={dst}"]
    return argv


def ros_environment(domain_id: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for node processes: loopback-only DDS on `domain_id`."""
    require(0 <= domain_id <= 232, "domain_id", "must be in 0..232")
    env = dict(os.environ if base is None else base)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _child_setup(parent_pid: int) -> None:
    # Runs in the child between fork and exec: die with the launcher.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    if os.getppid() != parent_pid:  # the launcher died before prctl took effect
        os._exit(1)


@dataclass
class _Child:
    spec: NodeSpec
    argv: list[str]
    proc: subprocess.Popen
    log: IO[bytes] | None
    reported: bool = False


class GraphProcesses:
    """A set of running node processes started from NodeSpecs.

    Use as a context manager (or call :meth:`shutdown`): leaving it stops every child and
    its whole process group.
    """

    def __init__(self, env: dict[str, str], log_dir: Path | None = None, root: Path | None = None):
        self.env = env
        self.log_dir = Path(log_dir) if log_dir else None
        self.root = root or share_dir()
        self.children: dict[str, _Child] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> "GraphProcesses":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def start(self, spec: NodeSpec) -> subprocess.Popen:
        argv = node_command(spec, self.root)
        log = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.log_dir / f"{spec.name}.log", "ab")
        proc = subprocess.Popen(
            argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT if log else None,
            start_new_session=True, preexec_fn=lambda pid=os.getpid(): _child_setup(pid),
        )
        with self._lock:
            old = self.children.get(spec.name)
            if old is not None and old.log is not None:
                old.log.close()
            self.children[spec.name] = _Child(spec, argv, proc, log)
        return proc

    def start_all(self, specs: Iterable[NodeSpec]) -> None:
        for spec in specs:
            self.start(spec)

    def restart(self, name: str) -> subprocess.Popen:
        """Start `name` again with the same spec (after it died or was killed)."""
        child = self.children[name]
        if child.proc.poll() is None:
            raise LaunchError(f"{name} is still running (pid {child.proc.pid})")
        return self.start(child.spec)

    def pid(self, name: str) -> int:
        return self.children[name].proc.pid

    def kill(self, name: str, sig: int = signal.SIGKILL, wait: float = 5.0) -> int | None:
        """Send `sig` to `name`'s process group and wait up to `wait` s; returns its exit code."""
        proc = self.children[name].proc
        _signal_group(proc, sig)
        try:
            return proc.wait(wait)
        except subprocess.TimeoutExpired:
            return None

    def running(self) -> list[str]:
        return [name for name, c in self.children.items() if c.proc.poll() is None]

    def poll_deaths(self) -> list[tuple[str, int]]:
        """Children that exited since the last call, as (name, exit code); each reported once."""
        dead = []
        with self._lock:
            for name, child in self.children.items():
                rc = child.proc.poll()
                if rc is not None and not child.reported:
                    child.reported = True
                    dead.append((name, rc))
        return dead

    def log_tail(self, name: str, chars: int = 4000) -> str:
        """The end of `name`'s log file (log_dir mode), for failure messages."""
        if self.log_dir is None:
            return ""
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.is_file() else ""

    def shutdown(self, sigint_timeout: float = 5.0, sigterm_timeout: float = 3.0) -> dict[str, int | None]:
        """SIGINT every group, then SIGTERM, then SIGKILL; returns name -> exit code."""
        children = list(self.children.values())
        for sig, timeout in ((signal.SIGINT, sigint_timeout), (signal.SIGTERM, sigterm_timeout)):
            alive = [c for c in children if c.proc.poll() is None]
            for c in alive:
                _signal_group(c.proc, sig)
            deadline = time.monotonic() + timeout
            for c in alive:
                try:
                    c.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for c in children:
            # Also reaps grandchildren left in the group after the leader exited.
            _signal_group(c.proc, signal.SIGKILL)
            try:
                c.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                pass
            if c.log is not None:
                c.log.close()
        return {c.spec.name: c.proc.returncode for c in children}


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def group_alive(pgid: int) -> bool:
    """True while any live process of the process group `pgid` exists."""
    return bool(group_members(pgid))


@dataclass(frozen=True)
class LauncherConfig(LaunchArgs):
    """`rcan launch`: the launch arguments plus how to run the processes."""

    domain_id: int = -1
    """ROS_DOMAIN_ID for every node (-1: the caller's ROS_DOMAIN_ID, else 0)."""
    log_dir: Path | None = None
    """Write each node's output to <log_dir>/<node>.log instead of this terminal."""
    dry_run: bool = False
    """Print the commands and exit."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(-1 <= self.domain_id <= 232, "domain_id", "must be -1 or in 0..232")

    def launch_args(self) -> LaunchArgs:
        return LaunchArgs(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LaunchArgs)})

    def resolved_domain_id(self) -> int:
        if self.domain_id >= 0:
            return self.domain_id
        return int(os.environ.get("ROS_DOMAIN_ID", "0") or 0)


def runnable(specs: Sequence[NodeSpec]) -> tuple[list[NodeSpec], list[str]]:
    """Split specs into those whose executable exists and warnings for the others that are
    optional (rviz2 needs a ROS desktop install; the graph runs without it)."""
    ok, warnings = [], []
    for spec in specs:
        if spec.package != "rviz2" or find_executable(spec):
            ok.append(spec)
        else:
            warnings.append("rviz2 not found on PATH: skipping it (install ros-jazzy-rviz2 to use --rviz)")
    return ok, warnings


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(LauncherConfig, argv, description="start the rcan node graph as processes")
    specs, warnings = runnable(enabled_nodes(cfg.launch_args()))
    for w in warnings:
        print(f"[rcan launch] {w}", file=sys.stderr)
    root = share_dir()
    if cfg.dry_run:
        for spec in specs:
            print(" ".join(node_command(spec, root)))
        return 0

    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    env = ros_environment(cfg.resolved_domain_id())
    failed = False
    with GraphProcesses(env, cfg.log_dir, root) as graph:
        try:
            for spec in specs:
                proc = graph.start(spec)
                print(f"[rcan launch] started {spec.name} (pid {proc.pid})", flush=True)
        except LaunchError as exc:
            print(f"[rcan launch] error: {exc}", file=sys.stderr)
            return 1
        while not stop.is_set():
            for name, rc in graph.poll_deaths():
                failed = failed or rc != 0
                print(f"[rcan launch] {name} (pid {graph.pid(name)}) exited with code {rc}", file=sys.stderr, flush=True)
            if not graph.running():
                print("[rcan launch] all nodes have exited", file=sys.stderr)
                break
            stop.wait(0.2)
        print("[rcan launch] shutting down", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
