"""Record ROS 2 topics to an MCAP file that Foxglove and `ros2 bag` (mcap storage) open.

Subscriptions are raw: the CDR bytes DDS delivered are written as they are, so
recording costs no deserialisation.  Schemas are the `ros2msg` text (the .msg file plus
every nested definition) read from the installed message packages, as rosbag2 writes them.
"""
from __future__ import annotations

import importlib
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mcap.writer import CompressionType, Writer

# Builtin field types of .msg files (no nested definition to add).
_PRIMITIVES = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
               "int64", "uint64", "string", "wstring"}
_SEPARATOR = "=" * 80 + "\n"


def _share_dirs(package: str) -> list[Path]:
    dirs = []
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory(package)))
    except Exception:  # not on the ament index (PyPI wheels): look beside the interpreter
        pass
    dirs.append(Path(sys.prefix) / "share" / package)
    return dirs


def msg_text(datatype: str) -> str:
    """The .msg file of 'pkg/msg/Type' (or 'pkg/Type')."""
    package, _, name = datatype.replace("/msg/", "/").partition("/")
    for share in _share_dirs(package):
        path = share / "msg" / f"{name}.msg"
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError(f"no definition of {datatype} (looked for {package}/msg/{name}.msg)")


def _nested_types(text: str, package: str) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        # Constants (TYPE NAME=VALUE) are always primitive, so the first token decides.
        base = re.sub(r"\[.*\]$", "", line.split()[0])
        base = re.sub(r"<=\d+$", "", base)
        if base in _PRIMITIVES:
            continue
        out.append(base if "/" in base else f"{package}/{base}")
    return out


def ros2msg_schema(datatype: str) -> str:
    """Full `ros2msg` schema text: the type's definition then each dependency once."""
    package = datatype.split("/")[0]
    root = msg_text(datatype)
    parts, seen = [root], set()
    stack = _nested_types(root, package)
    while stack:
        dep = stack.pop(0).replace("/msg/", "/")
        if dep in seen:
            continue
        seen.add(dep)
        text = msg_text(dep)
        parts.append(f"{_SEPARATOR}MSG: {dep}\n{text}")
        stack.extend(_nested_types(text, dep.split("/")[0]))
    return "\n".join(p.rstrip("\n") for p in parts) + "\n"


def message_class(datatype: str) -> Any:
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image."""
    package, _, name = datatype.replace("/msg/", "/").partition("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


# What the demo records: the whole perception -> policy -> driver -> sim loop.
DEFAULT_TOPICS: dict[str, str] = {
    "/camera/image_raw": "sensor_msgs/msg/Image",
    "/camera/camera_info": "sensor_msgs/msg/CameraInfo",
    "/rcan/canonical/image": "sensor_msgs/msg/Image",
    "/rcan/canonical/segmentation": "sensor_msgs/msg/Image",
    "/rcan/canonical/depth": "sensor_msgs/msg/Image",
    "/rcan/perception/latency": "std_msgs/msg/String",
    "/rcan/target_pose": "geometry_msgs/msg/PoseStamped",
    "/rcan/target_gripper": "std_msgs/msg/Bool",
    "/rcan/policy/markers": "visualization_msgs/msg/MarkerArray",
    "/rcan/policy/status": "std_msgs/msg/String",
    "/rcan/policy/episode_done": "std_msgs/msg/String",
    "/supervisor_node/result": "std_msgs/msg/String",
    "/lbr/joint_trajectory_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
    "/gripper/command": "std_msgs/msg/Bool",
    "/rcan/gripper_state": "std_msgs/msg/Bool",
    "/rcan/ee_pose": "geometry_msgs/msg/PoseStamped",
    "/joint_states": "sensor_msgs/msg/JointState",
}


class McapRecorder:
    """Subscribe (raw) to `topics` on `node` and write every message to `path`."""

    def __init__(self, node: Any, path: str | Path, topics: dict[str, str] | None = None):
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._writer = Writer(self._file, compression=CompressionType.ZSTD)
        self._writer.start(profile="ros2", library="rcan_bringup.recorder")
        self._lock = threading.Lock()
        self._closed = False
        self.counts: dict[str, int] = {}
        qos = QoSProfile(depth=50, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.BEST_EFFORT)
        self._subs = []
        for topic, datatype in (topics or DEFAULT_TOPICS).items():
            schema_id = self._writer.register_schema(name=datatype, encoding="ros2msg",
                                                     data=ros2msg_schema(datatype).encode())
            channel_id = self._writer.register_channel(topic=topic, message_encoding="cdr", schema_id=schema_id)
            self.counts[topic] = 0
            self._subs.append(node.create_subscription(
                message_class(datatype), topic, lambda data, t=topic, c=channel_id: self._write(t, c, data), qos,
                raw=True))
        self._node = node

    def _write(self, topic: str, channel_id: int, data: bytes) -> None:
        now = time.time_ns()
        with self._lock:
            if self._closed:
                return
            self._writer.add_message(channel_id=channel_id, log_time=now, publish_time=now, data=data,
                                     sequence=self.counts[topic])
            self.counts[topic] += 1

    def close(self) -> dict[str, int]:
        """Stop recording and finish the file (its summary/index is written here)."""
        for sub in self._subs:
            self._node.destroy_subscription(sub)
        with self._lock:
            if not self._closed:
                self._closed = True
                self._writer.finish()
                self._file.close()
        return dict(self.counts)
