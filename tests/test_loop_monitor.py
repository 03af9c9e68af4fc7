"""LoopMonitor's latency pairing, fed by hand (no processes, no DDS)."""
from __future__ import annotations

from rcan_bringup.loop_monitor import LoopMonitor, Step
from rcan_bringup.probe import Received


class _ListenNowhere:
    def listen(self, *args, **kwargs):
        return None


def _at(wall: float) -> Received:
    return Received(msg=None, t=wall, wall=wall)


def test_only_the_first_trajectory_after_a_target_is_its_latency():
    monitor = LoopMonitor(_ListenNowhere())
    monitor.steps.append(Step(marker_t=10.0, number=1, image_stamp=9.95, canonical_t=9.99))
    monitor._on_target(_at(10.0))
    monitor._on_trajectory(_at(10.004))  # the answer: 4 ms
    monitor._on_trajectory(_at(10.4))  # the move's next segment, no new target: not latency
    monitor.steps.append(Step(marker_t=11.0, number=2, image_stamp=10.95, canonical_t=10.99))
    monitor._on_target(_at(11.0))  # rejected by the driver: no trajectory answers it
    monitor.steps.append(Step(marker_t=11.5, number=3, image_stamp=11.45, canonical_t=11.49))
    monitor._on_target(_at(11.5))
    monitor._on_trajectory(_at(11.502))
    summary = monitor.summary()
    assert summary["trajectories"] == 3
    assert summary["command_to_trajectory"]["count"] == 2
    assert summary["command_to_trajectory"]["max_ms"] < 5
    assert [s.trajectory_t for s in monitor.steps] == [10.004, None, 11.502]
    assert summary["camera_to_trajectory"]["count"] == 2 and summary["camera_to_trajectory"]["max_ms"] < 60
