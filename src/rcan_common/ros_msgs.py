"""Message conversions the nodes share (geometry_msgs poses, trajectory_msgs trajectories)."""
from __future__ import annotations

import numpy as np


def pose_stamped_msg(pos, quat, frame_id: str, stamp):
    """geometry_msgs/PoseStamped from a position (3,) and a quaternion (x, y, z, w)."""
    from geometry_msgs.msg import PoseStamped

    msg = PoseStamped()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pos)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in quat)
    return msg


def pose_arrays(msg) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,), quaternion (4,) x, y, z, w) of a geometry_msgs/PoseStamped, unchecked."""
    p, o = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w])


def joint_trajectory_msg(joint_names, positions, duration_s: float):
    """A one-point trajectory_msgs/JointTrajectory, zero velocities at the end, zero stamp
    ("start now" to joint_trajectory_controller)."""
    from builtin_interfaces.msg import Duration
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    msg = JointTrajectory()
    msg.joint_names = list(joint_names)
    point = JointTrajectoryPoint()
    point.positions = [float(v) for v in positions]
    point.velocities = [0.0] * len(point.positions)
    sec, nanosec = divmod(int(round(duration_s * 1e9)), 1_000_000_000)
    point.time_from_start = Duration(sec=sec, nanosec=nanosec)
    msg.points = [point]
    return msg
