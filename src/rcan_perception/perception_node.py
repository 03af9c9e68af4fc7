"""perception_node: camera image -> G(x) via ONNX Runtime -> canonical RGB, segmentation, depth.

Subscribes to ``camera/image_raw`` (rgb8 or bgr8; anything else is rejected with one log
line per cause and counted, never a crash).  The callback only checks the header and
keeps the NEWEST frame; a worker thread runs the generator on whatever is newest, so a
camera faster than the model drops frames (counted) instead of queueing them.  Outputs
carry the SOURCE image's header, so the policy can pair source and canonical by stamp:

* ``rcan/canonical/image`` rgb8, ``rcan/canonical/segmentation`` colourised rgb8,
  ``rcan/canonical/segmentation/labels`` mono8 class ids, ``rcan/canonical/depth`` 32FC1 metres
* ``rcan/perception/latency`` std_msgs/String JSON, about once a second:
  count, dropped, rejected (per cause), p50/p95 latency and age in ms, provider.
"""
from __future__ import annotations

import json
import sys
import threading
import time

from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String

from rcan_common.ros_image import (ImageError, depth_to_image_msg, image_msg_to_rgb, mono8_to_image_msg,
                                   receipt_problem, rgb_to_image_msg)
from rcan_common.ros_node import OnceLog, StartupError, now_s, publisher, spin_node, subscription
from rcan_common.ros_params import declare_config
from rcan_common.stamps import stamp_to_s
from rcan_perception.perception_core import CanonicalGenerator, LatencyStats, LatestSlot
from rcan_perception.perception_params import RUNTIME_PARAMETERS, PerceptionNodeParams  # noqa: F401 (re-exported)
from rcan_perception.runtime import ModelError

class PerceptionNode(Node):
    def __init__(self, **kwargs):
        super().__init__("perception_node", **kwargs)
        try:
            cfg = self.params = declare_config(self, PerceptionNodeParams, RUNTIME_PARAMETERS, self._apply_params)
            self.generator = CanonicalGenerator(cfg.model_path, cfg.runtime_config(), cfg.contract_path or None,
                                                log=self.get_logger().info)
        except (ValueError, ModelError) as exc:  # ConfigError is a ValueError
            raise StartupError(str(exc)) from exc
        self.max_pixels = cfg.max_input_pixels
        self.output_size = (cfg.output_size, cfg.output_size) if cfg.output_size else None
        input_topic, prefix, model_path = cfg.input_topic, cfg.output_prefix.rstrip("/"), cfg.model_path
        latency_topic, stats_period = cfg.latency_topic, cfg.stats_period_s

        self.rejects = OnceLog(self.get_logger().warning)
        self.stats = LatencyStats()
        self.slot: LatestSlot[tuple[Image, float]] = LatestSlot()
        # Reliable (rviz-compatible); input depth 1 keeps only the newest frame.  qos_overrides.<topic>.* change it.
        self.pub_image = publisher(self, Image, f"{prefix}/image", 5)
        self.pub_seg = publisher(self, Image, f"{prefix}/segmentation", 5)
        self.pub_labels = publisher(self, Image, f"{prefix}/segmentation/labels", 5)
        self.pub_depth = publisher(self, Image, f"{prefix}/depth", 5)
        self.pub_latency = publisher(self, String, latency_topic, 10)
        subscription(self, Image, input_topic, self._on_image, 1)
        self.create_timer(stats_period, self._publish_stats)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="perception_worker", daemon=True)
        self._worker.start()
        c = self.generator.contract
        self.get_logger().info(f"{input_topic} -> {prefix}/{{image,segmentation,segmentation/labels,depth}} "
                               f"(model {model_path}, {c.input_width}x{c.input_height})")

    def _apply_params(self, params: PerceptionNodeParams) -> None:
        # Validated; only RUNTIME_PARAMETERS can differ.  The worker reads output_size per frame.
        self.params = params
        self.output_size = (params.output_size, params.output_size) if params.output_size else None

    def _on_image(self, msg: Image) -> None:
        # Only the cheap header and stamp checks here; the pixels are copied by the worker.
        problem = receipt_problem(msg, now_s(self), self.params.max_future_stamp_s, max_pixels=self.max_pixels)
        if problem is not None:
            cause, detail = problem
            return self.rejects(cause, f"rejected image on {msg.header.frame_id or '(no frame_id)'}: {detail}")
        self.slot.put((msg, time.monotonic()))

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self.slot.take(timeout=0.2)
            if item is None:
                continue
            msg, received = item
            try:
                self._process(msg, received)
            except ImageError as exc:
                self.rejects(exc.reason, f"rejected image: {exc}")
            except Exception as exc:  # a bad frame must never kill the node
                if self._stop.is_set() or not self.context.ok():
                    return  # shutting down: publishing fails, nothing to report
                self.rejects(f"inference:{type(exc).__name__}", f"generator failed on a frame: {exc!r}")

    def _process(self, msg: Image, received: float) -> None:
        rgb = image_msg_to_rgb(msg, max_pixels=self.max_pixels)
        out = self.generator(rgb, self.output_size)
        header = msg.header
        self.pub_image.publish(rgb_to_image_msg(out.canonical[0], header))
        self.pub_seg.publish(rgb_to_image_msg(out.colour[0], header))
        self.pub_labels.publish(mono8_to_image_msg(out.labels[0], header))
        self.pub_depth.publish(depth_to_image_msg(out.depth_m[0], header))
        self.stats.add(time.monotonic() - received, now_s(self) - stamp_to_s(header.stamp))

    def _publish_stats(self) -> None:
        summary = self.stats.summary()
        summary.update(dropped=self.slot.dropped, rejected=dict(self.rejects.counts),
                       provider=self.generator.model.provider)
        self.pub_latency.publish(String(data=json.dumps(summary, sort_keys=True)))

    def close(self) -> None:
        self._stop.set()
        self.slot.close()
        self._worker.join(timeout=5.0)


def main(args=None) -> None:
    sys.exit(spin_node(PerceptionNode, args))


if __name__ == "__main__":
    main()
