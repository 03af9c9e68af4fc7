"""The ROS-free part of perception_node: run G on a frame, keep only the newest frame, latency stats."""
from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Callable, Generic, TypeVar

import numpy as np

from rcan_perception.contract import Decoded, GeneratorContract, contract_path, postprocess, preprocess
from rcan_perception.runtime import ModelError, OrtModel, RuntimeConfig

T = TypeVar("T")


class CanonicalGenerator:
    """G(x) through ONNX Runtime, with the model's saved pre/post-processing contract.

    The model is checked against the contract at start-up: input name, 3 channels, the
    trained size (when the model fixes it) and the three output names.
    """

    def __init__(self, model_path: str | Path, runtime: RuntimeConfig = RuntimeConfig(),
                 contract_file: str | Path | None = None, log: Callable[[str], None] | None = None):
        model_path = Path(model_path)
        cpath = Path(contract_file) if contract_file else contract_path(model_path)
        try:
            self.contract = GeneratorContract.load(cpath)
        except (FileNotFoundError, ValueError) as exc:  # ConfigError is a ValueError
            raise ModelError(f"generator contract for {model_path}: {exc}") from exc
        c = self.contract
        self.model = OrtModel(model_path, runtime,
                              expected_inputs={c.input_name: (None, 3, c.input_height, c.input_width)},
                              expected_outputs=c.output_names, log=log)

    def __call__(self, rgb: np.ndarray, output_size: tuple[int, int] | None = None) -> Decoded:
        """HxWx3 uint8 RGB -> decoded outputs with batch 1 (canonical, labels, colour, depth_m)."""
        outputs = self.model.run({self.contract.input_name: preprocess(self.contract, rgb)})
        return postprocess(self.contract, outputs, output_size)


class LatestSlot(Generic[T]):
    """A one-item mailbox: ``put`` replaces an unconsumed item (counted as dropped), never queues."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def take(self, timeout: float | None = None) -> T | None:
        """The newest item, or None on timeout / after close()."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class LatencyStats:
    """Rolling window of per-frame latencies (seconds) reported as p50/p95 in milliseconds."""

    def __init__(self, window: int = 200):
        self._lock = threading.Lock()
        self._latency: deque[float] = deque(maxlen=window)
        self._age: deque[float] = deque(maxlen=window)
        self.count = 0

    def add(self, latency_s: float, age_s: float) -> None:
        with self._lock:
            self._latency.append(latency_s)
            self._age.append(age_s)
            self.count += 1

    def summary(self) -> dict:
        with self._lock:
            lat, age, count = np.array(self._latency), np.array(self._age), self.count

        def pct(a: np.ndarray, q: float) -> float | None:
            return round(float(np.percentile(a, q)) * 1e3, 3) if a.size else None

        # latency: receipt -> published (queueing + inference); age: header stamp -> published.
        return {"count": count, "window": int(lat.size), "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
                "age_p50_ms": pct(age, 50), "age_p95_ms": pct(age, 95)}
