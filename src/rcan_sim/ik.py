"""Inverse kinematics of the simulated iiwa + gripper for a vertical, top-down gripper.

Plain Python (no ROS).  `ArmIK` solves on a kinematics-only copy of the arm in its own pybullet
DIRECT client, so the live arm of rcan_sim.world.GraspWorld is never touched by a solve.  The copy
holds no textures or objects, so it is loaded once and never rebuilt with the scene.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pybullet as pb

ARM_JOINTS = tuple(range(7))
FLANGE_LINK = 6
TOP_DOWN = (0.0, -math.pi, 0.0)  # flange euler for a vertical, downward gripper


def top_down_orientation(yaw: float) -> tuple[float, float, float, float]:
    """Flange quaternion (xyzw) of the vertical, downward gripper turned by `yaw` about the vertical."""
    return pb.getQuaternionFromEuler([TOP_DOWN[0], TOP_DOWN[1], TOP_DOWN[2] + yaw])


class ArmIK:
    """IK on a kinematic copy of the arm loaded from `sdf` (pybullet_data's kuka_with_gripper2.sdf)."""

    def __init__(self, sdf: str | Path):
        self._cid = pb.connect(pb.DIRECT)
        if self._cid < 0:
            raise RuntimeError("pybullet could not open a DIRECT client for IK")
        self.arm = pb.loadSDF(str(sdf), physicsClientId=self._cid)[0]
        pb.resetBasePositionAndOrientation(self.arm, [0, 0, 0], [0, 0, 0, 1], physicsClientId=self._cid)
        movable = [j for j in range(pb.getNumJoints(self.arm, physicsClientId=self._cid))
                   if pb.getJointInfo(self.arm, j, physicsClientId=self._cid)[2] != pb.JOINT_FIXED]
        info = [pb.getJointInfo(self.arm, j, physicsClientId=self._cid) for j in movable]
        self.num_movable = len(movable)
        self.lower = [i[8] for i in info]
        self.upper = [i[9] if i[9] > i[8] else i[8] for i in info]
        self.ranges = [max(u - l, 0.1) for l, u in zip(self.lower, self.upper)]
        self.arm_limits = np.array([[info[j][8], info[j][9]] for j in ARM_JOINTS])

    def solve(self, tcp_pos, yaw: float, rest, tool_offset: np.ndarray, iterations: int = 20,
              tolerance: float = 5e-4) -> np.ndarray:
        """7 arm joint angles putting the TCP (`tool_offset` from the flange) at `tcp_pos` with the gripper
        vertical at `yaw`, starting from the joint angles `rest`.  Re-seeds pybullet's IK with its own answer
        until the flange is within `tolerance`; the answer is clipped to the joint limits."""
        orn = top_down_orientation(yaw)
        m = np.array(pb.getMatrixFromQuaternion(orn)).reshape(3, 3)
        flange = np.asarray(tcp_pos, dtype=np.float64) - m @ tool_offset
        k = self._cid
        q = np.asarray(rest, dtype=np.float64)
        rest_full = list(q) + [0.0] * (self.num_movable - 7)
        for it in range(iterations):
            for j, v in zip(ARM_JOINTS, q):
                pb.resetJointState(self.arm, j, float(v), physicsClientId=k)
            pos = pb.getLinkState(self.arm, FLANGE_LINK, computeForwardKinematics=True, physicsClientId=k)[4]
            if np.linalg.norm(np.array(pos) - flange) < tolerance and it > 0:
                break
            sol = pb.calculateInverseKinematics(
                self.arm, FLANGE_LINK, flange.tolist(), orn, lowerLimits=self.lower, upperLimits=self.upper,
                jointRanges=self.ranges, restPoses=rest_full, maxNumIterations=50, residualThreshold=1e-5,
                physicsClientId=k)
            q = np.clip(np.array(sol[:7]), self.arm_limits[:, 0], self.arm_limits[:, 1])
        return q

    def close(self) -> None:
        if self._cid >= 0:
            pb.disconnect(physicsClientId=self._cid)
            self._cid = -1
