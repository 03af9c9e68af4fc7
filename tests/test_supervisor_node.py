"""supervisor_node as a real process over loopback DDS, against stand-in sim and policy services."""
from __future__ import annotations

import json

import pytest
from std_msgs.msg import String
from std_srvs.srv import Trigger

from node_harness import NodeProcess, write_params

pytestmark = pytest.mark.ros


def test_supervisor_runs_the_episodes_retries_and_survives_bad_input(tmp_path, ros_env, harness):
    params = {"episodes": 2, "retry_s": 0.2, "tick_rate_hz": 20.0}
    node = NodeProcess("supervisor_node", write_params(tmp_path / "s.yaml", params), ros_env)
    results = harness.collect(String, "/supervisor_node/result")
    done_pub = harness.node.create_publisher(String, "/rcan/policy/episode_done", 10)
    calls: list[str] = []
    verdicts = [True, False]

    def serve(name, answer):
        def handle(request, response):
            calls.append(name)
            response.success, response.message = answer()
            return response
        return harness.node.create_service(Trigger, f"/{name}", handle)

    def output_has(text: str):
        return lambda: text in node.output

    try:
        # No sim yet: the missing service is reported (once) and retried.
        assert harness.spin_until(output_has("service 'reset': not available"), 30.0, node), node.output
        serve("sim_node/reset", lambda: (calls.count("sim_node/reset") > 1, "busy" if calls.count(
            "sim_node/reset") == 1 else json.dumps({"episode": calls.count("sim_node/reset"), "seed": 7})))
        serve("policy_node/start_episode", lambda: (True, f"episode {calls.count('policy_node/start_episode')} started"))
        serve("sim_node/grasp_success", lambda: (verdicts.pop(0), json.dumps({"held": [3]})))
        assert harness.spin_until(lambda: harness.connected(done_pub), 30.0, node), node.output
        for episode in (1, 2):
            # The episode runs once the supervisor has the policy's answer (its log says so).
            assert harness.spin_until(output_has(f"attempt {episode}: policy episode {episode} started"), 30.0, node), \
                (calls, node.output)
            # Malformed episode ends, and one of another episode, change nothing.
            for text in ("garbage", json.dumps({"episode": "x"}), json.dumps({"episode": 99, "steps": 1})):
                done_pub.publish(String(data=text))
            done_pub.publish(String(data=json.dumps({"episode": episode, "steps": 4, "ended_by": "terminate"})))
            assert harness.spin_until(lambda: len(results) == episode, 30.0, node), (calls, node.output)
        assert harness.spin_until(output_has("all 2 episodes judged: 1/2 successes"), 10.0, node), node.output
    finally:
        assert node.stop() == 0, node.output
    # reset refused once ("busy"), then the loop twice; nothing after the last verdict.
    assert calls == ["sim_node/reset", "sim_node/reset", "policy_node/start_episode", "sim_node/grasp_success",
                     "sim_node/reset", "policy_node/start_episode", "sim_node/grasp_success"], calls
    first, second = (json.loads(r.data) for r in results)
    # Each result counts the problems so far (the log has each cause once).
    problems = first.pop("problems")
    assert problems.pop("reset:unavailable") >= 1
    assert problems == {"reset:refused": 1, "episode_done:malformed": 2, "episode_done:unexpected": 1}
    assert second["problems"]["episode_done:malformed"] == 4
    assert first == {"attempt": 1, "episode": 1, "steps": 4, "ended_by": "terminate", "success": True,
                     "detail": json.dumps({"held": [3]}), "scene": {"episode": 2, "seed": 7}, "successes": 1,
                     "finished": 1}
    assert second["attempt"] == 2 and second["episode"] == 2 and second["success"] is False
    out = node.output
    for text in ("not available", "refused: busy", "malformed episode_done", "end of policy episode 99"):
        assert sum(text in line for line in out.splitlines()) == 1, (text, out)
