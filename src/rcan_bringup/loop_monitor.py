"""Watch the perception -> policy -> driver loop from outside and time its stages.

All times come from one observer process (the Probe), on the host clock that also
stamps the camera images (ROS time = system time here), so they can be compared:

* camera -> canonical: canonical image received - its header stamp (perception copies
  the camera frame's header, so the stamp is the capture time);
* canonical -> command: an action's marker array received - the newest canonical image
  received before it (includes the policy's wait for its next control tick);
* command -> trajectory: JointTrajectory received - the target pose received before it;
* loop: JointTrajectory received - capture stamp of the image the action was chosen on.

Each figure includes one DDS hop to the observer (well under a millisecond on loopback).
"""
from __future__ import annotations

import bisect
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from rcan_bringup.probe import Probe, Received
from rcan_common.stamps import stamp_to_s

CAMERA = "/camera/image_raw"
CANONICAL = "/rcan/canonical/image"
TARGET = "/rcan/target_pose"
MARKERS = "/rcan/policy/markers"
STATUS = "/rcan/policy/status"
RESULT = "/supervisor_node/result"  # one judged episode per message (sim graph only)
TRAJECTORY = "/lbr/joint_trajectory_controller/joint_trajectory"
JOINT_STATES = "/joint_states"


def percentiles(values: list[float]) -> dict:
    """count, p50, p95, max in milliseconds (None when empty)."""
    if not values:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
    a = np.asarray(values) * 1000.0
    return {"count": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1), "max_ms": round(float(a.max()), 1)}


def _json(rec: Received):
    """A JSON String message's content (None when it is not JSON)."""
    try:
        return json.loads(rec.msg.data)
    except ValueError:
        return None


def _step_number(markers) -> int | None:
    """The step counter in the policy's Q text marker ("Q=0.512 step 3/20 ...")."""
    for marker in markers.markers:
        match = re.search(r"step (\d+)/", marker.text or "")
        if match:
            return int(match.group(1))
    return None


@dataclass
class Step:
    """One policy action as seen from outside."""

    marker_t: float  # wall time the marker array arrived
    number: int | None  # the policy's step counter, from the marker text
    image_stamp: float | None  # capture stamp of the canonical image it was (most likely) chosen on
    canonical_t: float | None
    target_t: float | None = None
    trajectory_t: float | None = None
    status: dict | None = None  # the policy status that followed (last_action, last_q, step)
    source: np.ndarray | None = None  # the images it was chosen on (kept for the first steps only)
    canonical: np.ndarray | None = None


@dataclass
class LoopMonitor:
    probe: Probe
    keep_images: int = 400
    keep_step_images: int = 8
    """Steps whose source/canonical images are kept with them (for the demo's strip)."""
    steps: list[Step] = field(default_factory=list)
    statuses: list[dict] = field(default_factory=list)
    results: list[dict] = field(default_factory=list)
    """The supervisor's judged episodes, in order."""

    def __post_init__(self) -> None:
        from sensor_msgs.msg import Image, JointState
        from geometry_msgs.msg import PoseStamped
        from std_msgs.msg import String
        from trajectory_msgs.msg import JointTrajectory
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from visualization_msgs.msg import MarkerArray

        self._lock = threading.Lock()
        self._canonical: deque[tuple[float, float]] = deque(maxlen=self.keep_images)  # (receipt, stamp)
        self._images: dict[str, dict[float, np.ndarray]] = {"source": {}, "canonical": {}}
        self._last_target: float | None = None  # receipt of the latest target
        self._unanswered_target: float | None = None  # receipt of the latest target until a trajectory follows it
        self._steps_with_images = 0
        self.cam_to_canonical: list[float] = []
        self.command_to_trajectory: list[float] = []
        self.trajectories = 0
        p = self.probe
        # Reliable like every publisher of the graph, so the observer misses nothing it times.
        qos = QoSProfile(depth=50, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        p.listen(CAMERA, Image, qos, callback=lambda r: self._on_image("source", r))
        p.listen(CANONICAL, Image, qos, callback=self._on_canonical)
        p.listen(TARGET, PoseStamped, qos, callback=self._on_target)
        p.listen(MARKERS, MarkerArray, qos, callback=self._on_markers)
        p.listen(TRAJECTORY, JointTrajectory, qos, callback=self._on_trajectory)
        p.listen(STATUS, String, qos, callback=self._on_status)
        p.listen(RESULT, String, qos, callback=self._on_result)
        p.listen(JOINT_STATES, JointState, qos)

    # -- callbacks (probe thread)
    def _on_image(self, kind: str, rec: Received) -> None:
        from rcan_common.ros_image import ImageError, image_msg_to_rgb

        try:
            rgb = image_msg_to_rgb(rec.msg)
        except ImageError:
            return
        with self._lock:
            store = self._images[kind]
            store[stamp_to_s(rec.msg.header.stamp)] = rgb
            while len(store) > self.keep_images:
                store.pop(next(iter(store)))

    def _on_canonical(self, rec: Received) -> None:
        stamp = stamp_to_s(rec.msg.header.stamp)
        with self._lock:
            self._canonical.append((rec.wall, stamp))
            self.cam_to_canonical.append(rec.wall - stamp)
        self._on_image("canonical", rec)

    def _on_target(self, rec: Received) -> None:
        with self._lock:
            self._last_target = rec.wall
            self._unanswered_target = rec.wall
            if self.steps and self.steps[-1].target_t is None and rec.wall - self.steps[-1].marker_t < 0.5:
                self.steps[-1].target_t = rec.wall

    def _on_markers(self, rec: Received) -> None:
        with self._lock:
            before = [c for c in self._canonical if c[0] <= rec.wall]
            receipt, stamp = before[-1] if before else (None, None)
            # The target pose is published just before the markers in the same tick.
            last = self._last_target
            target = last if last is not None and rec.wall - last < 0.5 else None
            step = Step(rec.wall, _step_number(rec.msg), stamp, receipt, target_t=target)
            # The observer may join after the first frames (discovery): keep images for the
            # first steps that have both, not merely the first steps.
            if stamp is not None and self._steps_with_images < self.keep_step_images:
                step.source = self._images["source"].get(stamp)
                step.canonical = self._images["canonical"].get(stamp)
                self._steps_with_images += step.source is not None and step.canonical is not None
            self.steps.append(step)

    def _on_trajectory(self, rec: Received) -> None:
        with self._lock:
            self.trajectories += 1
            # Only the first trajectory after a target answers it. The later segments of a long move (the
            # driver's step limit) follow without a new target, up to a segment's duration later: not latency.
            target, self._unanswered_target = self._unanswered_target, None
            if target is None or not 0 <= rec.wall - target < 1.0:
                return
            self.command_to_trajectory.append(rec.wall - target)
            for step in reversed(self.steps[-3:]):
                # A target the driver rejected gets no trajectory; only the latest target is paired.
                if step.target_t == target:
                    step.trajectory_t = rec.wall
                    break

    def _on_status(self, rec: Received) -> None:
        status = _json(rec)
        if status is None:
            return
        with self._lock:
            self.statuses.append(status)
            # The status published with an action carries its step counter; topics are not
            # ordered against each other, so match by that number rather than by arrival.
            for step in reversed(self.steps[-3:]):
                if step.status is None and step.number == status.get("step") and status.get("last_action"):
                    step.status = status
                    break

    def _on_result(self, rec: Received) -> None:
        result = _json(rec)
        if result is not None:
            with self._lock:
                self.results.append(result)

    def reset(self) -> None:
        """Forget every timing gathered so far (e.g. after warm-up)."""
        with self._lock:
            self.steps.clear()
            self.cam_to_canonical.clear()
            self.command_to_trajectory.clear()
            self._unanswered_target = None
            self.trajectories = 0
            self._steps_with_images = 0

    # -- queries
    def latest_status(self) -> dict | None:
        with self._lock:
            return self.statuses[-1] if self.statuses else None

    def canonical_rate(self, since_wall: float, until_wall: float) -> float:
        with self._lock:
            times = [c[0] for c in self._canonical]
        n = len(times) - bisect.bisect_left(times, since_wall)
        return n / max(1e-9, until_wall - since_wall)

    def summary(self) -> dict:
        with self._lock:
            steps = list(self.steps)
            cam = list(self.cam_to_canonical)
            cmd = list(self.command_to_trajectory)
        canon_to_cmd = [s.marker_t - s.canonical_t for s in steps if s.canonical_t is not None]
        loop = [s.trajectory_t - s.image_stamp for s in steps
                if s.trajectory_t is not None and s.image_stamp is not None]
        return {
            "camera_to_canonical": percentiles(cam),
            "canonical_to_command": percentiles(canon_to_cmd),
            "command_to_trajectory": percentiles(cmd),
            "camera_to_trajectory": percentiles(loop),
            "actions": len(steps),
            "trajectories": self.trajectories,
        }
