"""The sim graph's episode supervisor (rcan_sim.supervisor), ROS-free: the loop, retries, timeouts, bad input."""
from __future__ import annotations

import json

import pytest

from rcan_common.config import ConfigError
from rcan_sim.supervisor import Phase, Supervisor, SupervisorParams, parse_episode_done

SCENE = json.dumps({"episode": 1, "seed": 1, "object_ids": [3, 4]})


def done(episode, steps=3, ended_by="terminate") -> str:
    return json.dumps({"episode": episode, "steps": steps, "ended_by": ended_by})


def call(sup: Supervisor, now: float, expected: str) -> int:
    step = sup.tick(now)
    assert step.call == expected, (step, sup.phase)
    return step.call_id


def run_episode(sup: Supervisor, t: float, episode: int, success: bool) -> dict:
    """One full episode: reset, start, the policy's end, the grasp check; returns the published result."""
    sup.on_answer(call(sup, t, "reset"), True, SCENE, t)
    sup.on_answer(call(sup, t, "start_episode"), True, f"episode {episode} started", t)
    assert sup.phase is Phase.RUN and sup.tick(t + 1).call is None  # the policy runs: nothing to call
    step = sup.on_episode_done(done(episode), t + 2)
    assert sup.phase is Phase.CHECK and "checking the grasp" in step.event
    step = sup.on_answer(call(sup, t + 2, "grasp_success"), success, '{"held": []}', t + 2)
    assert step.result is not None and step.problem is None
    return step.result


def test_runs_n_episodes_reset_start_end_check_then_stops():
    sup = Supervisor(SupervisorParams(episodes=2))
    first = run_episode(sup, 0.0, 1, False)
    assert first == {"attempt": 1, "episode": 1, "steps": 3, "ended_by": "terminate", "success": False,
                     "detail": '{"held": []}', "scene": json.loads(SCENE), "successes": 0, "finished": 1}
    assert sup.phase is Phase.RESET
    second = run_episode(sup, 10.0, 2, True)
    assert second["attempt"] == 2 and second["success"] is True and second["successes"] == 1
    assert sup.phase is Phase.DONE and sup.last_result == second
    assert sup.tick(100.0).call is None  # done: nothing more


def test_unlimited_episodes_go_on():
    sup = Supervisor(SupervisorParams(episodes=0))
    for k in range(1, 4):
        run_episode(sup, 10.0 * k, k, k % 2 == 0)
    assert sup.phase is Phase.RESET and sup.finished == 3 and sup.successes == 1


def test_one_call_at_a_time_and_a_missing_service_is_retried_after_a_pause():
    sup = Supervisor(SupervisorParams(retry_s=1.0))
    call(sup, 0.0, "reset")
    assert sup.tick(0.05).call is None  # the call is in flight
    # The node found no server: retried after retry_s, not hammered; one cause for the log.
    sup2 = Supervisor(SupervisorParams(retry_s=1.0))
    call(sup2, 0.0, "reset")
    step = sup2.on_unavailable(0.0)
    assert step.problem[0] == "reset:unavailable" and "not available" in step.problem[1]
    assert sup2.tick(0.5).call is None
    call(sup2, 1.1, "reset")


@pytest.mark.parametrize("ok,message,cause", [(None, "RuntimeError('gone')", "reset:failed"),
                                              (False, "busy", "reset:refused")])
def test_a_failed_or_refused_reset_is_retried(ok, message, cause):
    sup = Supervisor(SupervisorParams(retry_s=0.5))
    step = sup.on_answer(call(sup, 0.0, "reset"), ok, message, 0.1)
    assert step.problem[0] == cause and message in step.problem[1] and sup.phase is Phase.RESET
    assert sup.tick(0.3).call is None
    call(sup, 0.7, "reset")


def test_a_refused_start_is_retried_until_the_policy_is_ready():
    sup = Supervisor(SupervisorParams(retry_s=0.5))
    sup.on_answer(call(sup, 0.0, "reset"), True, SCENE, 0.0)
    step = sup.on_answer(call(sup, 0.0, "start_episode"), False, "an episode is running (phase lift)", 0.0)
    assert step.problem[0] == "start_episode:refused" and sup.phase is Phase.START
    step = sup.on_answer(call(sup, 0.6, "start_episode"), True, "episode 4 started", 0.6)
    assert step.problem is None and "episode 4 started" in step.event and sup.phase is Phase.RUN
    # Only the end of the episode it started counts.
    assert sup.on_episode_done(done(3), 1.0).problem[0] == "episode_done:unexpected" and sup.phase is Phase.RUN
    sup.on_episode_done(done(4), 1.1)
    assert sup.phase is Phase.CHECK


def test_an_unanswered_call_is_made_again_and_its_late_answer_ignored():
    sup = Supervisor(SupervisorParams(call_timeout_s=2.0, retry_s=0.5))
    old = call(sup, 0.0, "reset")
    assert sup.tick(1.9).call is None
    step = sup.tick(2.1)
    assert step.problem[0] == "reset:no_answer" and step.call is None
    new = call(sup, 2.7, "reset")
    assert new != old
    assert sup.on_answer(old, True, SCENE, 2.8).problem[0] == "late_answer" and sup.phase is Phase.RESET
    sup.on_answer(new, True, SCENE, 2.9)
    assert sup.phase is Phase.START


def test_an_episode_that_never_ends_is_a_timed_out_failure_and_the_loop_goes_on():
    sup = Supervisor(SupervisorParams(episode_timeout_s=30.0, episodes=2))
    sup.on_answer(call(sup, 0.0, "reset"), True, SCENE, 0.0)
    sup.on_answer(call(sup, 0.0, "start_episode"), True, "episode 1 started", 0.0)
    assert sup.tick(29.0).call is None
    step = sup.tick(30.5)
    assert step.problem[0] == "episode:timeout"
    assert step.result["success"] is False and step.result["ended_by"] == "timeout"
    assert step.result["episode"] == 1 and step.result["steps"] is None
    assert sup.phase is Phase.RESET
    # The policy's late end of that episode changes nothing.
    assert sup.on_episode_done(done(1), 31.0).problem[0] == "episode_done:unexpected"
    assert sup.phase is Phase.RESET
    run_episode(sup, 40.0, 2, True)
    assert sup.phase is Phase.DONE and sup.finished == 2 and sup.successes == 1


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", "null", json.dumps({"episode": "1", "steps": 2}),
                                  json.dumps({"episode": 1}), json.dumps({"episode": True, "steps": 1}),
                                  json.dumps({"episode": 1, "steps": -1}),
                                  json.dumps({"episode": 1, "steps": 2, "ended_by": 5}), "x" * 5000])
def test_a_malformed_episode_end_is_ignored(text):
    sup = Supervisor(SupervisorParams())
    sup.on_answer(call(sup, 0.0, "reset"), True, SCENE, 0.0)
    sup.on_answer(call(sup, 0.0, "start_episode"), True, "episode 1 started", 0.0)
    step = sup.on_episode_done(text, 1.0)
    assert step.problem[0] == "episode_done:malformed" and len(step.problem[1]) < 300
    assert sup.phase is Phase.RUN
    assert parse_episode_done(text) is None


def test_an_episode_end_outside_an_episode_is_ignored_and_an_unnumbered_start_accepts_any_end():
    sup = Supervisor(SupervisorParams())
    assert sup.on_episode_done(done(1), 0.0).problem[0] == "episode_done:unexpected" and sup.phase is Phase.RESET
    sup.on_answer(call(sup, 0.0, "reset"), True, "not json", 0.0)
    sup.on_answer(call(sup, 0.0, "start_episode"), True, "started", 0.0)
    sup.on_episode_done(done(7, ended_by=None), 1.0)
    result = sup.on_answer(call(sup, 1.0, "grasp_success"), False, "nothing held", 1.0).result
    assert result["scene"] == "not json" and result["episode"] == 7 and result["ended_by"] is None


def test_a_failed_grasp_check_call_is_retried_not_judged():
    sup = Supervisor(SupervisorParams(retry_s=0.5))
    sup.on_answer(call(sup, 0.0, "reset"), True, SCENE, 0.0)
    sup.on_answer(call(sup, 0.0, "start_episode"), True, "episode 1 started", 0.0)
    sup.on_episode_done(done(1), 1.0)
    step = sup.on_answer(call(sup, 1.0, "grasp_success"), None, "RuntimeError()", 1.0)
    assert step.problem[0] == "grasp_success:failed" and step.result is None and sup.finished == 0
    assert sup.on_answer(call(sup, 1.6, "grasp_success"), True, "{}", 1.6).result["success"] is True


@pytest.mark.parametrize("bad", [dict(episodes=-1), dict(retry_s=0.0), dict(call_timeout_s=-1.0),
                                 dict(episode_timeout_s=0.0), dict(tick_rate_hz=0.0)])
def test_params_validation_names_the_field(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        SupervisorParams(**bad)
