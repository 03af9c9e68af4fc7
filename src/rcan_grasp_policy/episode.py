"""The policy's episode state machine (ROS-free): when to act, wait, lift and end an episode.

One control step (paper 4.3, mirroring rcan_sim.env.GraspEnv.step):
    fresh [source, G(source)] pair stamped after the previous command settled + fresh EE/gripper state
    -> the planner's action -> target pose = current EE pose + clipped translation, rotated by
       dtheta about the vertical (absolute, base frame) -> wait until the arm arrives
    -> gripper command (if the action changes it) -> wait until the gripper reports it
    -> next step, or after `terminate` / `max_steps`: lift -> end of episode.
Who prepares an episode and judges it is not the policy's business: an episode begins from the
current scene on ``start_episode`` and ends after the lift with an episode-end record
(:attr:`Decision.episode_done`: episode, steps, why it ended); then the machine is idle, ready
for the next start.  In sim a supervisor (rcan_sim.supervisor) resets the scene before each
start and judges the grasp after each end; on the robot an operator does.

The state machine never blocks and never talks to ROS: ``tick`` returns a :class:`Decision`
(what to publish, or why nothing was sent) and the node does the I/O.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, NamedTuple

import numpy as np

from rcan_common.action import ActionBounds, decode_action, with_yaw
from rcan_common.config import require
from rcan_common.stamps import FUTURE_STAMP, future_stamp_reason
from rcan_grasp_policy.contract import PolicyContract
from rcan_grasp_policy.planner import apply_action, vertical_yaw


# ---- inputs
NORMAL_WAITS = {"waiting_for_images_after_settle"}  # Decision.wait causes that are no problem (the next frame)


class EEState(NamedTuple):
    pos: np.ndarray  # (3,) m, base frame
    quat: np.ndarray  # (4,) x, y, z, w
    stamp: float  # s, ROS time


class GripperState(NamedTuple):
    open: bool
    stamp: float


class ImagePair(NamedTuple):
    stamp: float
    source: np.ndarray  # HxWx3 uint8 RGB
    canonical: np.ndarray  # HxWx3 uint8 RGB


def check_ee_pose(pos: np.ndarray, quat: np.ndarray, frame: str, stamp: float, now: float, base_frame: str,
                  max_future_s: float, max_age: float) -> tuple[EEState | None, str, str]:
    """A received EE pose as an EEState (quaternion normalized), or (None, cause, log line) when it is
    in the wrong frame, non-finite, stamped in the future or too old to ever be used."""
    if frame != base_frame:
        return None, "ee_frame", f"rejected EE pose in frame '{frame}', expected '{base_frame}'"
    norm = np.linalg.norm(quat)
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat)) and norm > 1e-6):
        return None, "ee_values", f"rejected EE pose with non-finite values or a zero quaternion: {pos}, {quat}"
    future = future_stamp_reason(stamp, now, max_future_s)
    if future is not None:
        return None, FUTURE_STAMP, f"rejected EE pose: {future}"
    age = now - stamp
    if age > max_age:  # never usable: keep the fresh state it would replace
        return None, "ee_stale", f"rejected EE pose stamped {age:.3f} s ago (max_input_age {max_age} s)"
    return EEState(pos, quat / norm, stamp), "", ""


# ---- the episode state machine
class Phase(str, Enum):
    IDLE = "idle"  # no episode running: ready for start_episode
    ACT = "act"  # waiting for fresh inputs, then choose an action
    MOVE = "move"  # waiting for the arm to reach the target
    GRIP = "grip"  # waiting for the gripper to open/close
    LIFT = "lift"  # waiting for the arm to finish the lift


@dataclass(frozen=True)
class CoreConfig:
    max_steps: int = 20
    """Actions per episode (paper: at most 20); then lift and end as if terminated."""
    max_input_age: float = 0.5
    """Images and EE/gripper state with |now - stamp| above this (s) are stale: no command is sent."""
    tray_bottom_z: float = -0.115
    """Tray bottom height in the base frame (m); state gripper_height = ee z - this."""
    lift_height: float = 0.2
    """Lift after termination (m), as the sim env."""
    lift_step: float = 0.05
    """The lift is sent in increments of at most this (m): the driver clamps longer Cartesian steps."""
    settle_tolerance: float = 0.01
    """The arm has arrived when the EE position is this close to the target (m)."""
    still_time: float = 0.5
    """The arm has also arrived when the EE has not moved for this long (s): the driver's safety box
    may have clamped the target, so it is never reached exactly."""
    still_tolerance: float = 0.001
    """EE motion below this (m) counts as not moving."""
    settle_timeout: float = 3.0
    """Give up waiting for the arm after this long (s) and go on (the next step re-checks freshness)."""
    gripper_timeout: float = 2.0
    """Give up waiting for the gripper state after this long (s)."""
    autostart: bool = True
    """Start the first episode at once (else wait for start_episode)."""
    bounds: ActionBounds = field(default_factory=ActionBounds)

    def __post_init__(self) -> None:
        require(self.max_steps >= 1, "max_steps", "must be >= 1")
        require(self.max_input_age > 0, "max_input_age", "must be > 0")
        require(self.lift_height >= 0, "lift_height", "must be >= 0")
        require(self.lift_step > 0, "lift_step", "must be > 0")
        require(self.settle_tolerance > 0, "settle_tolerance", "must be > 0")
        require(self.settle_timeout > 0, "settle_timeout", "must be > 0")
        require(self.still_time > 0, "still_time", "must be > 0")
        require(self.still_tolerance > 0, "still_tolerance", "must be > 0")
        require(self.gripper_timeout > 0, "gripper_timeout", "must be > 0")


@dataclass
class Decision:
    """What the node should do after one tick (all None: nothing)."""

    target: tuple[np.ndarray, np.ndarray] | None = None  # absolute (pos, quat) in the base frame
    gripper_open: bool | None = None
    episode_done: dict | None = None  # the episode just ended: {"episode", "steps", "ended_by"}
    wait: str | None = None  # why no command was sent (a stable cause key for log-once)
    action: np.ndarray | None = None
    q: float | None = None
    event: str | None = None  # a state change worth one log line


class EpisodeCore:
    def __init__(self, cfg: CoreConfig, planner_act: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, float]],
                 image_inputs: str, image_size: int, center_crop: float = 1.0, yaw_state: bool = False):
        self.cfg = cfg
        self.yaw_state = yaw_state  # the planner also reads the gripper's yaw (QNetConfig.yaw_state)
        self._start_yaw = 0.0  # EE yaw about the vertical at the episode's first step (rad)
        self.act = planner_act
        self.image_inputs = image_inputs
        self.image_size = image_size
        self.prepare = PolicyContract(inputs=image_inputs, image_size=image_size,  # the policy image
                                      center_crop=center_crop).prepare
        self.episode = 0
        self.step = 0
        self.settled_at = -math.inf  # images must be stamped after this
        self.episodes_finished = 0
        self.last_result: dict | None = None  # the last episode_done record
        self.last_action: np.ndarray | None = None
        self.last_q: float | None = None
        self._target: tuple[np.ndarray, np.ndarray] | None = None
        self._since = 0.0
        self._pending_gripper: bool | None = None
        self._still_ref: np.ndarray | None = None  # EE position the stillness timer started at
        self._still_since = 0.0
        self._end_reason: str | None = None
        self._lift_top = 0.0  # height the lift increments stop at
        self._last_now = -math.inf
        self.clock_jumps = 0  # times `now` went backwards (time references were shifted with it)
        self.phase = Phase.IDLE
        if cfg.autostart:
            self.start_episode(-math.inf)  # any fresh image will do for the first step

    # -- episode control
    def start_episode(self, now: float) -> tuple[bool, str]:
        """Begin an episode from the current scene (images must be stamped after `now`)."""
        if self.phase is not Phase.IDLE:
            return False, f"an episode is running (phase {self.phase.value})"
        self.episode += 1
        self.step = 0
        self.settled_at = now
        self._end_reason = None
        self.phase = Phase.ACT
        return True, f"episode {self.episode} started"

    def _finish(self) -> Decision:
        self.phase = Phase.IDLE
        self.episodes_finished += 1
        self.last_result = {"episode": self.episode, "steps": self.step, "ended_by": self._end_reason}
        return Decision(episode_done=self.last_result,
                        event=f"episode {self.episode} ended after {self.step} steps ({self._end_reason}), "
                              f"lifted; ready for the next start_episode")

    # -- the control step
    def tick(self, now: float, ee: EEState | None, gripper: GripperState | None,
             pair: ImagePair | None) -> Decision:
        jumped = self._follow_clock(now)
        d = self._tick(now, ee, gripper, pair)
        if jumped and d.event is None:
            d.event = jumped
        return d

    def _follow_clock(self, now: float) -> str | None:
        """When `now` goes backwards (a clock jump, a sim clock restart), shift the settle and
        timeout references with it: otherwise no image would be 'after the settle time' and no
        timeout would fire until the clock caught up again."""
        back = self._last_now - now
        self._last_now = now
        if not back > 0:
            return None
        self.clock_jumps += 1
        self.settled_at -= back
        self._since -= back
        self._still_since -= back
        if back < 1e-3:
            return None
        return f"clock went back {back:.3f} s: settle and timeout references moved with it"

    def _tick(self, now: float, ee: EEState | None, gripper: GripperState | None,
              pair: ImagePair | None) -> Decision:
        ph = self.phase
        if ph is Phase.ACT:
            return self._act(now, ee, gripper, pair)
        if ph is Phase.MOVE and self._arrived(now, ee):
            if self._pending_gripper is not None:
                self.phase, self._since = Phase.GRIP, now
                return Decision(gripper_open=self._pending_gripper)
            return self._after_step(now)
        if ph is Phase.GRIP:
            reached = gripper is not None and gripper.stamp > self._since and gripper.open == self._pending_gripper
            if reached or now - self._since > self.cfg.gripper_timeout:
                return self._after_step(now)
        if ph is Phase.LIFT and self._arrived(now, ee):
            pos, quat = self._target
            if pos[2] < self._lift_top - 1e-9:
                return Decision(target=self._lift_increment(pos, quat, now))
            return self._finish()
        return Decision()

    def _stale(self, now: float, ee, gripper, pair) -> str | None:
        # Every age is |now - stamp|: an input stamped in the future (clock skew, a clock that
        # jumped back, a hostile stamp) is no fresher than one as far in the past.
        age = self.cfg.max_input_age
        if ee is None:
            return "ee_pose_missing"
        if abs(now - ee.stamp) > age:
            return "ee_pose_stale"
        if gripper is None:
            return "gripper_state_missing"
        if abs(now - gripper.stamp) > age:
            return "gripper_state_stale"
        if pair is None:
            return "images_missing"
        if pair.stamp <= self.settled_at:
            return "waiting_for_images_after_settle"
        if abs(now - pair.stamp) > age:
            return "images_stale"
        return None

    def _act(self, now: float, ee, gripper, pair) -> Decision:
        reason = self._stale(now, ee, gripper, pair)
        if reason:
            return Decision(wait=reason)
        images = self.prepare(pair.source, pair.canonical)
        state = np.array([1.0 if gripper.open else 0.0, ee.pos[2] - self.cfg.tray_bottom_z], dtype=np.float32)
        if self.yaw_state:
            # The sim's yaw counts from the home pose every episode starts at: here, from the first step's pose.
            yaw = vertical_yaw(ee.quat)
            if self.step == 0:
                self._start_yaw = yaw
            state = with_yaw(state, math.remainder(yaw - self._start_yaw, 2 * math.pi))
        action, q = self.act(images, state, self.cfg.max_steps - self.step)
        cmd = decode_action(action, self.cfg.bounds)
        self.step += 1
        self.last_action, self.last_q = np.asarray(action, dtype=np.float32), float(q)
        wanted = None if cmd.gripper is None else cmd.gripper == "open"
        self._pending_gripper = wanted if wanted is not None and wanted != gripper.open else None
        if cmd.terminate:
            self._end_reason = "terminate"
        elif self.step >= self.cfg.max_steps:
            self._end_reason = "max_steps"
        self._command(apply_action(ee.pos, ee.quat, cmd.translation, cmd.dtheta), now, Phase.MOVE)
        return Decision(target=self._target, action=self.last_action, q=self.last_q)

    def _command(self, target, now: float, phase: Phase) -> None:
        self._target, self.phase, self._since, self._still_ref = target, phase, now, None

    def _arrived(self, now: float, ee: EEState | None) -> bool:
        pos, _ = self._target
        if ee is not None and ee.stamp > self._since:
            if np.linalg.norm(ee.pos - pos) <= self.cfg.settle_tolerance:
                return True
            if self._still_ref is None or np.linalg.norm(ee.pos - self._still_ref) > self.cfg.still_tolerance:
                self._still_ref, self._still_since = ee.pos, now
            elif now - self._still_since >= self.cfg.still_time:
                return True
        return now - self._since > self.cfg.settle_timeout

    def _after_step(self, now: float) -> Decision:
        self.settled_at = now
        if self._end_reason is None:
            self.phase = Phase.ACT
            return Decision()
        pos, quat = self._target
        self._lift_top = pos[2] + self.cfg.lift_height
        target = self._lift_increment(pos, quat, now)
        return Decision(target=target, event=f"episode {self.episode}: {self._end_reason} after "
                                            f"{self.step} steps; lifting {self.cfg.lift_height} m")

    def _lift_increment(self, pos: np.ndarray, quat: np.ndarray, now: float) -> tuple[np.ndarray, np.ndarray]:
        dz = min(self.cfg.lift_step, self._lift_top - pos[2])
        self._command((pos + np.array([0.0, 0.0, dz]), quat), now, Phase.LIFT)
        return self._target

    def status(self) -> dict:
        return {"phase": self.phase.value, "episode": self.episode, "step": self.step,
                "max_steps": self.cfg.max_steps, "image_inputs": self.image_inputs,
                "last_q": self.last_q,
                "last_action": None if self.last_action is None else [round(float(v), 4) for v in self.last_action],
                "episodes_finished": self.episodes_finished, "clock_jumps": self.clock_jumps,
                "last_result": self.last_result}
