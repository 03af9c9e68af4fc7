"""The pybullet grasping world (paper 4.1): KUKA iiwa + gripper, tray with a divider, 5 objects.

This module owns the scene (bodies, episodes, physics, camera, captures).  The looks a render
applies (canonical colours, random textures and lights, pose jitter) live in rcan_sim.domains,
and inverse kinematics on a kinematic copy of the arm in rcan_sim.ik.

Plain Python (no ROS).  One `GraspWorld` owns one pybullet DIRECT client.  Poses from
`ee_pose`/`flange_pose` are in the world frame.  The robot base frame (`lbr_link_0`, the
frame the iiwa driver's kinematics and the ROS topics use) is not the world frame: pybullet
places a body's centre of mass, not its link frame, at the reset position, so link 0 sits at
`base_pose` = (0.1, 0, -0.07) in the world.  `to_base_frame` converts.

Rendering uses pybullet's TinyRenderer (the paper's "default renderer").  A render only
touches visual properties (textures, colours, light) and, for pose jitter, moves the arm
base and the tray visual for the duration of the capture and puts them back exactly, so
the physics state is never changed by rendering.

Randomization cost is kept low by loading bank textures into pybullet once (per index,
on demand) and re-assigning texture ids per render; each episode draws a palette of bank
indices from its seed, and renders draw from that palette.

Memory stays bounded over any number of episodes: pybullet frees textures and shapes only when
the whole scene is reset, so `reset` rebuilds the scene once more than `max_loaded_textures`
textures or `max_object_shapes` objects' shapes have accumulated, and object meshes reach
pybullet in forms it does not leak (see `_load_object`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pybullet as pb

from rcan_common.config import require
from rcan_common import classes
from rcan_sim import domains, objects
from rcan_sim.domains import CANON_LIGHT, domain_spec
from rcan_sim.ik import ARM_JOINTS, FLANGE_LINK, ArmIK, top_down_orientation
from rcan_sim.meshes import floor_grid, uv_arm_sdf
from rcan_sim.textures import TextureBank

# Arm joints exposed to ROS, named like lbr_fri_ros2_stack's joints (pybullet calls them J0..J6).
JOINT_NAMES = tuple(f"lbr_A{i}" for i in range(1, 8))
GRIPPER_BASE_JOINT = 7
FINGER_JOINTS = (8, 11)  # left, right finger (opposite signs)
FINGERTIP_JOINTS = (10, 13)
GRIPPER_LINKS = tuple(range(7, 14))
FINGER_OPEN = 0.3  # rad, as pybullet's kuka.py
ARM_FORCE = 200.0
ARM_POSITION_GAIN = 0.3
FINGER_FORCES = (5.0, 6.0)  # stronger than kuka.py (2, 2.5): fewer objects slip out during the lift
TIP_FORCE = 5.0

FLOOR_Z = -0.2
TRAY_POS = (0.65, 0.0, FLOOR_Z)  # the iiwa elbow limit (J4 +-120 deg) rules out low targets nearer than ~0.5 m
TRAY_BOTTOM_Z = FLOOR_Z + 0.015  # top of traybox.urdf's floor box
# traybox.urdf's collision boxes: (half extents, position, rpy) -- bottom, then 4 slanted walls.
TRAY_BOXES = (
    ((0.3, 0.3, 0.01), (0.0, 0.0, 0.005), (0.0, 0.0, 0.0)),
    ((0.01, 0.3, 0.075), (0.25, 0.0, 0.059), (0.0, 0.575469961, 0.0)),
    ((0.01, 0.3, 0.075), (-0.25, 0.0, 0.059), (0.0, -0.575469961, 0.0)),
    ((0.3, 0.01, 0.075), (0.0, -0.25, 0.059), (0.575469961, 0.0, 0.0)),
    ((0.3, 0.01, 0.075), (0.0, 0.25, 0.059), (-0.575469961, 0.0, 0.0)),
)
DIVIDER_SIZE = (0.012, 0.42, 0.05)  # thickness, length, height (m)


@dataclass
class WorldConfig:
    """The simulated scene: objects, textures, physics and camera."""

    image_size: int = 472
    """Square render size in pixels (paper/robot: 472; tests: 64)."""
    split: Literal["train", "test"] = "train"
    """Object split the 5 objects per episode are drawn from (test objects never in training)."""
    num_objects: int = 5
    """Objects dropped into the tray per episode."""
    texture_size: int = 128
    """Side of each bank texture in pixels."""
    texture_folder: Path | None = None
    """Folder of images to use as the texture bank instead of the procedural one (see texture_held_out_fraction)."""
    texture_held_out_fraction: float = 0.1
    """With texture_folder: the share of its images, the last ones by file name, kept as held-out textures
    (the held-out domain and the test split; never in training domains); 0 uses every image for both."""
    texture_cache_dir: Path | None = None
    """Where bank textures are written as PNG for pybullet (default: $RCAN_TEXTURE_CACHE or /tmp/rcan_textures)."""
    episode_textures: int = 48
    """Bank textures drawn per episode; each render assigns textures from this palette."""
    max_loaded_textures: int = 128
    """Rebuild the pybullet scene at the next reset once more textures than this are loaded (bounds memory:
    pybullet frees textures only with the scene, ~0.1 MB each at texture_size 128; a rebuild takes ~75 ms)."""
    max_object_shapes: int = 64
    """Rebuild the pybullet scene at the next reset once more distinct objects than this have shapes (bounds memory)."""
    time_step: float = 1.0 / 120.0
    """Physics time step (s)."""
    solver_iterations: int = 40
    """Constraint solver iterations per physics step."""
    settle_steps: int = 100
    """Physics steps to let dropped objects come to rest at reset."""
    jitter_position: float = 0.01
    """Half-range of the uniform arm/tray position jitter in randomized renders (m)."""
    jitter_yaw_deg: float = 2.0
    """Half-range of the uniform arm/tray yaw jitter (degrees)."""
    jitter_scale: float = 0.04
    """Half-range of the relative tray size jitter."""
    shadows: bool = True
    """Render shadows (TinyRenderer shadow map)."""
    camera_eye: tuple[float, float, float] = (-0.1, 0.6, 0.8)
    """Over-the-shoulder camera position in the base frame (m)."""
    camera_target: tuple[float, float, float] = (0.65, 0.0, -0.15)
    """Point the camera looks at (m)."""
    camera_fov_deg: float = 40.0
    """Vertical field of view (degrees)."""
    camera_near: float = 0.1
    """Near clip plane (m)."""
    camera_far: float = 4.0
    """Far clip plane (m); depth beyond it reads as far."""

    def __post_init__(self) -> None:
        require(isinstance(self.image_size, int) and 16 <= self.image_size <= 2048, "image_size", "must be an int in 16..2048")
        require(self.split in objects.SPLITS, "split", f"must be one of {objects.SPLITS}")
        require(1 <= self.num_objects <= 20, "num_objects", "must be in 1..20")
        require(8 <= self.texture_size <= 1024, "texture_size", "must be in 8..1024")
        require(self.texture_folder is None or Path(self.texture_folder).is_dir(), "texture_folder",
                f"{self.texture_folder} is not a directory")
        require(0.0 <= self.texture_held_out_fraction <= 0.9, "texture_held_out_fraction", "must be in [0, 0.9]")
        require(4 <= self.episode_textures <= 512, "episode_textures", "must be in 4..512")
        require(self.max_loaded_textures >= 2 * self.episode_textures, "max_loaded_textures",
                "must be at least 2 x episode_textures")
        require(self.max_object_shapes >= self.num_objects, "max_object_shapes",
                "must be at least num_objects")
        require(0 < self.time_step <= 0.05, "time_step", "must be in (0, 0.05]")
        require(1 <= self.solver_iterations <= 500, "solver_iterations", "must be in 1..500")
        require(0 <= self.settle_steps <= 5000, "settle_steps", "must be in 0..5000")
        require(0 <= self.jitter_position <= 0.05, "jitter_position", "must be in [0, 0.05] m")
        require(0 <= self.jitter_yaw_deg <= 10, "jitter_yaw_deg", "must be in [0, 10]")
        require(0 <= self.jitter_scale <= 0.2, "jitter_scale", "must be in [0, 0.2]")
        require(5 <= self.camera_fov_deg <= 120, "camera_fov_deg", "must be in [5, 120]")
        require(0 < self.camera_near < self.camera_far, "camera_near", "must be > 0 and < camera_far")


def view_config(image_size: int, split: str, camera_fov_deg: float = 0.0) -> WorldConfig:
    """The world at `image_size` on `split`, seen through a camera of `camera_fov_deg` degrees.  0 keeps the
    default camera: label directories and policy contracts store 0 for "the labelling camera's view"."""
    camera = {"camera_fov_deg": camera_fov_deg} if camera_fov_deg else {}
    return WorldConfig(image_size=image_size, split=split, **camera)


@dataclass(frozen=True)
class CameraInfo:
    """Pinhole camera of a render.  K is OpenCV style (x right, y down); `extrinsics` maps
    world/base-frame points to the OpenCV camera frame (z forward)."""

    width: int
    height: int
    K: np.ndarray  # 3x3
    extrinsics: np.ndarray  # 4x4 world -> camera
    near: float
    far: float


@dataclass
class Frame:
    rgb: np.ndarray  # HxWx3 uint8
    depth: np.ndarray | None  # HxW float32, metres along the optical axis (None: rendered without labels)
    segmentation: np.ndarray | None  # HxW uint8 class ids (rcan_common.classes) (None: rendered without labels)
    camera: CameraInfo


@dataclass
class PairedFrame:
    """Randomized and canonical renders of one frozen state (identical geometry)."""

    randomized_rgb: np.ndarray | None  # None: rendered with source=False
    canonical_rgb: np.ndarray
    segmentation: np.ndarray
    depth: np.ndarray
    camera: CameraInfo


@dataclass(frozen=True)
class WorldSnapshot:
    """A saved physics state of one episode (GraspWorld.save_state)."""

    state_id: int
    seed: int
    object_uids: tuple[int, ...]
    arm_targets: np.ndarray
    arm_max_velocity: float
    gripper_open: bool


@dataclass
class _Episode:
    seed: int
    object_ids: list[int]
    object_uids: list[int]
    palette: dict[bool, list[int]] = field(default_factory=dict)  # held_out -> bank indices
    identity: list[tuple[int, tuple[float, float, float]]] = field(default_factory=list)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None elsewhere."""
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand heap pages freed by a scene rebuild back to the OS.  glibc otherwise keeps them (its mmap
    threshold grows after large frees), and the process's RSS stays ~60 MB above what is live."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _floor_visual_args() -> dict[str, list]:
    """The floor grid as createVisualShape keyword lists, built once per process: pybullet leaks
    every vertex list it is handed (see objects.object_hull_vertices), so each scene build reuses these."""
    grid = floor_grid()
    return {"vertices": grid.vertices.tolist(), "indices": grid.indices.tolist(), "uvs": grid.uvs.tolist(),
            "normals": grid.normals.tolist()}


class GraspWorld:
    """KUKA iiwa grasping scene in a private pybullet DIRECT client."""

    joint_names = JOINT_NAMES

    def __init__(self, cfg: WorldConfig | None = None):
        self.cfg = cfg or WorldConfig()
        self.bank = TextureBank(self.cfg.texture_size, self.cfg.texture_folder, self.cfg.texture_cache_dir,
                                self.cfg.texture_held_out_fraction)
        self._object_pool = objects.object_ids(self.cfg.split)
        self._cid = pb.connect(pb.DIRECT)
        if self._cid < 0:
            raise RuntimeError("pybullet could not open a DIRECT client")
        self._ik: ArmIK | None = None  # kinematics-only copy of the arm, loaded with the first scene
        self._episode: _Episode | None = None
        self._gripper_open = True
        self._build()
        self._views: dict[float, tuple[Any, CameraInfo]] = {}  # field of view -> (projection, camera)
        self._camera = self._make_camera()

    # ------------------------------------------------------------------ scene
    def _build(self) -> None:
        c = self._cid
        pb.resetSimulation(physicsClientId=c)
        release_freed_memory()
        pb.setGravity(0, 0, -9.81, physicsClientId=c)
        pb.setTimeStep(self.cfg.time_step, physicsClientId=c)
        # enableFileCaching=0: pybullet otherwise keeps every mesh file it ever parsed for the life of
        # the process (~0.3 MB per object mesh; the setting is process-wide), even across resetSimulation.
        pb.setPhysicsEngineParameter(numSolverIterations=self.cfg.solver_iterations, deterministicOverlappingPairs=1,
                                     enableFileCaching=0, physicsClientId=c)
        root = objects.data_root()
        self._builds = getattr(self, "_builds", 0) + 1
        self._textures: dict[int, int] = {}  # bank index -> pybullet texture id
        self._object_shapes: dict[int, tuple[int, int]] = {}  # object id -> (collision, visual) shapes
        # Floor: an infinite collision plane with a tessellated visual grid whose UVs repeat
        # every 0.5 m (TinyRenderer maps textures affinely per triangle, which warps textures
        # on plane.urdf's few huge triangles).
        self.floor = pb.createMultiBody(
            0, pb.createCollisionShape(pb.GEOM_PLANE, physicsClientId=c),
            pb.createVisualShape(pb.GEOM_MESH, **_floor_visual_args(), physicsClientId=c),
            [0, 0, FLOOR_Z], physicsClientId=c)
        ped_half = (0.12, 0.12, -FLOOR_Z / 2)
        self.pedestal = pb.createMultiBody(
            0, pb.createCollisionShape(pb.GEOM_BOX, halfExtents=ped_half, physicsClientId=c),
            pb.createVisualShape(pb.GEOM_BOX, halfExtents=ped_half, physicsClientId=c),
            [0, 0, FLOOR_Z / 2], physicsClientId=c)
        # Same links, joints and collision meshes as pybullet_data's SDF; visuals carry UVs.
        self.arm = pb.loadSDF(str(uv_arm_sdf(root, self.bank.cache_dir)), physicsClientId=c)[0]
        if self._ik is None:  # the IK copy holds no textures or objects: loaded once, never rebuilt
            self._ik = ArmIK(root / "kuka_iiwa" / "kuka_with_gripper2.sdf")
        pb.resetBasePositionAndOrientation(self.arm, [0, 0, 0], [0, 0, 0, 1], physicsClientId=c)
        self._arm_visual_links = sorted({v[1] for v in pb.getVisualShapeData(self.arm, physicsClientId=c)})
        self._movable = [j for j in range(pb.getNumJoints(self.arm, physicsClientId=c))
                         if pb.getJointInfo(self.arm, j, physicsClientId=c)[2] != pb.JOINT_FIXED]
        info = [pb.getJointInfo(self.arm, j, physicsClientId=c) for j in self._movable]
        self.arm_limits = np.array([[info[j][8], info[j][9]] for j in ARM_JOINTS])

        # Tray: a collision-only body with traybox.urdf's boxes, plus visual-only copies of the
        # same boxes at a few scales, so renders can jitter the tray size without touching
        # physics.  (traybox's own mesh is several OBJ groups that pybullet only partly recolours.)
        col = pb.createCollisionShapeArray(
            [pb.GEOM_BOX] * len(TRAY_BOXES), halfExtents=[b[0] for b in TRAY_BOXES],
            collisionFramePositions=[b[1] for b in TRAY_BOXES],
            collisionFrameOrientations=[pb.getQuaternionFromEuler(b[2]) for b in TRAY_BOXES], physicsClientId=c)
        self.tray = pb.createMultiBody(0, col, -1, TRAY_POS, physicsClientId=c)
        # pybullet draws collision shapes of bodies without visuals; alpha 0 hides them.
        pb.changeVisualShape(self.tray, -1, rgbaColor=[1, 1, 1, 0], physicsClientId=c)
        scales = [1.0] + ([1.0 - self.cfg.jitter_scale, 1.0 - self.cfg.jitter_scale / 2,
                           1.0 + self.cfg.jitter_scale / 2, 1.0 + self.cfg.jitter_scale]
                          if self.cfg.jitter_scale > 0 else [])
        self._tray_visuals = [self._tray_visual_body(s, self._parked(i)) for i, s in enumerate(scales)]
        pb.resetBasePositionAndOrientation(self._tray_visuals[0], TRAY_POS, [0, 0, 0, 1], physicsClientId=c)
        self.tray_visual = self._tray_visuals[0]

        half = [s / 2 for s in DIVIDER_SIZE]
        self.divider = pb.createMultiBody(
            0, pb.createCollisionShape(pb.GEOM_BOX, halfExtents=half, physicsClientId=c),
            pb.createVisualShape(pb.GEOM_BOX, halfExtents=half, physicsClientId=c),
            [TRAY_POS[0], 0, TRAY_BOTTOM_Z + half[2]], physicsClientId=c)

        self.tool_offset = self._measure_tool_offset()
        self.home_tcp = np.array([TRAY_POS[0], 0.0, TRAY_BOTTOM_Z + 0.30])
        self.home_q = self.solve_ik(self.home_tcp, 0.0, rest=[0.0, 0.4, 0.0, -1.6, 0.0, 1.1, 0.0], iterations=30)
        self._reset_arm_joints(self.home_q)
        if self._episode is not None:
            self._episode.object_uids = []

    def scene_stats(self) -> dict[str, int]:
        """What the pybullet scene holds now (bounded across resets; see `reset`)."""
        return {"bodies": pb.getNumBodies(physicsClientId=self._cid), "textures": len(self._textures),
                "object_shapes": len(self._object_shapes), "builds": self._builds}

    def _tray_visual_body(self, scale: float, pos) -> int:
        """Tray look as one link per box (bottom + 4 walls), so each can be painted."""
        c = self._cid
        vis = [pb.createVisualShape(pb.GEOM_BOX, halfExtents=[h * scale for h in b[0]],
                                    visualFramePosition=[v * scale for v in b[1]] if k == 0 else [0, 0, 0],
                                    physicsClientId=c)
               for k, b in enumerate(TRAY_BOXES)]
        walls = TRAY_BOXES[1:]
        n = len(walls)
        return pb.createMultiBody(
            baseMass=0, baseCollisionShapeIndex=-1, baseVisualShapeIndex=vis[0], basePosition=pos,
            baseInertialFramePosition=[0, 0, 0], linkMasses=[0] * n, linkCollisionShapeIndices=[-1] * n,
            linkVisualShapeIndices=vis[1:], linkPositions=[[v * scale for v in b[1]] for b in walls],
            linkOrientations=[pb.getQuaternionFromEuler(b[2]) for b in walls],
            linkInertialFramePositions=[[0, 0, 0]] * n, linkInertialFrameOrientations=[[0, 0, 0, 1]] * n,
            linkParentIndices=[0] * n, linkJointTypes=[pb.JOINT_FIXED] * n, linkJointAxis=[[0, 0, 1]] * n,
            physicsClientId=c)

    @staticmethod
    def _parked(i: int) -> list[float]:
        return [50.0 + 5 * i, 50.0, -50.0]  # far outside the camera frustum

    def _measure_tool_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """Flange -> TCP: centred between the fingertips, 1 cm above their lowest point, so
        gripper_height ~ fingertip clearance + 1 cm.  Measured on the model, gripper pointing down."""
        c = self._cid
        self.tool_offset = (np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))
        self._reset_arm_joints(self.solve_ik([TRAY_POS[0], 0.0, 0.3], 0.0, rest=[0.0, 0.4, 0.0, -1.6, 0.0, 1.1, 0.0],
                                             iterations=30))
        flange = pb.getLinkState(self.arm, FLANGE_LINK, computeForwardKinematics=True, physicsClientId=c)
        tips = [np.array(pb.getLinkState(self.arm, j, computeForwardKinematics=True, physicsClientId=c)[4])
                for j in FINGERTIP_JOINTS]
        lowest = min(pb.getAABB(self.arm, j, physicsClientId=c)[0][2] for j in FINGERTIP_JOINTS)
        tcp = (tips[0] + tips[1]) / 2
        tcp[2] = lowest + 0.01
        inv_pos, inv_orn = pb.invertTransform(flange[4], flange[5])
        mid, _ = pb.multiplyTransforms(inv_pos, inv_orn, tcp.tolist(), [0, 0, 0, 1])
        return np.array(mid), np.array([0.0, 0.0, 0.0, 1.0])

    def _make_camera(self, fov_deg: float | None = None) -> CameraInfo:
        """The camera (and its pybullet matrices) at the configured field of view, or a narrower `fov_deg` of the
        same camera; the configured one is the world's camera, other views are kept for `render(fov_deg=...)`."""
        cfg = self.cfg
        fov = cfg.camera_fov_deg if fov_deg is None else fov_deg
        self._view = pb.computeViewMatrix(cfg.camera_eye, cfg.camera_target, [0, 0, 1], physicsClientId=self._cid)
        proj = pb.computeProjectionMatrixFOV(fov, 1.0, cfg.camera_near, cfg.camera_far, physicsClientId=self._cid)
        n = cfg.image_size
        f = (n / 2) / math.tan(math.radians(fov) / 2)
        c = (n - 1) / 2  # OpenCV: pixel centres at integer coordinates
        K = np.array([[f, 0, c], [0, f, c], [0, 0, 1]])
        view_gl = np.array(self._view).reshape(4, 4).T  # pybullet matrices are column-major
        extr = np.diag([1.0, -1.0, -1.0, 1.0]) @ view_gl  # OpenGL camera (-z forward) -> OpenCV
        self._views[fov] = (proj, CameraInfo(n, n, K, extr, cfg.camera_near, cfg.camera_far))
        return self._views[fov][1]

    @property
    def camera(self) -> CameraInfo:
        return self._camera

    @property
    def base_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Pose of the robot base link frame (lbr_link_0) in the world: (xyz, quat xyzw)."""
        com_pos, com_orn = pb.getBasePositionAndOrientation(self.arm, physicsClientId=self._cid)
        # pybullet reports the base's inertial frame; undo the link's local inertial offset.
        info = pb.getDynamicsInfo(self.arm, -1, physicsClientId=self._cid)
        inv_pos, inv_orn = pb.invertTransform(info[3], info[4])
        pos, orn = pb.multiplyTransforms(com_pos, com_orn, inv_pos, inv_orn)
        return np.array(pos), np.array(orn)

    def to_base_frame(self, pos, quat) -> tuple[np.ndarray, np.ndarray]:
        """A world-frame pose expressed in the robot base frame (what the driver reports)."""
        base_pos, base_orn = self.base_pose
        inv_pos, inv_orn = pb.invertTransform(base_pos.tolist(), base_orn.tolist())
        p, q = pb.multiplyTransforms(inv_pos, inv_orn, list(map(float, pos)), list(map(float, quat)))
        return np.array(p), np.array(q)

    @property
    def tray_bottom_z(self) -> float:
        return TRAY_BOTTOM_Z

    @property
    def episode_seed(self) -> int | None:
        return None if self._episode is None else self._episode.seed

    @property
    def object_ids(self) -> list[int]:
        """Dataset ids (random_urdfs NNN) of this episode's objects."""
        return [] if self._episode is None else list(self._episode.object_ids)

    def rebuild(self) -> None:
        """A fresh pybullet scene (resetSimulation, everything loaded again), so the next reset(seed) does not
        depend on what this client ran before (pybullet's state after a reset carries ~1e-7 of its history)."""
        self._episode = None
        self._build()

    def close(self) -> None:
        if self._cid >= 0:
            pb.disconnect(physicsClientId=self._cid)
            if self._ik is not None:
                self._ik.close()
            self._cid = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: pybullet may already be gone
            pass

    # ---------------------------------------------------------------- episodes
    def reset(self, seed: int, object_ids: list[int] | None = None) -> None:
        """New episode: divider position, `num_objects` objects from the split dropped into the tray.

        `object_ids` overrides the random draw (ids must exist; they need not be in the split).
        """
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        c = self._cid
        if len(self._textures) > self.cfg.max_loaded_textures \
                or len(self._object_shapes) > self.cfg.max_object_shapes:
            self._build()  # pybullet cannot unload textures or shapes; a fresh scene frees them
        rng = np.random.default_rng([int(seed), 0xB1A5])
        if object_ids is None:
            chosen = [int(i) for i in rng.choice(self._object_pool, self.cfg.num_objects, replace=False)]
        else:
            chosen = [int(i) for i in object_ids]
        for i in chosen:  # validate before touching the scene
            objects.urdf_path(i)
        if self._episode is not None:
            for uid in self._episode.object_uids:
                pb.removeBody(uid, physicsClientId=c)

        # Divider: across the tray (along y or x), offset randomly from the centre.
        along_y = rng.random() < 0.5
        offset = rng.uniform(-0.12, 0.12)
        yaw = 0.0 if along_y else math.pi / 2
        pos = [TRAY_POS[0] + (offset if along_y else 0.0), TRAY_POS[1] + (0.0 if along_y else offset),
               TRAY_BOTTOM_Z + DIVIDER_SIZE[2] / 2]
        pb.resetBasePositionAndOrientation(self.divider, pos, pb.getQuaternionFromEuler([0, 0, yaw]),
                                           physicsClientId=c)

        self._reset_arm_joints(self.home_q)
        self.set_gripper(True)
        self._hold_arm_targets(self.home_q)
        uids = []
        for k, obj_id in enumerate(chosen):
            x, y = rng.uniform(-0.13, 0.13, size=2)
            orn = pb.getQuaternionFromEuler(rng.uniform(-math.pi, math.pi, size=3).tolist())
            uids.append(self._load_object(obj_id, [TRAY_POS[0] + x, TRAY_POS[1] + y,
                                                   TRAY_BOTTOM_Z + 0.06 + 0.05 * k], orn))
        self._episode = _Episode(int(seed), chosen, uids)
        self._rebuild_seg_lut()
        self.step_physics(self.cfg.settle_steps)
        # Per-episode object identity (canonical look): a bank texture and a tint per object, drawn
        # like the object textures of randomized renders (which paired canonical renders keep).
        pal = self._palette(False)
        self._episode.identity = [(pal[int(rng.integers(len(pal)))], tuple(rng.uniform(0.2, 1.0, 3)))
                                  for _ in uids]

    def _palette(self, held_out: bool) -> list[int]:
        ep = self._require_episode()
        if held_out not in ep.palette:
            rng = np.random.default_rng([ep.seed, 0x7E47, int(held_out)])
            pool = self.bank.indices(held_out)
            ep.palette[held_out] = [pool.start + int(i) for i in
                                    rng.choice(len(pool), min(self.cfg.episode_textures, len(pool)), replace=False)]
        return ep.palette[held_out]

    def _load_object(self, object_id: int, pos, orn) -> int:
        """Object body with the URDF's mesh (plus UVs) and mass, but a collision hull of at most
        OBJECT_HULL_POINTS vertices (the full hulls of hundreds of points made physics ~2x slower).

        Memory: pybullet leaks every vertex list it is handed and frees shapes only on
        resetSimulation (removeBody keeps them; removeCollisionShape refuses a shape a removed
        body used).  So each object id gets one collision and one visual shape per scene build,
        shared by all its bodies; the hull list is built once per process
        (objects.object_hull_vertices) and the visual mesh goes in as a file
        (objects.object_visual_obj); `reset` rebuilds the scene past `max_object_shapes`."""
        c = self._cid
        model = objects.object_model(object_id)
        shapes = self._object_shapes.get(object_id)
        if shapes is None:
            col = pb.createCollisionShape(pb.GEOM_MESH, vertices=objects.object_hull_vertices(object_id),
                                          physicsClientId=c)
            path = objects.object_visual_obj(object_id, self.bank.cache_dir)
            vis = pb.createVisualShape(pb.GEOM_MESH, fileName=str(path), physicsClientId=c)
            if col < 0 or vis < 0:
                raise RuntimeError(f"pybullet could not create the shapes of object {object_id} ({path})")
            shapes = self._object_shapes[object_id] = (col, vis)
        uid = pb.createMultiBody(model.mass, shapes[0], shapes[1], pos, orn, physicsClientId=c)
        pb.changeDynamics(uid, -1, lateralFriction=model.lateral_friction, physicsClientId=c)
        return uid

    def _require_episode(self) -> _Episode:
        if self._episode is None:
            raise RuntimeError("GraspWorld.reset(seed) must be called before this")
        return self._episode

    def _rebuild_seg_lut(self) -> None:
        ep = self._require_episode()
        bodies = {self.floor: classes.BACKGROUND, self.pedestal: classes.BACKGROUND, self.arm: classes.ARM,
                  self.tray: classes.TRAY, self.divider: classes.DIVIDER}
        bodies.update({v: classes.TRAY for v in self._tray_visuals})
        bodies.update({u: classes.OBJECT for u in ep.object_uids})
        lut = np.zeros(max(bodies) + 2, dtype=np.uint8)  # index uid+1 so "nothing" (-1) -> 0
        for uid, cls in bodies.items():
            lut[uid + 1] = cls
        self._seg_lut = lut

    # ------------------------------------------------------------------ robot
    def _reset_arm_joints(self, q7) -> None:
        c = self._cid
        for j, v in zip(ARM_JOINTS, q7):
            pb.resetJointState(self.arm, j, float(v), physicsClientId=c)
        pb.resetJointState(self.arm, GRIPPER_BASE_JOINT, 0.0, physicsClientId=c)
        pb.resetJointState(self.arm, FINGER_JOINTS[0], -FINGER_OPEN, physicsClientId=c)
        pb.resetJointState(self.arm, FINGER_JOINTS[1], FINGER_OPEN, physicsClientId=c)
        for j in FINGERTIP_JOINTS:
            pb.resetJointState(self.arm, j, 0.0, physicsClientId=c)

    def _hold_arm_targets(self, q7, max_velocity: float = 2.0) -> None:
        c = self._cid
        # pybullet's saveState/restoreState keeps positions and velocities but not motor targets:
        # remembered here so a snapshot can re-apply them (rcan_sim.env.GraspEnv.snapshot).
        self._arm_targets = (np.array(q7, dtype=np.float64), float(max_velocity))
        for j, v in zip(ARM_JOINTS, q7):
            pb.setJointMotorControl2(self.arm, j, pb.POSITION_CONTROL, targetPosition=float(v), targetVelocity=0,
                                     force=ARM_FORCE, maxVelocity=max_velocity, positionGain=ARM_POSITION_GAIN,
                                     velocityGain=1.0, physicsClientId=c)
        pb.setJointMotorControl2(self.arm, GRIPPER_BASE_JOINT, pb.POSITION_CONTROL, targetPosition=0.0,
                                 force=ARM_FORCE, physicsClientId=c)

    def joint_positions(self) -> np.ndarray:
        """The 7 arm joint angles (rad), in `joint_names` order."""
        return np.array([s[0] for s in pb.getJointStates(self.arm, ARM_JOINTS, physicsClientId=self._cid)])

    def joint_velocities(self) -> np.ndarray:
        return np.array([s[1] for s in pb.getJointStates(self.arm, ARM_JOINTS, physicsClientId=self._cid)])

    def set_arm_joint_targets(self, q7, max_velocity: float = 2.0) -> None:
        """Position-control targets for the 7 arm joints (clipped to the joint limits)."""
        q = np.asarray(q7, dtype=np.float64)
        if q.shape != (7,) or not np.isfinite(q).all():
            raise ValueError(f"arm joint targets must be 7 finite numbers, got {q7!r}")
        self._hold_arm_targets(np.clip(q, self.arm_limits[:, 0], self.arm_limits[:, 1]), max_velocity)

    def set_gripper(self, open: bool) -> None:
        """Command the fingers open or closed (they move during the following physics steps)."""
        c = self._cid
        angle = FINGER_OPEN if open else 0.0
        pb.setJointMotorControl2(self.arm, FINGER_JOINTS[0], pb.POSITION_CONTROL, targetPosition=-angle,
                                 force=FINGER_FORCES[0], physicsClientId=c)
        pb.setJointMotorControl2(self.arm, FINGER_JOINTS[1], pb.POSITION_CONTROL, targetPosition=angle,
                                 force=FINGER_FORCES[1], physicsClientId=c)
        for j in FINGERTIP_JOINTS:
            pb.setJointMotorControl2(self.arm, j, pb.POSITION_CONTROL, targetPosition=0.0, force=TIP_FORCE,
                                     physicsClientId=c)
        self._gripper_open = bool(open)

    def gripper_is_open(self) -> bool:
        """The commanded gripper state (the paper's binary aperture indicator)."""
        return self._gripper_open

    def save_state(self) -> "WorldSnapshot":
        """Everything the physics of the current episode depends on: pybullet's in-memory state plus the
        motor targets it does not keep.  Valid until the next reset(); free it with release_state()."""
        ep = self._require_episode()
        q, v = self._arm_targets
        return WorldSnapshot(pb.saveState(physicsClientId=self._cid), ep.seed, tuple(ep.object_uids), q.copy(), v,
                             self._gripper_open)

    def restore_state(self, snap: "WorldSnapshot") -> None:
        """Put the scene back into `snap` (taken in this episode) and re-apply its motor targets."""
        ep = self._require_episode()
        if (snap.seed, snap.object_uids) != (ep.seed, tuple(ep.object_uids)):
            raise RuntimeError("snapshot belongs to another episode (reset() invalidates snapshots)")
        pb.restoreState(stateId=snap.state_id, physicsClientId=self._cid)
        self._hold_arm_targets(snap.arm_targets, snap.arm_max_velocity)
        self.set_gripper(snap.gripper_open)

    def release_state(self, snap: "WorldSnapshot") -> None:
        pb.removeState(snap.state_id, physicsClientId=self._cid)

    def scene_state(self) -> dict[str, np.ndarray]:
        """The scene as plain numbers (object poses, every movable joint's angle): what a render needs."""
        c = self._cid
        ep = self._require_episode()
        poses = np.array([np.concatenate(pb.getBasePositionAndOrientation(u, physicsClientId=c))
                          for u in ep.object_uids], dtype=np.float64)
        joints = np.array([s[0] for s in pb.getJointStates(self.arm, self._movable, physicsClientId=c)])
        return {"seed": np.int64(ep.seed), "object_ids": np.array(ep.object_ids, dtype=np.int32),
                "object_poses": poses, "joints": joints, "gripper_open": np.bool_(self._gripper_open)}

    def set_scene_state(self, state: dict) -> None:
        """Place a scene recorded by scene_state() (resetting the episode only when seed or objects differ),
        with zero velocities.  For rendering stored states; physics from here is not the recorded run's."""
        c = self._cid
        ids = [int(i) for i in state["object_ids"]]
        if self._episode is None or self._episode.seed != int(state["seed"]) or self._episode.object_ids != ids:
            # reset(seed) draws the objects from the seed before the divider and looks, so passing the ids
            # would change the scene: only a record with other objects than its seed's needs them.
            self.reset(int(state["seed"]))
            if self._episode.object_ids != ids:
                self.reset(int(state["seed"]), ids)
        for uid, pose in zip(self._episode.object_uids, np.asarray(state["object_poses"])):
            pb.resetBasePositionAndOrientation(uid, pose[:3].tolist(), pose[3:].tolist(), physicsClientId=c)
        for j, angle in zip(self._movable, np.asarray(state["joints"])):
            pb.resetJointState(self.arm, j, float(angle), physicsClientId=c)
        self._gripper_open = bool(state["gripper_open"])

    def step_physics(self, n: int = 1) -> None:
        for _ in range(int(n)):
            pb.stepSimulation(physicsClientId=self._cid)

    def flange_pose(self) -> tuple[np.ndarray, np.ndarray]:
        s = pb.getLinkState(self.arm, FLANGE_LINK, computeForwardKinematics=True, physicsClientId=self._cid)
        return np.array(s[4]), np.array(s[5])

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """Tool centre point (between the fingertips) in the world frame: (xyz, quat xyzw)."""
        pos, orn = self.flange_pose()
        p, q = pb.multiplyTransforms(pos.tolist(), orn.tolist(), self.tool_offset[0].tolist(),
                                     self.tool_offset[1].tolist())
        return np.array(p), np.array(q)

    def gripper_yaw(self) -> float:
        """Rotation of the top-down gripper about the vertical (rad)."""
        _, orn = self.flange_pose()
        m = np.array(pb.getMatrixFromQuaternion(orn.tolist())).reshape(3, 3)
        # The top-down flange's x axis is the base x axis turned by pi (see rcan_sim.ik.TOP_DOWN).
        return math.remainder(math.atan2(m[1, 0], m[0, 0]) + math.pi, 2 * math.pi)

    def gripper_height(self) -> float:
        """TCP height above the tray bottom (m), the paper's g_height."""
        return float(self.ee_pose()[0][2] - TRAY_BOTTOM_Z)

    top_down_orientation = staticmethod(top_down_orientation)

    def solve_ik(self, tcp_pos, yaw: float, rest=None, iterations: int = 20, tolerance: float = 5e-4) -> np.ndarray:
        """7 arm joint angles putting the TCP at `tcp_pos` with the gripper vertical at `yaw`, starting
        from `rest` (default: the current joint angles).  Solved on a kinematic copy of the arm
        (rcan_sim.ik.ArmIK), so the live arm is untouched."""
        rest = rest if rest is not None else self.joint_positions()
        return self._ik.solve(tcp_pos, yaw, rest, self.tool_offset[0], iterations, tolerance)

    # ---------------------------------------------------------------- objects
    def object_poses(self) -> list[tuple[np.ndarray, np.ndarray]]:
        ep = self._require_episode()
        out = []
        for uid in ep.object_uids:
            p, q = pb.getBasePositionAndOrientation(uid, physicsClientId=self._cid)
            out.append((np.array(p), np.array(q)))
        return out

    def object_heights(self) -> np.ndarray:
        """Height of each object's base above the tray bottom (m)."""
        return np.array([p[2] - TRAY_BOTTOM_Z for p, _ in self.object_poses()])

    def object_aabbs(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [tuple(np.array(v) for v in pb.getAABB(u, physicsClientId=self._cid))
                for u in self._require_episode().object_uids]

    def divider_segment(self) -> tuple[np.ndarray, np.ndarray]:
        """End points (x, y) of the divider's centre line, for scripted grasp planning."""
        pos, orn = pb.getBasePositionAndOrientation(self.divider, physicsClientId=self._cid)
        yaw = pb.getEulerFromQuaternion(orn)[2]
        half = DIVIDER_SIZE[1] / 2 * np.array([-math.sin(yaw), math.cos(yaw)])  # box length runs along local y
        return np.array(pos[:2]) - half, np.array(pos[:2]) + half

    def held_objects(self) -> list[int]:
        """Indices of objects touching the gripper and touching neither tray, divider nor floor."""
        c = self._cid
        held = []
        for i, uid in enumerate(self._require_episode().object_uids):
            grip = [pt for pt in pb.getContactPoints(self.arm, uid, physicsClientId=c) if pt[3] in GRIPPER_LINKS]
            if not grip:
                continue
            if any(pb.getContactPoints(b, uid, physicsClientId=c) for b in (self.tray, self.divider, self.floor)):
                continue
            held.append(i)
        return held

    def physics_state(self) -> dict[str, np.ndarray]:
        """Poses/velocities of every dynamic thing (for tests that rendering changes nothing)."""
        c = self._cid
        bodies = [self.arm, self.tray, self.divider] + list(self._require_episode().object_uids)
        poses = []
        for b in bodies:
            p, q = pb.getBasePositionAndOrientation(b, physicsClientId=c)
            v, w = pb.getBaseVelocity(b, physicsClientId=c)
            poses.append(np.concatenate([p, q, v, w]))
        joints = np.array([s[:2] for s in pb.getJointStates(self.arm, self._movable, physicsClientId=c)])
        return {"bodies": np.array(poses), "joints": joints}

    # -------------------------------------------------------------- rendering
    def _texture_id(self, index: int) -> int:
        tid = self._textures.get(index)
        if tid is None:
            tid = pb.loadTexture(str(self.bank.png_path(index)), physicsClientId=self._cid)
            if tid < 0:
                raise RuntimeError(f"pybullet could not load texture {self.bank.png_path(index)}")
            self._textures[index] = tid
        return tid

    def _capture(self, light: dict, full: bool, proj=None):
        """One TinyRenderer capture through `proj` (default: the world's own camera)."""
        n = self.cfg.image_size
        flags = 0 if full else pb.ER_NO_SEGMENTATION_MASK
        proj = self._views[self.cfg.camera_fov_deg][0] if proj is None else proj
        _, _, rgba, zbuf, seg = pb.getCameraImage(
            n, n, self._view, proj, renderer=pb.ER_TINY_RENDERER, shadow=int(self.cfg.shadows),
            flags=flags, physicsClientId=self._cid, **light)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(n, n, 4)[..., :3].copy()
        if not full:
            return rgb, None, None
        near, far = self.cfg.camera_near, self.cfg.camera_far
        z = np.asarray(zbuf, dtype=np.float64).reshape(n, n)
        depth = (far * near / (far - (far - near) * z)).astype(np.float32)
        labels = self._seg_lut[np.clip(np.asarray(seg).reshape(n, n), -1, len(self._seg_lut) - 2) + 1]
        return rgb, depth, labels

    def render(self, domain: str = "canonical", randomization_seed: int = 0, labels: bool = True,
               fov_deg: float | None = None) -> Frame:
        """Render the current state in `domain`; the randomization is a function of
        (episode seed, randomization_seed), and the physics state is left untouched.
        labels=False skips the segmentation mask and depth (a camera image only: cheaper).
        fov_deg renders through another field of view of the same camera (a policy trained on a narrower view)."""
        if fov_deg is not None and fov_deg not in self._views:
            require(5 <= fov_deg <= 120, "fov_deg", "must be in [5, 120]")
            self._make_camera(fov_deg)
        proj, camera = self._views[self.cfg.camera_fov_deg if fov_deg is None else fov_deg]
        spec = domain_spec(domain)
        self._require_episode()
        rng = self._render_rng(randomization_seed)
        if spec.canonical:
            domains.apply_canonical(self, objects_too=True)
            light = domains.light(spec, rng)
        else:
            light = domains.apply_random(self, spec, rng)
        restore = domains.jitter(self, rng, TRAY_POS) if spec.jitter else None
        try:
            rgb, depth, seg = self._capture(light, full=labels, proj=proj)
        finally:
            if restore:
                restore()
        return Frame(rgb, depth, seg, camera)

    def render_pair(self, randomization_seed: int = 0, domain: str = "randomized", source: bool = True) -> PairedFrame:
        """Randomized then canonical render of the frozen state, same jitter for both; the
        canonical render keeps the objects' randomized textures (paper 4.1).  source=False
        skips the randomized capture (randomized_rgb is None) for callers that already hold
        `render(domain, randomization_seed)`, which is the same image."""
        spec = domain_spec(domain)
        if spec.canonical:
            raise ValueError("render_pair needs a randomized source domain, not 'canonical'")
        self._require_episode()
        rng = self._render_rng(randomization_seed)
        light = domains.apply_random(self, spec, rng)
        restore = domains.jitter(self, rng, TRAY_POS) if spec.jitter else None
        try:
            rand_rgb = self._capture(light, full=False)[0] if source else None
            domains.apply_canonical(self, objects_too=False)
            canon_rgb, depth, seg = self._capture(dict(CANON_LIGHT), full=True)
        finally:
            if restore:
                restore()
        return PairedFrame(rand_rgb, canon_rgb, seg, depth, self._camera)

    def _render_rng(self, randomization_seed: int) -> np.random.Generator:
        if isinstance(randomization_seed, bool) or not isinstance(randomization_seed, (int, np.integer)) \
                or randomization_seed < 0:
            raise ValueError(f"randomization_seed must be a non-negative int, got {randomization_seed!r}")
        return np.random.default_rng([self._require_episode().seed, int(randomization_seed), 0x4E4D])
