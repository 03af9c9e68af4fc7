"""supervisor_node: runs the sim graph's grasp attempts (sim only; the robot has no supervisor).

For each episode: the sim's ~/reset, the policy's ~/start_episode, wait for the policy's
rcan/policy/episode_done, the sim's ~/grasp_success, then one JSON record on ~/result (what
`rcan demo` counts, with the problems met so far).  The loop lives in rcan_sim.supervisor; this
file is wiring only.  A failed or missing service is retried and a bad message dropped, each
logged once per cause and then only counted.
"""
from __future__ import annotations

import json
import sys
import time

from rclpy.node import Node
from std_msgs.msg import String
from std_srvs.srv import Trigger

from rcan_common.config import ConfigError
from rcan_common.ros_node import OnceLog, StartupError, call_trigger, publisher, spin_node, subscription
from rcan_common.ros_params import declare_config
from rcan_sim.supervisor import RUNTIME_PARAMETERS, Step, Supervisor, SupervisorParams


class SupervisorNode(Node):
    def __init__(self, **kwargs):
        super().__init__("supervisor_node", **kwargs)
        try:
            cfg = self.params = declare_config(self, SupervisorParams, RUNTIME_PARAMETERS)
        except ConfigError as exc:
            raise StartupError(f"supervisor_node: {exc}") from exc
        self.core = Supervisor(cfg)
        self.problems = OnceLog(self.get_logger().warning)
        self.trigger_clients = {name: self.create_client(Trigger, srv) for name, srv in (
            ("reset", cfg.reset_service), ("start_episode", cfg.start_episode_service),
            ("grasp_success", cfg.grasp_success_service))}
        self.result_pub = publisher(self, String, cfg.result_topic, 10)
        subscription(self, String, cfg.episode_done_topic, self._on_episode_done, 10)
        self.create_timer(1.0 / cfg.tick_rate_hz, self._tick)
        self.get_logger().info(f"supervisor_node: {cfg.episodes or 'unlimited'} episodes "
                               f"({cfg.reset_service} -> {cfg.start_episode_service} -> {cfg.episode_done_topic} "
                               f"-> {cfg.grasp_success_service})")

    def _tick(self) -> None:
        self._apply(self.core.tick(time.monotonic()))

    def _apply(self, step: Step) -> None:
        if step.problem is not None:
            self.problems(*step.problem)
        if step.event:
            self.get_logger().info(step.event)
        if step.result is not None:  # with every problem counted so far (each was logged once)
            self.result_pub.publish(String(data=json.dumps({**step.result, "problems": dict(self.problems.counts)})))
        if step.call is not None:
            self._call(step.call, step.call_id)

    def _call(self, name: str, call_id: int) -> None:
        client = self.trigger_clients[name]
        if not client.service_is_ready():
            return self._apply(self.core.on_unavailable(time.monotonic()))

        def answered(ok: bool | None, message: str) -> None:
            self._apply(self.core.on_answer(call_id, ok, message, time.monotonic()))
            self._tick()  # the next call at once, not on the next timer tick

        call_trigger(client, answered)

    def _on_episode_done(self, msg: String) -> None:
        self._apply(self.core.on_episode_done(msg.data, time.monotonic()))
        self._tick()


def main(argv: list[str] | None = None) -> int:
    return spin_node(SupervisorNode, argv)


if __name__ == "__main__":
    sys.exit(main())
