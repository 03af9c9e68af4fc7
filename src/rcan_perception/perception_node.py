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
from dataclasses import dataclass

from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import String

from rcan_common.ros_image import (COLOR_ENCODINGS, DEFAULT_MAX_PIXELS, ImageError, check_image_header,
                                   depth_to_image_msg, image_msg_to_rgb, mono8_to_image_msg, rgb_to_image_msg)
from rcan_common.config import require
from rcan_common.ros_node import RELIABILITY, OnceLog, StartupError, qos_profile, spin_node
from rcan_common.ros_params import declare_config
from rcan_common.stamps import DEFAULT_MAX_FUTURE_S, FUTURE_STAMP, future_stamp_reason
from rcan_perception.perception_core import CanonicalGenerator, LatencyStats, LatestSlot
from rcan_perception.runtime import ModelError, RuntimeConfig

MAX_OUTPUT_SIZE = 4096  # px; larger outputs would only cost memory


@dataclass(frozen=True)
class PerceptionNodeParams:
    """ROS parameters of perception_node (config/perception.yaml)."""

    model_path: str = "models/generator_64.onnx"
    contract_path: str = ""  # "" = <model>.contract.json
    provider: str = "cpu"
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    fp16: bool = False
    warmup_runs: int = 2
    output_size: int = 0  # 0 = the model's resolution
    max_input_pixels: int = DEFAULT_MAX_PIXELS
    max_future_stamp_s: float = DEFAULT_MAX_FUTURE_S
    """Images stamped more than this (s) ahead of this node's clock are rejected on receipt."""
    input_topic: str = "/camera/image_raw"
    output_prefix: str = "/rcan/canonical"
    latency_topic: str = "/rcan/perception/latency"
    stats_period_s: float = 1.0
    qos_reliability: str = "reliable"
    input_qos_depth: int = 1
    output_qos_depth: int = 5

    def __post_init__(self) -> None:
        require(bool(self.model_path), "model_path", "must not be empty")
        require(0 <= self.output_size <= MAX_OUTPUT_SIZE, "output_size",
                f"must be in [0, {MAX_OUTPUT_SIZE}] (0 = the model's resolution)")
        require(self.max_input_pixels >= 1, "max_input_pixels", "must be >= 1")
        require(self.stats_period_s > 0, "stats_period_s", "must be > 0")
        require(0 <= self.max_future_stamp_s <= 10, "max_future_stamp_s", "must be in [0, 10]")
        require(self.qos_reliability in RELIABILITY, "qos_reliability", f"must be one of {list(RELIABILITY)}")
        require(self.input_qos_depth >= 1, "input_qos_depth", "must be >= 1")
        require(self.output_qos_depth >= 1, "output_qos_depth", "must be >= 1")
        self.runtime_config()  # provider, threads, warmup runs

    def runtime_config(self) -> RuntimeConfig:
        return RuntimeConfig(provider=self.provider, intra_op_threads=self.intra_op_threads,
                             inter_op_threads=self.inter_op_threads, fp16=self.fp16, warmup_runs=self.warmup_runs)


# Parameters the running node re-reads (the worker takes output_size for every frame); a change
# is validated like a start-up value.  The rest (model, contract, provider, topics, QoS, the input
# size limit) are used at start-up or guard the input: read-only.
RUNTIME_PARAMETERS = ("output_size",)


class PerceptionNode(Node):
    def __init__(self, **kwargs):
        super().__init__("perception_node", **kwargs)
        try:
            cfg = self.params = declare_config(self, PerceptionNodeParams, RUNTIME_PARAMETERS, self._apply_params)
            in_qos = qos_profile(cfg.qos_reliability, cfg.input_qos_depth)
            out_qos = qos_profile(cfg.qos_reliability, cfg.output_qos_depth)
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

    def _apply_params(self, params: PerceptionNodeParams) -> None:
        # Validated; only RUNTIME_PARAMETERS can differ.  The worker reads output_size per frame.
        self.params = params
        self.output_size = (params.output_size, params.output_size) if params.output_size else None

    def _on_image(self, msg: Image) -> None:
        # Only the cheap header check here; the pixels are copied by the worker.
        try:
            check_image_header(msg, COLOR_ENCODINGS, 3, max_pixels=self.max_pixels)
        except ImageError as exc:
            self.rejects(exc.reason, f"rejected image on {msg.header.frame_id or '(no frame_id)'}: {exc}")
            return
        # A future stamp would be copied onto every output and poison the policy's pairing.
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        reason = future_stamp_reason(stamp, self.get_clock().now().nanoseconds * 1e-9, self.params.max_future_stamp_s)
        if reason is not None:
            self.rejects(FUTURE_STAMP, f"rejected image: {reason}")
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
