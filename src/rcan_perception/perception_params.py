"""perception_node's parameters (config/perception.yaml) as one flat dataclass, ROS-free.

Declared through rcan_common.ros_params.declare_config; QoS is not a field: every topic's
history, depth and reliability are rclpy QoS override parameters (``qos_overrides.<topic>...``).
"""
from __future__ import annotations

from dataclasses import dataclass

from rcan_common.config import require
from rcan_common.ros_image import DEFAULT_MAX_PIXELS
from rcan_common.stamps import DEFAULT_MAX_FUTURE_S
from rcan_perception.runtime import RuntimeConfig

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
    input_topic: str = "camera/image_raw"  # relative names: a namespace moves them
    output_prefix: str = "rcan/canonical"
    latency_topic: str = "rcan/perception/latency"
    stats_period_s: float = 1.0

    def __post_init__(self) -> None:
        require(bool(self.model_path), "model_path", "must not be empty")
        require(0 <= self.output_size <= MAX_OUTPUT_SIZE, "output_size",
                f"must be in [0, {MAX_OUTPUT_SIZE}] (0 = the model's resolution)")
        require(self.max_input_pixels >= 1, "max_input_pixels", "must be >= 1")
        require(self.stats_period_s > 0, "stats_period_s", "must be > 0")
        require(0 <= self.max_future_stamp_s <= 10, "max_future_stamp_s", "must be in [0, 10]")
        self.runtime_config()  # provider, threads, warmup runs

    def runtime_config(self) -> RuntimeConfig:
        return RuntimeConfig(provider=self.provider, intra_op_threads=self.intra_op_threads,
                             inter_op_threads=self.inter_op_threads, fp16=self.fp16, warmup_runs=self.warmup_runs)


# Parameters the running node re-reads (the worker takes output_size for every frame); a change
# is validated like a start-up value.  The rest (model, contract, provider, topics, the input
# size limit) are used at start-up or guard the input: read-only.
RUNTIME_PARAMETERS = ("output_size",)
