"""The sim graph's episode supervisor (ROS-free): prepare each episode, let the policy run it, judge it.

One episode:
    sim ~/reset -> policy ~/start_episode -> the policy's episode-end event (rcan/policy/episode_done)
    -> sim ~/grasp_success -> one result record -> the next episode, `episodes` times (0: no limit).

The policy knows nothing of this loop: it starts an episode from the current scene when asked and
says when it ended.  On the real robot no supervisor runs; an operator calls ~/start_episode.

Like the policy's episode core, the machine never blocks and does no I/O: ``tick`` says which
service to call (or which problem to log), and the node makes the calls and feeds back their
answers (``on_answer``), the episode-end messages (``on_episode_done``) and the time.

Robustness:

* a service that is unavailable, whose call fails, that refuses (reset, start_episode) or does not
  answer within ``call_timeout_s`` is called again after ``retry_s``; each problem has a cause
  from a fixed vocabulary (below), logged once and then counted;
* an episode whose end does not arrive within ``episode_timeout_s`` counts as a failed attempt
  (``ended_by`` "timeout") and the loop goes on (the policy refuses the next start until its
  episode is over, which is retried like any refusal);
* a malformed or unexpected episode-end message is ignored with a cause; a late answer to an
  abandoned call is ignored too.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from enum import Enum

from rcan_common.config import require


@dataclass(frozen=True)
class SupervisorParams:
    """ROS parameters of supervisor_node (config/supervisor.yaml)."""

    episodes: int = 0
    """Episodes to run, then stop (0: no limit)."""
    tick_rate_hz: float = 10.0
    """How often retries and timeouts are checked."""
    retry_s: float = 1.0
    """Pause before a service call that failed (unavailable, refused, no answer) is made again (s)."""
    call_timeout_s: float = 10.0
    """A call not answered within this (s) is abandoned and made again."""
    episode_timeout_s: float = 300.0
    """An episode that has not ended this long (s) after it started counts as a failed attempt."""
    reset_service: str = "sim_node/reset"
    start_episode_service: str = "policy_node/start_episode"
    grasp_success_service: str = "sim_node/grasp_success"
    episode_done_topic: str = "rcan/policy/episode_done"
    result_topic: str = "~/result"
    """One JSON record per judged episode: attempt, episode, steps, ended_by, success, detail, scene, totals."""

    def __post_init__(self) -> None:
        require(self.episodes >= 0, "episodes", "must be >= 0")
        for name in ("tick_rate_hz", "retry_s", "call_timeout_s", "episode_timeout_s"):
            require(getattr(self, name) > 0, name, "must be > 0")


# Parameters the running node re-reads: none (everything shapes clients, timers and the loop at start-up).
RUNTIME_PARAMETERS: tuple[str, ...] = ()


class Phase(str, Enum):
    RESET = "reset"  # call the sim's ~/reset
    START = "start"  # call the policy's ~/start_episode
    RUN = "run"  # the policy runs the episode: wait for its end
    CHECK = "check"  # call the sim's ~/grasp_success
    DONE = "done"  # `episodes` judged


SERVICE = {Phase.RESET: "reset", Phase.START: "start_episode", Phase.CHECK: "grasp_success"}
# Log-once causes: "<service>:<kind>" with kind unavailable, failed, refused or no_answer, and
# "episode_done:malformed", "episode_done:unexpected", "episode:timeout", "late_answer".


@dataclass
class Step:
    """What the node should do after one input (all None: nothing)."""

    call: str | None = None  # the service to call now ("reset", "start_episode", "grasp_success")
    call_id: int = 0  # hand it back with the answer
    problem: tuple[str, str] | None = None  # (cause, message): log once per cause
    event: str | None = None  # a line for the log
    result: dict | None = None  # an episode was judged: publish it


def _episode_number(text: str) -> int | None:
    """The episode number in start_episode's answer ("episode 3 started"), if it says one."""
    match = re.search(r"episode (\d+)", text)
    return int(match.group(1)) if match else None


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_episode_done(text: str) -> dict | None:
    """The policy's episode-end record ({"episode": int, "steps": int, "ended_by": str|None}), or None."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    episode, steps, ended_by = data.get("episode"), data.get("steps"), data.get("ended_by")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (episode, steps)):
        return None
    if ended_by is not None and not isinstance(ended_by, str):
        return None
    return {"episode": episode, "steps": steps, "ended_by": ended_by}


class Supervisor:
    def __init__(self, cfg: SupervisorParams):
        self.cfg = cfg
        self.phase = Phase.RESET
        self.finished = 0
        self.successes = 0
        self.last_result: dict | None = None
        self._call_id = 0
        self._called_at: float | None = None  # a call is in flight since then
        self._retry_at = -math.inf
        self._run_since = 0.0
        self._scene = None  # the reset's answer
        self._started: int | None = None  # the policy's episode number, from start_episode's answer
        self._ended: dict | None = None  # the episode-end record

    # -- time
    def tick(self, now: float) -> Step:
        if self.phase is Phase.DONE:
            return Step()
        if self.phase is Phase.RUN:
            if now - self._run_since <= self.cfg.episode_timeout_s:
                return Step()
            step = self._judge(False, f"no episode end within {self.cfg.episode_timeout_s:g} s", ended_by="timeout")
            step.problem = ("episode:timeout", f"the policy's episode {self._label()} did not end within "
                                               f"{self.cfg.episode_timeout_s:g} s; counted as a failure, going on")
            return step
        name = SERVICE[self.phase]
        if self._called_at is not None:
            if now - self._called_at <= self.cfg.call_timeout_s:
                return Step()
            return self._retry(now, "no_answer", f"no answer within {self.cfg.call_timeout_s:g} s")
        if now < self._retry_at:
            return Step()
        self._call_id += 1
        self._called_at = now
        return Step(call=name, call_id=self._call_id)

    # -- inputs
    def on_unavailable(self, now: float) -> Step:
        """The service the last Step asked for has no server (yet)."""
        return self._retry(now, "unavailable", "not available")

    def on_answer(self, call_id: int, ok: bool | None, message: str, now: float) -> Step:
        """A Trigger answer (ok None: the call failed without one)."""
        if call_id != self._call_id or self._called_at is None:
            return Step(problem=("late_answer", f"ignored a late answer to an abandoned call: {message[:200]!r}"))
        self._called_at = None
        if ok is None:
            return self._retry(now, "failed", f"the call failed ({message[:200]})")
        if self.phase is Phase.CHECK:  # not ok is the verdict here, not a refusal
            return self._judge(ok, message)
        if not ok:
            return self._retry(now, "refused", f"refused: {message[:200]}")
        if self.phase is Phase.RESET:
            self._scene, self.phase = _json_or_text(message), Phase.START
            return Step(event=f"attempt {self.finished + 1}: scene reset")
        self._started, self.phase, self._run_since = _episode_number(message), Phase.RUN, now
        return Step(event=f"attempt {self.finished + 1}: policy {message}")

    def on_episode_done(self, text: str, now: float) -> Step:
        """The policy's episode-end message (JSON)."""
        record = parse_episode_done(text)
        if record is None:
            return Step(problem=("episode_done:malformed", f"ignored a malformed episode_done message: {text[:200]!r}"))
        if self.phase is not Phase.RUN or self._started not in (None, record["episode"]):
            return Step(problem=("episode_done:unexpected", f"ignored the end of policy episode {record['episode']} "
                                                            f"(phase {self.phase.value}, awaiting {self._label()})"))
        self._ended, self.phase, self._retry_at = record, Phase.CHECK, -math.inf
        return Step(event=f"attempt {self.finished + 1}: policy episode {record['episode']} ended after "
                          f"{record['steps']} steps ({record['ended_by']}); checking the grasp")

    # -- bookkeeping
    def _label(self) -> str:
        return "?" if self._started is None else str(self._started)

    def _retry(self, now: float, kind: str, why: str) -> Step:
        name = SERVICE[self.phase]
        self._called_at, self._retry_at = None, now + self.cfg.retry_s
        return Step(problem=(f"{name}:{kind}", f"service '{name}': {why}; calling again every {self.cfg.retry_s:g} s"))

    def _judge(self, success: bool, detail: str, ended_by: str | None = None) -> Step:
        ended = self._ended or {"episode": self._started, "steps": None, "ended_by": ended_by}
        self.finished += 1
        self.successes += bool(success)
        self.last_result = {"attempt": self.finished, **ended, "success": bool(success), "detail": detail,
                            "scene": self._scene, "successes": self.successes, "finished": self.finished}
        self._scene = self._started = self._ended = None
        self._called_at, self._retry_at = None, -math.inf
        done = bool(self.cfg.episodes) and self.finished >= self.cfg.episodes
        self.phase = Phase.DONE if done else Phase.RESET
        event = f"attempt {self.finished}: {'success' if success else 'failure'} ({detail[:200]})"
        if done:
            event += f"; all {self.cfg.episodes} episodes judged: {self.successes}/{self.finished} successes"
        return Step(result=self.last_result, event=event)
