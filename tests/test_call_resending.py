"""rcan_common.ros_node.call_resending against a real rclpy service: the answer comes back, and no send's future
is left in the client once the call returns (rclpy keeps every unanswered one until the client is destroyed)."""
from __future__ import annotations

import pytest

pytest.importorskip("rclpy")


def test_an_unanswered_call_leaves_no_pending_request(harness):
    from std_srvs.srv import Trigger

    from rcan_common.ros_node import call_resending

    client = harness.node.create_client(Trigger, "/nobody_serves_this")
    sleeps = []
    result = call_resending(client, Trigger.Request(), lambda future, seconds: sleeps.append(seconds), timeout=0.2,
                            resend_after=0.01)
    assert result is None
    assert len(sleeps) >= 2  # it did resend
    assert client._pending_requests == {}


def test_the_first_answer_is_returned_and_the_other_sends_are_dropped(harness):
    from std_srvs.srv import Trigger

    from rcan_common.ros_node import call_resending

    served = []

    def serve(request, response):
        served.append(request)
        response.success, response.message = True, f"answer {len(served)}"
        return response

    harness.node.create_service(Trigger, "/answers", serve)
    client = harness.node.create_client(Trigger, "/answers")
    assert client.wait_for_service(timeout_sec=20.0)
    result = call_resending(client, Trigger.Request(),
                            lambda future, seconds: harness.executor.spin_until_future_complete(future, seconds),
                            timeout=20.0, resend_after=0.5)
    assert result is not None and result.success and result.message.startswith("answer ")
    assert client._pending_requests == {}
