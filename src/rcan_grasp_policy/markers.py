"""The policy's rviz markers, built by one pure function: the action arrow and the Q text."""
from __future__ import annotations

import math

import numpy as np


def action_markers(start, target, action: np.ndarray, q: float, step: int, max_steps: int,
                   frame_id: str, stamp):
    """visualization_msgs/MarkerArray: an arrow from the EE (`start`) to the target, coloured by Q
    (red 0 .. green 1), and a text above the EE with Q, step, dtheta, gripper and terminate."""
    from geometry_msgs.msg import Point
    from visualization_msgs.msg import Marker, MarkerArray

    arrow = Marker(ns="rcan_action", id=0, type=Marker.ARROW, action=Marker.ADD)
    arrow.header.frame_id, arrow.header.stamp = frame_id, stamp
    arrow.points = [Point(x=float(start[0]), y=float(start[1]), z=float(start[2])),
                    Point(x=float(target[0]), y=float(target[1]), z=float(target[2]))]
    arrow.scale.x, arrow.scale.y, arrow.scale.z = 0.005, 0.01, 0.01
    arrow.color.r, arrow.color.g, arrow.color.b, arrow.color.a = 1.0 - q, q, 0.2, 1.0
    arrow.pose.orientation.w = 1.0
    grip = "close" if action[5] > 0.5 else "open" if action[6] > 0.5 else "-"
    text = Marker(ns="rcan_q", id=1, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
    text.header = arrow.header
    text.pose.position.x, text.pose.position.y = float(start[0]), float(start[1])
    text.pose.position.z = float(start[2]) + 0.08
    text.pose.orientation.w = 1.0
    text.scale.z = 0.03
    text.color.r = text.color.g = text.color.b = text.color.a = 1.0
    dtheta = math.degrees(math.atan2(action[3], action[4]))
    text.text = (f"Q={q:.3f} step {step}/{max_steps} "
                 f"dtheta={dtheta:+.0f}deg gripper={grip}{' TERMINATE' if action[7] > 0.5 else ''}")
    return MarkerArray(markers=[arrow, text])
