"""Segmentation classes shared by the sim, the generator's mask head and the ROS nodes.

Paper 4.1: every pixel is labelled as graspable object, tray, tray divider, robot arm
(arm + gripper) or background.
"""
from __future__ import annotations

import numpy as np

BACKGROUND = 0
OBJECT = 1
TRAY = 2
DIVIDER = 3
ARM = 4

NUM_CLASSES = 5
CLASS_NAMES: tuple[str, ...] = ("background", "object", "tray", "divider", "arm")

# uint8 RGB per class id, for colourised segmentation images (index with the label map).
CLASS_COLORS = np.array(
    [
        [0, 0, 0],  # background
        [230, 57, 70],  # object
        [69, 123, 157],  # tray
        [244, 162, 97],  # divider
        [42, 157, 143],  # arm
    ],
    dtype=np.uint8,
)
CLASS_COLORS.flags.writeable = False


def colorize(labels: np.ndarray) -> np.ndarray:
    """HxW uint8 class ids -> HxWx3 uint8 RGB; ids outside the 5 classes are an error."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"segmentation must be HxW, got shape {labels.shape}")
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise ValueError(f"segmentation contains class id {int(labels.max())}; valid ids are 0..{NUM_CLASSES - 1}")
    return CLASS_COLORS[labels.astype(np.intp)]
