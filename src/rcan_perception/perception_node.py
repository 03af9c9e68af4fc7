"""perception_node: camera image -> G(x) via ONNX Runtime -> canonical RGB, segmentation, depth.

Subscribes to ``/camera/image_raw`` (rgb8 or bgr8; anything else is rejected with one log
line per cause and counted, never a crash).  The callback only checks the header and
keeps the NEWEST frame; a worker thread runs the generator on whatever is newest, so a
camera faster than the model drops frames (counted) instead of queueing them.  Outputs
carry the SOURCE image's header, so the policy can pair source and canonical by stamp:

* ``/rcan/canonical/image`` rgb8, ``/rcan/canonical/segmentation`` colourised rgb8,
  ``/rcan/canonical/segmentation/labels`` mono8 class ids, ``/rcan/canonical/depth`` 32FC1 metres
* ``/rcan/perception/latency`` std_msgs/String JSON, about once a second:
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

from rcan_common.ros_image import (COLOR_ENCODINGS, DEFAULT_MAX_PIXELS, ImageError, check_image_header,
                                   depth_to_image_msg, image_msg_to_rgb, mono8_to_image_msg, rgb_to_image_msg)
from rcan_common.ros_node import OnceLog, StartupError, qos_profile, spin_node
from rcan_perception.perception_core import CanonicalGenerator, LatencyStats, LatestSlot
from rcan_perception.runtime import ModelError, RuntimeConfig


class PerceptionNode(Node):
    def __init__(self, **kwargs):
        super().__init__("perception_node", **kwargs)
        p = self.declare_parameter
        model_path = p("model_path", "models/generator_64.onnx").value
        contract_file = p("contract_path", "").value  # "" = <model>.contract.json
        provider = p("provider", "cpu").value
        intra = int(p("intra_op_threads", 0).value)
        inter = int(p("inter_op_threads", 0).value)
        fp16 = bool(p("fp16", False).value)
        warmup = int(p("warmup_runs", 2).value)
        output_size = int(p("output_size", 0).value)  # 0 = the model's resolution
        self.max_pixels = int(p("max_input_pixels", DEFAULT_MAX_PIXELS).value)
        input_topic = p("input_topic", "/camera/image_raw").value
        prefix = p("output_prefix", "/rcan/canonical").value.rstrip("/")
        latency_topic = p("latency_topic", "/rcan/perception/latency").value
        stats_period = float(p("stats_period_s", 1.0).value)
        reliability = p("qos_reliability", "reliable").value
        in_depth = int(p("input_qos_depth", 1).value)
        out_depth = int(p("output_qos_depth", 5).value)

        try:
            in_qos, out_qos = qos_profile(reliability, in_depth), qos_profile(reliability, out_depth)
            if output_size < 0:
                raise ValueError(f"output_size must be >= 0, got {output_size}")
            if stats_period <= 0:
                raise ValueError(f"stats_period_s must be > 0, got {stats_period}")
            runtime = RuntimeConfig(provider=provider, intra_op_threads=intra, inter_op_threads=inter,
                                    fp16=fp16, warmup_runs=warmup)
            self.generator = CanonicalGenerator(model_path, runtime, contract_file or None,
                                                log=self.get_logger().info)
        except (ValueError, ModelError) as exc:
            raise StartupError(str(exc)) from exc
        self.output_size = (output_size, output_size) if output_size else None

        self.rejects = OnceLog(self.get_logger().warning)
        self.stats = LatencyStats()
        self.slot: LatestSlot[tuple[Image, float]] = LatestSlot()
        self.pub_image = self.create_publisher(Image, f"{prefix}/image", out_qos)
        self.pub_seg = self.create_publisher(Image, f"{prefix}/segmentation", out_qos)
        self.pub_labels = self.create_publisher(Image, f"{prefix}/segmentation/labels", out_qos)
        self.pub_depth = self.create_publisher(Image, f"{prefix}/depth", out_qos)
        self.pub_latency = self.create_publisher(String, latency_topic, 10)
        self.create_subscription(Image, input_topic, self._on_image, in_qos)
        self.create_timer(stats_period, self._publish_stats)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="perception_worker", daemon=True)
        self._worker.start()
        c = self.generator.contract
        self.get_logger().info(f"{input_topic} -> {prefix}/{{image,segmentation,segmentation/labels,depth}} "
                               f"(model {model_path}, {c.input_width}x{c.input_height})")

    def _on_image(self, msg: Image) -> None:
        # Only the cheap header check here; the pixels are copied by the worker.
        try:
            check_image_header(msg, COLOR_ENCODINGS, 3, max_pixels=self.max_pixels)
        except ImageError as exc:
            self.rejects(exc.reason, f"rejected image on {msg.header.frame_id or '(no frame_id)'}: {exc}")
            return
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
        now_ros = self.get_clock().now().nanoseconds * 1e-9
        stamp = header.stamp.sec + header.stamp.nanosec * 1e-9
        self.stats.add(time.monotonic() - received, now_ros - stamp)

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
