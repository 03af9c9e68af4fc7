"""The demo's MCAP recorder writes files that the standard MCAP ROS 2 reader decodes."""
from __future__ import annotations

import time

import numpy as np
import pytest

from rcan_bringup.recorder import ros2msg_schema

pytestmark = pytest.mark.ros


def test_schema_text_contains_every_nested_definition_once():
    text = ros2msg_schema("visualization_msgs/msg/MarkerArray")
    deps = [line[5:] for line in text.splitlines() if line.startswith("MSG: ")]
    assert len(deps) == len(set(deps))
    for needed in ("visualization_msgs/Marker", "std_msgs/Header", "builtin_interfaces/Time", "geometry_msgs/Pose"):
        assert needed in deps
    with pytest.raises(FileNotFoundError, match="no definition"):
        ros2msg_schema("sensor_msgs/msg/NoSuchThing")


def test_recording_round_trips_through_the_mcap_ros2_reader(ros_env, tmp_path):
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    from rcan_bringup.probe import Probe
    from rcan_bringup.recorder import McapRecorder
    from rcan_common.ros_image import rgb_to_image_msg

    topics = {"/t/image": "sensor_msgs/msg/Image", "/t/pose": "geometry_msgs/msg/PoseStamped"}
    rgb = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    with Probe("rec_probe") as probe:
        rec = McapRecorder(probe.node, tmp_path / "run.mcap", topics)
        probe.listen("/t/pose", PoseStamped)
        pose_pub = probe.node.create_publisher(PoseStamped, "/t/pose", 10)
        image_pub = probe.node.create_publisher(Image, "/t/image", 10)
        # Discovery: the publishers are matched with the recorder's subscriptions (and the probe's).
        assert probe.wait_for(lambda: pose_pub.get_subscription_count() >= 2
                              and image_pub.get_subscription_count() >= 1, 30), "publishers never matched"

        def recorded() -> bool:
            return rec.counts["/t/pose"] >= 5 and rec.counts["/t/image"] >= 5

        # The recorder subscribes best effort: publish until it has five of each (bounded, not a fixed count).
        deadline, i = time.monotonic() + 30, 0
        while not recorded() and time.monotonic() < deadline:
            pose = PoseStamped()
            pose.header.frame_id = "lbr_link_0"
            pose.pose.position.x = float(i)
            pose_pub.publish(pose)
            image_pub.publish(rgb_to_image_msg(rgb))
            i += 1
            probe.wait_for(recorded, 0.05, interval=0.01)
        counts = rec.close()
    assert counts["/t/pose"] >= 5 and counts["/t/image"] >= 5
    with open(tmp_path / "run.mcap", "rb") as f:
        decoded = list(make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages())
    assert len(decoded) == sum(counts.values())
    images = [msg for _, channel, _, msg in decoded if channel.topic == "/t/image"]
    assert bytes(images[0].data) == rgb.tobytes() and images[0].encoding == "rgb8"
    xs = [msg.pose.position.x for _, channel, _, msg in decoded if channel.topic == "/t/pose"]
    assert xs == sorted(xs) and decoded[0][0].encoding == "ros2msg"
