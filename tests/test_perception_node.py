"""perception_node as a real process with a tiny untrained generator exported from GEN's model."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sensor_msgs.msg import Image
from std_msgs.msg import String

from rcan_common.ros_image import image_msg_to_rgb, rgb_to_image_msg
from node_harness import NodeProcess, write_params
from tiny_models import export_tiny_generator

pytestmark = pytest.mark.ros

# The input subscription's depth, through rclpy's QoS override parameters.
INPUT_DEPTH = "qos_overrides./camera/image_raw.subscription.depth"
OUT = {"image": "/rcan/canonical/image", "seg": "/rcan/canonical/segmentation",
       "labels": "/rcan/canonical/segmentation/labels", "depth": "/rcan/canonical/depth"}


@pytest.fixture(scope="module")
def tiny_gen(tmp_path_factory):
    return export_tiny_generator(tmp_path_factory.mktemp("pn") / "g.onnx")


def _frame(stamp_s: int, size=96, seed=0, encoding="rgb8") -> tuple[Image, np.ndarray]:
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    msg = rgb_to_image_msg(rgb)
    msg.header.stamp.sec, msg.header.frame_id = stamp_s, "cam"
    if encoding == "bgr8":
        msg.encoding, msg.data = "bgr8", rgb[:, :, ::-1].tobytes()
    return msg, rgb


def _bad(kind: str) -> Image:
    msg, _ = _frame(900)
    if kind == "step":
        msg.step = 100
    elif kind == "data_length":
        msg.data = bytes(msg.data)[:-7]
    elif kind == "empty":
        msg.height = msg.width = msg.step = 0
        msg.data = b""
    elif kind == "encoding":
        msg.encoding = "yuv422"
    elif kind == "too_large":
        msg.height = msg.width = 60000
        msg.step = 180000
    return msg


def _start(tmp_path, env, model, **extra):
    params = {"model_path": str(model), "warmup_runs": 1, "intra_op_threads": 1, "stats_period_s": 0.3, **extra}
    return NodeProcess("perception_node", write_params(tmp_path / "p.yaml", params), env)


def _stamp(m) -> int:
    return m.header.stamp.sec


# The frame_id of the handshake's probe frames (the tests' own frames are "cam"); outputs copy it.
PROBE_FRAME = "probe"


def _handshake(harness, pub, outputs: list[list], stats: list, node) -> dict:
    """Send probe frames until every output list has received one; the node's latency summary after that.

    The harness seeing the node's output writers does not mean those writers see the harness's readers
    yet (DDS matches each side on its own), and a volatile output sent before that is lost: a test that
    sends one frame and waits for its output can wait forever.  The next probe goes out only when the
    last one's outputs have not all come back in 10 s (a frame takes milliseconds), so when this returns
    the probes sent have been processed, or were lost on the way in before the node's reader matched."""
    def probed() -> bool:
        return all(any(m.header.frame_id == PROBE_FRAME for m in got) for got in outputs)

    for k in range(6):
        probe, _ = _frame(0, seed=k)  # stamped 0 s + k ns: no test waits for a stamp below 1 s
        probe.header.frame_id, probe.header.stamp.nanosec = PROBE_FRAME, k
        pub.publish(probe)
        if harness.spin_until(probed, 10.0, node):
            break
    assert probed(), f"no probe frame came through in 60 s:\n{node.output}"
    seen = len(stats)
    assert harness.spin_until(lambda: len(stats) > seen, 10.0, node), node.output
    return json.loads(stats[-1].data)


def _tested(msgs) -> list:
    """The messages of a test's own frames (not the handshake's probes)."""
    return [m for m in msgs if m.header.frame_id != PROBE_FRAME]


def test_outputs_headers_and_malformed_inputs(tmp_path, ros_env, harness, tiny_gen):
    from rcan_perception.perception_core import CanonicalGenerator

    got = {k: harness.collect(Image, t) for k, t in OUT.items()}
    stats = harness.collect(String, "/rcan/perception/latency")
    pub = harness.node.create_publisher(Image, "/camera/image_raw", 20)
    # Deep input queue: the 10 bad frames are sent in a burst and every one must reach the check.
    node = _start(tmp_path, ros_env, tiny_gen, **{INPUT_DEPTH: 20})
    try:
        assert harness.spin_until(lambda: harness.connected(pub), 30.0, node), node.output
        probes = _handshake(harness, pub, list(got.values()), stats, node)["count"]
        frames = {}
        # The 60 s waits are caps, not thresholds: a loaded 2-core machine took over 20 s for one frame.
        for stamp, enc in ((1, "rgb8"), (2, "bgr8")):
            msg, rgb = _frame(stamp, seed=stamp, encoding=enc)
            frames[stamp] = rgb
            pub.publish(msg)
            assert harness.spin_until(lambda: any(_stamp(m) == stamp for m in got["depth"]), 60.0, node), node.output
        # Malformed frames, each cause twice: rejected, logged once per cause, node keeps serving.
        causes = ("step", "data_length", "empty", "encoding", "too_large")
        for kind in causes * 2:
            pub.publish(_bad(kind))
        msg, frames[3] = _frame(3, seed=3)
        pub.publish(msg)
        assert harness.spin_until(lambda: any(_stamp(m) == 3 for m in got["depth"]), 60.0, node), node.output
        assert harness.spin_until(
            lambda: stats and json.loads(stats[-1].data)["rejected"] == {c: 2 for c in causes}, 10.0, node), \
            [s.data for s in stats[-1:]]
        assert node.alive()
    finally:
        assert node.stop() == 0, node.output
    for cause in causes:
        assert sum(f"'{cause}' problems" in line for line in node.lines) == 1, node.output
    assert sum("runs on CPUExecutionProvider" in line for line in node.lines) == 1

    for key, enc, shape in (("image", "rgb8", 3), ("seg", "rgb8", 3), ("labels", "mono8", 1), ("depth", "32FC1", 1)):
        msgs = _tested(got[key])
        assert sorted(_stamp(m) for m in msgs) == [1, 2, 3], key
        for m in msgs:
            assert (m.encoding, m.width, m.height, m.header.frame_id) == (enc, 64, 64, "cam")
    labels = np.frombuffer(_tested(got["labels"])[0].data, np.uint8)
    depth = np.frombuffer(_tested(got["depth"])[0].data, np.float32)
    assert labels.max() < 5 and 0.0 <= depth.min() and depth.max() <= 2.0
    # The node's canonical image is exactly G(x) through the contract (bgr8 was converted to RGB).
    g = CanonicalGenerator(tiny_gen)
    for m in _tested(got["image"]):
        np.testing.assert_array_equal(image_msg_to_rgb(m), g(frames[_stamp(m)]).canonical[0])
    summary = json.loads(stats[-1].data)
    assert summary["count"] == probes + 3 and summary["p50_ms"] > 0 and summary["provider"] == "CPUExecutionProvider"


def test_slow_model_drops_old_frames_instead_of_queueing(tmp_path, ros_env, harness):
    """Full-width G at 256 px (~0.1 s a frame): a burst of 15 frames must not be queued."""
    import torch

    from rcan_perception.contract import GeneratorContract, contract_path
    from rcan_perception.model import Generator

    model = tmp_path / "big.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Generator().eval(), (torch.zeros(1, 3, 256, 256),), str(model), input_names=["image"],
                          output_names=["canonical", "segmentation_logits", "depth"], dynamo=False)
    GeneratorContract(input_height=256, input_width=256).save(contract_path(model))
    out = harness.collect(Image, OUT["image"], qos=50)
    stats = harness.collect(String, "/rcan/perception/latency")
    pub = harness.node.create_publisher(Image, "/camera/image_raw", 50)
    node = _start(tmp_path, ros_env, model, **{INPUT_DEPTH: 50})
    try:
        assert harness.spin_until(lambda: harness.connected(pub), 30.0, node), node.output
        base = _handshake(harness, pub, [out], stats, node)
        for stamp in range(1, 16):
            pub.publish(_frame(stamp, size=256, seed=stamp)[0])
        assert harness.spin_until(lambda: any(_stamp(m) == 15 for m in _tested(out)), 30.0, node), node.output
        handled = base["count"] + base["dropped"] + 15
        done = lambda: (s := json.loads(stats[-1].data))["count"] + s["dropped"] == handled  # noqa: E731
        assert harness.spin_until(done, 10.0, node), [s.data for s in stats[-2:]]
    finally:
        assert node.stop() == 0, node.output
    stamps = [_stamp(m) for m in _tested(out)]
    assert stamps == sorted(stamps) and stamps[-1] == 15
    summary = json.loads(stats[-1].data)
    dropped, count = summary["dropped"] - base["dropped"], summary["count"] - base["count"]
    assert dropped >= 5 and len(stamps) == count <= 10, (stamps, summary, base)


def test_mismatched_model_fails_at_start_naming_file(tmp_path, ros_env):
    model = export_tiny_generator(tmp_path / "four_channel.onnx", in_channels=4)
    node = _start(tmp_path, ros_env, model)
    assert node.wait_exit(30.0) == 1
    assert "four_channel.onnx" in node.output and "channels = 4, expected 3" in node.output


def test_future_stamped_frames_are_rejected_on_receipt(tmp_path, ros_env, harness, tiny_gen):
    """Issue 12.2: a frame stamped an hour ahead is not processed (its header would be copied to
    every output); a frame within max_future_stamp_s of the node's clock is."""
    got = harness.collect(Image, OUT["image"])
    stats = harness.collect(String, "/rcan/perception/latency")
    pub = harness.node.create_publisher(Image, "/camera/image_raw", 20)
    node = _start(tmp_path, ros_env, tiny_gen, max_future_stamp_s=0.5, **{INPUT_DEPTH: 20})
    try:
        assert harness.spin_until(lambda: harness.connected(pub), 30.0, node), node.output
        _handshake(harness, pub, [got], stats, node)
        now = harness.node.get_clock().now().nanoseconds // 10**9
        for ahead in (3600, 3601, 60):
            pub.publish(_frame(now + ahead, seed=ahead)[0])
        good, _ = _frame(now, seed=1)
        pub.publish(good)
        assert harness.spin_until(lambda: any(_stamp(m) == now for m in got), 60.0, node), node.output
        assert harness.spin_until(
            lambda: stats and json.loads(stats[-1].data)["rejected"] == {"future_stamp": 3}, 10.0, node), \
            [s.data for s in stats[-1:]]
    finally:
        assert node.stop() == 0, node.output
    assert [_stamp(m) for m in _tested(got)] == [now]
    assert sum("in the future" in line for line in node.lines) == 1, node.output
