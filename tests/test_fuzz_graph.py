"""Seeded fuzz of the real multi-process graph (issue 12.9): sim, perception, policy and driver
as processes over loopback DDS, 64 px, untrained models.

The topics and Trigger services are discovered from the running graph (every subscription and
service of every node), not from a hand-kept list.  Each message is either built field by field
from the message type's own description with hostile values (NaN, inf, 1e30, extreme integers,
odd strings, wrong lengths) or is a type-aware near miss (valid image with a future / stale
stamp, joint states with A1 = 1e30 / 3.1 rad / a small plausible spoof, targets in the wrong
frame ...).  A fixed seed and fixed counts keep it bounded and repeatable.

Invariants checked:
* no node dies, and no traceback appears;
* every JointTrajectory the driver publishes has finite positions inside the KUKA limits and
  within the joint step limit (plus the joint-state jump tolerance) of the arm's real state;
* with the e-stop latched, the driver publishes nothing and the arm does not move, and no
  release_estop call releases it while the input is asserted;
* after the fuzzing stops and the e-stop is released, the pipeline commands again from fresh
  matched images within a bounded time;
* log lines per cause stay bounded (a handful per node, against thousands of messages).
"""
from __future__ import annotations

import importlib
import json
import math
import os
import re
import time
from collections import Counter

import numpy as np
import pytest

from rcan_bringup.graph import sim_graph
from rcan_bringup.launcher import GraphProcesses, ros_environment

pytestmark = [pytest.mark.ros, pytest.mark.slow]

SEED = 12
NODES = ("sim_node", "perception_node", "policy_node", "iiwa_driver_node", "supervisor_node")
TRAJECTORY = "/lbr/joint_trajectory_controller/joint_trajectory"
ESTOP = "/rcan/estop"
DRIVER_STATUS = "/iiwa_driver_node/status"
NAMES = [f"lbr_A{i}" for i in range(1, 8)]
FUZZ = "fuzz"  # frame_id of the fuzzer's joint states and trajectories
ROUNDS_FREE = 200  # hostile messages per discovered topic with the e-stop released
ROUNDS_LATCHED = 100  # ... and with the e-stop latched
BURST = 20  # Trigger calls per service per burst
HOSTILE_FLOATS = (math.nan, math.inf, -math.inf, 1e30, -1e30, 3.1, -3.1, 0.0, 1e-320)
INT_RANGES = {"int8": (-2**7, 2**7 - 1), "uint8": (0, 2**8 - 1), "byte": (0, 255), "octet": (0, 255),
              "char": (0, 255), "int16": (-2**15, 2**15 - 1), "uint16": (0, 2**16 - 1),
              "int32": (-2**31, 2**31 - 1), "uint32": (0, 2**32 - 1), "int64": (-2**63, 2**63 - 1),
              "uint64": (0, 2**64 - 1)}


# ---- hostile messages from the type description ------------------------------------------------
def message_class(type_name: str):
    """'sensor_msgs/msg/Image' (graph) or 'std_msgs/Header' (field types) -> the Python class."""
    parts = type_name.split("/")
    kind = parts[1] if len(parts) == 3 else "msg"
    return getattr(importlib.import_module(f"{parts[0]}.{kind}"), parts[-1])


def hostile_string(rng) -> str:
    return str(rng.choice(["", "lbr_link_0", "world", "x" * 2000, "évil\u202e", "%s%n{}", "rgb8", "lbr_A1",
                           f"frame_{rng.integers(1 << 30)}"]))


def hostile_value(rng, field_type: str, depth: int = 0):
    seq = re.fullmatch(r"sequence<(.+?)(?:, (\d+))?>", field_type)
    arr = re.fullmatch(r"(.+)\[(\d+)\]", field_type)
    if seq or arr:
        inner = (seq or arr).group(1)
        if arr:
            n = int(arr.group(2))
        else:
            cap = int(seq.group(2)) if seq.group(2) else (64 * 64 * 3 + 7 if inner in ("uint8", "octet") else 9)
            n = int(rng.integers(0, cap + 1))
        if inner in ("uint8", "octet", "byte"):
            data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            return list(data) if arr else data
        return [hostile_value(rng, inner, depth + 1) for _ in range(n)]
    if field_type in ("float", "double"):
        return float(rng.choice(HOSTILE_FLOATS)) if rng.random() < 0.7 else float(rng.normal(0.0, 10.0))
    if field_type in INT_RANGES:
        lo, hi = INT_RANGES[field_type]
        return int(rng.choice([lo, hi, 0, 1, 64, 472, 100000, int(rng.integers(0, min(hi, 2**31 - 1)))]))
    if field_type == "boolean":
        return bool(rng.random() < 0.5)
    if field_type.startswith("string") or field_type.startswith("wstring"):
        return hostile_string(rng)
    return hostile_message(rng, message_class(field_type), depth + 1)


def hostile_message(rng, cls, depth: int = 0):
    msg = cls()
    if depth > 4:
        return msg
    for name, field_type in cls.get_fields_and_field_types().items():
        value = hostile_value(rng, field_type, depth)
        if field_type in INT_RANGES and name in ("sec", "nanosec"):
            value = int(value) % (2**31 if name == "sec" else 1_000_000_000)
        try:
            setattr(msg, name, value)
        except (AssertionError, TypeError, ValueError):
            pass  # the type refuses it at the sender: not a message anyone can send
    return msg


class Fuzzer:
    """Type-aware near misses for the message types this graph uses, else built from the type."""

    def __init__(self, probe, seed: int):
        self.probe = probe
        self.rng = np.random.default_rng(seed)

    def stamp(self):
        from builtin_interfaces.msg import Time

        now = self.probe.node.get_clock().now().nanoseconds
        offset = float(self.rng.choice([0.0, 0.0, 3600.0, -3600.0, 0.05, 0.3, -0.3, -2.0]))
        if self.rng.random() < 0.1:
            return Time()
        sec, nsec = divmod(now + int(offset * 1e9), 1_000_000_000)
        return Time(sec=sec, nanosec=nsec)

    def real_q(self) -> np.ndarray:
        for rec in reversed(self.probe.received("/joint_states")):
            if rec.msg.header.frame_id != FUZZ and len(rec.msg.position) >= 7:
                return np.array(rec.msg.position[:7])
        return np.zeros(7)

    def message(self, cls):
        name = cls.__name__
        if self.rng.random() < 0.4:
            msg = hostile_message(self.rng, cls)
        else:
            msg = getattr(self, f"_near_{name}", lambda: hostile_message(self.rng, cls))()
        if name == "JointTrajectory":
            msg = self._never_executable(msg)
        if name in ("JointState", "JointTrajectory"):
            msg.header.frame_id = FUZZ  # tells the checks below the fuzzer's own messages apart
        return msg

    def _near_Image(self):
        from rcan_common.ros_image import rgb_to_image_msg

        size = int(self.rng.choice([64, 64, 8, 472]))
        msg = rgb_to_image_msg(self.rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        msg.header.stamp, msg.header.frame_id = self.stamp(), hostile_string(self.rng)
        kind = self.rng.integers(0, 5)
        if kind == 1:
            msg.encoding = str(self.rng.choice(["bgr8", "mono8", "16UC1", "rgba8", ""]))
        elif kind == 2:
            msg.step = int(self.rng.choice([0, 1, msg.step - 1, 2**31]))
        elif kind == 3:
            msg.height = msg.width = int(self.rng.choice([0, 60000, 2**31]))
        return msg

    def _near_JointState(self):
        from sensor_msgs.msg import JointState

        q = self.real_q().copy()
        kind = self.rng.integers(0, 4)
        j = int(self.rng.integers(0, 7))
        if kind == 0:
            q[j] = float(self.rng.choice([1e30, -1e30, 3.1, -3.1, math.nan, math.inf]))
        elif kind == 1:
            q[j] += float(self.rng.choice([-1.0, 1.0])) * float(self.rng.uniform(0.2, 2.0))  # a jump
        elif kind == 2:
            q[j] += float(self.rng.normal(0.0, math.radians(3)))  # a plausible spoof
        names = list(NAMES) if self.rng.random() < 0.8 else list(reversed(NAMES))[: int(self.rng.integers(0, 8))]
        msg = JointState(name=names, position=[float(v) for v in q[: len(names)]] if kind != 3 else [0.0])
        msg.header.stamp = self.stamp()
        return msg

    def _near_PoseStamped(self):
        from geometry_msgs.msg import PoseStamped

        msg = PoseStamped()
        msg.header.stamp = self.stamp()
        msg.header.frame_id = "lbr_link_0" if self.rng.random() < 0.6 else hostile_string(self.rng)
        p = np.array([0.55, 0.0, 0.1]) + self.rng.normal(0.0, 0.2, 3)
        if self.rng.random() < 0.3:
            p[int(self.rng.integers(0, 3))] = float(self.rng.choice(HOSTILE_FLOATS))
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in p)
        q = [1.0, 0.0, 0.0, 0.0] if self.rng.random() < 0.6 else list(self.rng.normal(0.0, 1.0, 4))
        if self.rng.random() < 0.2:
            q[int(self.rng.integers(0, 4))] = float(self.rng.choice(HOSTILE_FLOATS))
        o = msg.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in q)
        return msg

    def _near_JointTrajectory(self):
        from builtin_interfaces.msg import Duration
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        q = [float(self.rng.choice([1e30, math.nan, 3.1, 40.0])) for _ in range(7)]
        t = Duration(sec=0, nanosec=int(self.rng.integers(0, 10**8)))
        return JointTrajectory(joint_names=list(NAMES), points=[JointTrajectoryPoint(positions=q, time_from_start=t)])

    def _never_executable(self, msg):
        """A trajectory on the controller topic goes straight to the (simulated) robot, past the
        driver by design: the fuzzer only sends ones the controller must refuse."""
        for p in msg.points:
            if len(p.positions) and all(math.isfinite(v) and abs(v) < 10.0 for v in p.positions):
                p.positions = [math.nan] * len(p.positions)
        return msg

    def _near_Bool(self):
        from std_msgs.msg import Bool

        return Bool(data=bool(self.rng.random() < 0.5))


# ---- the graph ----------------------------------------------------------------------------------
def discover(probe, deadline: float) -> tuple[dict[str, str], list[str]]:
    """Every topic some rcan node subscribes to (name -> type) and every Trigger service they serve."""
    topics: dict[str, str] = {}
    services: list[str] = []
    while time.monotonic() < deadline:
        found = {}
        for node in NODES:
            try:
                subs = probe.node.get_subscriber_names_and_types_by_node(node, "/")
                srvs = probe.node.get_service_names_and_types_by_node(node, "/")
            except Exception:  # node not discovered yet
                subs, srvs = [], []
            found[node] = (subs, srvs)
        if all(subs for subs, _ in found.values()):
            for subs, srvs in found.values():
                topics.update({t: types[0] for t, types in subs if t != "/parameter_events"})
                services += [s for s, types in srvs if types == ["std_srvs/srv/Trigger"]]
            return topics, sorted(set(services))
        time.sleep(0.2)
    raise AssertionError(f"graph not discovered: {found}")


def driver_trajectories(probe, since: float = 0.0) -> list:
    return [r for r in probe.received(TRAJECTORY, since) if r.msg.header.frame_id != FUZZ]


def real_joint_states(probe, t0: float, t1: float) -> list:
    return [r for r in probe.received("/joint_states", t0) if r.t <= t1 and r.msg.header.frame_id != FUZZ]


def test_fuzz_the_running_graph(tmp_path, models_64):
    from rcan_bringup.loop_monitor import LoopMonitor
    from rcan_bringup.probe import Probe
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Bool, String
    from std_srvs.srv import Trigger

    from kuka_iiwa_driver.kinematics import load_model
    from rcan_common.ros_node import service_qos

    generator, policy = models_64
    env = ros_environment(101 + (os.getpid() + 37) % 100)
    saved = {k: os.environ.get(k) for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    os.environ.update(ROS_DOMAIN_ID=env["ROS_DOMAIN_ID"], ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    specs = sim_graph(generator, policy, image_size=64, seed=300, overrides={
        "sim_node": {"camera_rate_hz": 10.0}, "policy_node": {"max_steps": 20}})
    model = load_model("iiwa14")
    step_tol = math.radians(30.0 + 2 * 5.0)  # max_joint_step_deg + 2 x joint_state_max_jump_deg
    counts: Counter = Counter()
    try:
        with GraphProcesses(env, log_dir=tmp_path / "logs") as graph, Probe("fuzz_probe", keep=20000) as probe:
            monitor = LoopMonitor(probe)
            probe.listen("/joint_states", JointState)
            probe.listen(DRIVER_STATUS, String)
            probe.listen("/sim_node/episode", String)
            graph.start_all(specs)
            assert probe.wait_for(lambda: len(monitor.steps) >= 1 or bool(graph.poll_deaths()), 90), \
                {n: graph.log_tail(n) for n in graph.children}
            topics, services = discover(probe, time.monotonic() + 30)
            # What the graph subscribes to, found by asking it (the fuzzer's own publishers must not count).
            assert {TRAJECTORY, ESTOP, "/joint_states", "/camera/image_raw", "/rcan/canonical/image",
                    "/rcan/target_pose", "/rcan/ee_pose", "/rcan/policy/episode_done"} <= set(topics), topics
            assert "/iiwa_driver_node/release_estop" in services, services
            fuzzer = Fuzzer(probe, SEED)
            classes = {t: message_class(ty) for t, ty in topics.items()}
            clients = {s: probe.node.create_client(Trigger, s, qos_profile=service_qos()) for s in services}

            def driver_state() -> str:
                rec = probe.last(DRIVER_STATUS)
                return json.loads(rec.msg.data).get("state", "") if rec else ""

            def fuzz(rounds: int, skip: tuple[str, ...] = (), estop_value: bool | None = None,
                     call: tuple[str, ...] = ()) -> list:
                futures = []
                for r in range(rounds):
                    for topic in sorted(classes):
                        if topic in skip:
                            continue
                        msg = Bool(data=estop_value) if topic == ESTOP and estop_value is not None \
                            else fuzzer.message(classes[topic])
                        probe.publish(topic, msg)
                        counts[topic] += 1
                    if r % 20 == 0:
                        for s in call:  # a burst of calls, not waited for one by one
                            futures += [clients[s].call_async(Trigger.Request()) for _ in range(BURST)]
                            counts[s] += BURST
                    if r % 10 == 9:
                        time.sleep(0.02)  # ~1 kHz bursts with short breaks for the graph to breathe
                return futures

            # 1. Everything, the e-stop topic and every service included.
            t_start = time.monotonic()
            fuzz(ROUNDS_FREE, call=tuple(services))
            # 2. E-stop latched: hostile traffic everywhere the driver guards (the controller topic
            #    and the sim's own services reach the simulated robot past the driver by design).
            probe.publish(ESTOP, Bool(data=True))
            assert probe.wait_for(lambda: driver_state() == "estop", 10), driver_state()
            t_latched = time.monotonic()
            time.sleep(0.5)  # the e-stop hold (0.2 s) completes
            t_still = time.monotonic()
            releases = fuzz(ROUNDS_LATCHED, skip=(TRAJECTORY,), estop_value=True,
                            call=("/iiwa_driver_node/release_estop",))
            time.sleep(0.5)
            t_end_latched = time.monotonic()
            assert driver_state() == "estop"
            assert probe.wait_for(lambda: all(f.done() for f in releases[-BURST:]), 10)
            answered = [f.result() for f in releases if f.done()]
            assert answered and not any(a.success for a in answered), "released while the input was asserted"
            moves = driver_trajectories(probe, t_latched + 0.05)
            assert [r for r in moves if r.t <= t_end_latched] == [], "the driver sent a trajectory while latched"
            resets = [r.t for r in probe.received("/sim_node/episode", t_still)]
            edges = [t_still, *[t + 0.5 for t in resets if t < t_end_latched], t_end_latched]
            for t0, t1 in zip(edges[:-1], edges[1:]):  # a sim reset (episode end) teleports the arm
                q = np.array([r.msg.position[:7] for r in real_joint_states(probe, t0, t1)])
                if len(q) > 1:
                    assert np.abs(q - q[0]).max() < 1e-3, f"the arm moved {np.abs(q - q[0]).max()} rad while latched"

            # 3. Fuzzing stops; release as an operator would; the pipeline commands again.
            t_fuzz_end = time.monotonic()
            probe.publish(ESTOP, Bool(data=False))
            assert probe.wait_for(lambda: probe.trigger("/iiwa_driver_node/release_estop")[0], 10, interval=0.3)
            t_release = time.monotonic()
            steps_before = len(monitor.steps)
            assert probe.wait_for(lambda: len(monitor.steps) > steps_before and
                                  driver_trajectories(probe, t_release), 45), \
                (monitor.latest_status(), {n: graph.log_tail(n, 2000) for n in graph.children})

            # Invariants over the whole run.
            assert graph.running() == [s.name for s in specs], graph.poll_deaths()
            real = real_joint_states(probe, 0.0, time.monotonic())
            sent = driver_trajectories(probe, t_start)
            assert sent, "the driver never published"
            # The step is measured from a state the driver may have held: a sim reset (which the fuzzer
            # calls too) teleports the arm, the driver refuses that jump for joint_state_timeout_s (0.5 s),
            # and a trajectory planned before the driver's reset state arrived can reach this probe after
            # that state did.  So: some real state of the last 0.6 s, or the last one before them.
            for rec in sent:
                assert list(rec.msg.joint_names) == NAMES and len(rec.msg.points) == 1
                q = np.array(rec.msg.points[0].positions)
                assert q.shape == (7,) and np.all(np.isfinite(q)), q
                assert np.all(q >= model.lower) and np.all(q <= model.upper), q
                before = [r for r in real if r.t <= rec.t]
                held = [r for r in before if r.t >= rec.t - 0.6] or before[-1:]
                if held:
                    steps = [np.abs(q - np.array(r.msg.position[:7])).max() for r in held]
                    assert min(steps) <= step_tol, (q, [r.msg.position[:7] for r in held[-3:]])
            logs = {name: graph.log_tail(name, 10**7) for name in graph.children}
            graph.shutdown()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)

    total = sum(counts.values())
    print(f"fuzz: {total} messages/calls in {t_fuzz_end - t_start:.1f} s over {len(counts)} topics/services; "
          f"{len(sent)} driver trajectories; pipeline back {time.monotonic() - t_release:.1f} s after release")
    assert total >= 3000
    for name, log in logs.items():
        assert "Traceback" not in log, f"{name}:\n{log[-3000:]}"
        causes = Counter(re.findall(r"further '([^']*)' problems", log))
        warn_lines = [ln for ln in log.splitlines() if "[WARN]" in ln or "[ERROR]" in ln]
        print(name, len(warn_lines), "warning lines;", dict(causes))
        assert all(n <= 2 for n in causes.values()), (name, causes)  # once per cause (re-armed once at most)
        # Events logged each time are bounded by what causes them: a latch after the first needs a release.
        latches, releases = log.count("E-STOP latched"), log.count("release_estop: e-stop released")
        assert latches <= releases + 1, (latches, releases)
        others = [ln for ln in warn_lines if "further '" not in ln and "E-STOP latched" not in ln]
        print(f"   {latches} latches, {releases} releases; other warnings: {others[:5]}")
        assert len(others) <= 5, (name, others[:20])


@pytest.fixture(scope="module")
def models_64(tmp_path_factory):
    from rcan_bringup.untrained import ensure_untrained_models

    return ensure_untrained_models(tmp_path_factory.getbasetemp() / "untrained_models", 64)
