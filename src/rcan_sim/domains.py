"""Visual domains (paper 4.1 and 5.2): what each render randomizes, and the looks that apply it.

canonical  uniform colours for floor, tray, divider and each arm link (every link its own
           fixed colour); objects keep their textures; one fixed light; no jitter.
randomized RCAN's scheme (4.1): bank textures on floor, tray, divider, every arm link and
           every object; random light position/direction/colour; small arm/tray pose and
           tray size jitter.
heavy      the paper's heavy DR baseline, which "uses the same scheme used to train RCAN".
mild       5.2: tray texture, object texture and colour, arm colour (uniform per link),
           light direction and brightness, floor from 6 fixed "background images".
medium     mild plus a diverse mix of floor images (the whole bank).
held-out   like randomized but textures from the held-out part of the bank and lights
           from ranges training domains never sample (low sun, strong colour casts).

The names alone (DOMAINS) live in rcan_common.domains, which the robot side imports.

This module is all of 4.1's appearance: the canonical look (`apply_canonical`, CANON_*), the random
textures, tints and colours of the other domains (`apply_random`), their lights (`light`) and the
arm/tray pose and tray size jitter (`jitter`).  A look only changes visual properties, and the
jitter moves the arm base and the tray visual for one capture; rcan_sim.world.GraspWorld owns the
scene and calls these per render.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import pybullet as pb

from rcan_common.domains import DOMAINS

if TYPE_CHECKING:
    from rcan_sim.world import GraspWorld

# Canonical look (4.1): uniform colours, one fixed light.
CANON_FLOOR = (0.55, 0.55, 0.55)
CANON_PEDESTAL = (0.30, 0.30, 0.32)
CANON_TRAY = (0.80, 0.62, 0.35)
CANON_DIVIDER = (0.20, 0.35, 0.75)
# One fixed, distinct colour per arm visual (base, 7 links, gripper parts), paper 4.1.
CANON_ARM = (
    (0.90, 0.10, 0.10), (0.95, 0.55, 0.10), (0.95, 0.90, 0.15), (0.55, 0.85, 0.15),
    (0.10, 0.75, 0.35), (0.10, 0.80, 0.80), (0.15, 0.45, 0.90), (0.35, 0.20, 0.85),
    (0.70, 0.20, 0.85), (0.90, 0.25, 0.60), (0.60, 0.40, 0.25), (0.95, 0.95, 0.95),
    (0.40, 0.60, 0.55), (0.85, 0.65, 0.55), (0.25, 0.25, 0.25),
)
CANON_LIGHT = dict(lightDirection=(0.3, 0.6, 1.0), lightColor=(1.0, 1.0, 1.0), lightDistance=2.0,
                   lightAmbientCoeff=0.6, lightDiffuseCoeff=0.35, lightSpecularCoeff=0.05)
TRAY_LINKS = (-1, 0, 1, 2, 3)  # the tray visual's bottom and 4 walls


class DomainError(ValueError):
    """An unknown domain name."""


@dataclass(frozen=True)
class DomainSpec:
    """What a domain randomizes.  Every non-canonical domain textures the tray, divider and
    objects (objects also get a random tint); they differ in floor, arm, light and jitter."""

    name: str
    floor: str  # "canonical" | "fixed6" (six fixed backgrounds) | "bank"
    arm: str  # "canonical" | "color" (uniform colour per link) | "bank"
    light: str  # "fixed" | "direction_brightness" | "full" (position, direction, colour)
    jitter: bool  # arm/tray pose and tray size jitter
    held_out: bool  # draw textures and lights from the held-out ranges

    @property
    def canonical(self) -> bool:
        return self.name == "canonical"


_SPECS = {
    "canonical": DomainSpec("canonical", "canonical", "canonical", "fixed", False, False),
    "randomized": DomainSpec("randomized", "bank", "bank", "full", True, False),
    "heavy": DomainSpec("heavy", "bank", "bank", "full", True, False),
    "held-out": DomainSpec("held-out", "bank", "bank", "full", True, True),
    "mild": DomainSpec("mild", "fixed6", "color", "direction_brightness", False, False),
    "medium": DomainSpec("medium", "bank", "color", "direction_brightness", False, False),
}


def domain_spec(name: str) -> DomainSpec:
    """The spec of domain `name`; unknown names raise DomainError listing the valid ones."""
    try:
        return _SPECS[name]
    except (KeyError, TypeError):
        raise DomainError(f"unknown domain {name!r}; expected one of {DOMAINS}") from None


# ---------------------------------------------------------------------------------------- looks


def _paint(world: "GraspWorld", body: int, link: int, rgb, texture: int = -1) -> None:
    pb.changeVisualShape(body, link, textureUniqueId=texture, rgbaColor=[*rgb, 1.0], physicsClientId=world._cid)


def apply_canonical(world: "GraspWorld", objects_too: bool) -> None:
    """The canonical look: uniform colours, every arm link its own; objects (when `objects_too`)
    get their episode's identity texture and tint."""
    _paint(world, world.floor, -1, CANON_FLOOR)
    _paint(world, world.pedestal, -1, CANON_PEDESTAL)
    for v in world._tray_visuals:
        for link in TRAY_LINKS:
            _paint(world, v, link, CANON_TRAY)
    _paint(world, world.divider, -1, CANON_DIVIDER)
    for k, link in enumerate(world._arm_visual_links):
        _paint(world, world.arm, link, CANON_ARM[k % len(CANON_ARM)])
    if objects_too:
        ep = world._require_episode()
        for uid, (tex, tint) in zip(ep.object_uids, ep.identity):
            _paint(world, uid, -1, tint, world._texture_id(tex))


def apply_random(world: "GraspWorld", spec: DomainSpec, rng: np.random.Generator) -> dict:
    """Assign textures/colours for a non-canonical `spec`, drawn from the episode's texture palette;
    returns the light keyword arguments for the capture."""
    assert not spec.canonical, "canonical renders use apply_canonical"
    ep = world._require_episode()
    pal = world._palette(spec.held_out)

    def tex() -> int:
        return world._texture_id(pal[int(rng.integers(len(pal)))])

    def tint(lo: float = 0.6) -> np.ndarray:
        return rng.uniform(lo, 1.0, 3)

    if spec.floor == "fixed6":  # six fixed "real camera" backgrounds (paper 5.2, mild)
        fixed = world.bank.indices(False)[:6]  # fewer with a small user folder
        _paint(world, world.floor, -1, (1, 1, 1), world._texture_id(fixed[int(rng.integers(len(fixed)))]))
        _paint(world, world.pedestal, -1, (1, 1, 1), world._texture_id(fixed[int(rng.integers(len(fixed)))]))
    else:
        _paint(world, world.floor, -1, tint(), tex())
        _paint(world, world.pedestal, -1, tint(), tex())
    tray_tex, tray_tint = tex(), tint()
    for v in world._tray_visuals:
        for link in TRAY_LINKS:
            _paint(world, v, link, tray_tint, tray_tex)
    _paint(world, world.divider, -1, tint(), tex())
    for link in world._arm_visual_links:
        if spec.arm == "bank":
            _paint(world, world.arm, link, tint(0.3), tex())
        else:
            _paint(world, world.arm, link, rng.uniform(0.05, 1.0, 3))
    for uid in ep.object_uids:
        _paint(world, uid, -1, tint(0.2), tex())
    return light(spec, rng)


def light(spec: DomainSpec, rng: np.random.Generator) -> dict:
    """The light of one render of `spec` (pybullet getCameraImage keyword arguments)."""
    if spec.light == "fixed":
        return dict(CANON_LIGHT)
    # Training lights come from above 30 deg elevation with mild colour; held-out lights are
    # low (10-30 deg) with a strong colour cast, ranges no training domain samples.
    elev = math.radians(rng.uniform(10, 30) if spec.held_out else rng.uniform(30, 90))
    azim = rng.uniform(-math.pi, math.pi)
    direction = (math.cos(elev) * math.cos(azim), math.cos(elev) * math.sin(azim), math.sin(elev))
    if spec.light == "direction_brightness":
        b = rng.uniform(0.6, 1.3)
        return dict(lightDirection=direction, lightColor=(1.0, 1.0, 1.0), lightDistance=2.0,
                    lightAmbientCoeff=0.6 * b, lightDiffuseCoeff=0.35 * b, lightSpecularCoeff=0.05)
    color = rng.uniform(0.55, 1.0, 3)
    if spec.held_out:
        color[int(rng.integers(3))] = rng.uniform(0.1, 0.45)
    return dict(lightDirection=direction, lightColor=tuple(color), lightDistance=rng.uniform(1.0, 4.0),
                lightAmbientCoeff=rng.uniform(0.3, 0.8), lightDiffuseCoeff=rng.uniform(0.2, 0.7),
                lightSpecularCoeff=rng.uniform(0.0, 0.3))


def jitter(world: "GraspWorld", rng: np.random.Generator, tray_pos) -> Callable[[], None]:
    """Move the arm base and swap in a tray visual of a random size at a jittered pose (`tray_pos`:
    the tray's home position) for one render; returns a function that puts everything back exactly."""
    c, cfg = world._cid, world.cfg
    j, yaw = cfg.jitter_position, math.radians(cfg.jitter_yaw_deg)
    arm_pose = pb.getBasePositionAndOrientation(world.arm, physicsClientId=c)
    arm_pos = np.array(arm_pose[0]) + rng.uniform(-j, j, 3) * (1, 1, 0.5)
    pb.resetBasePositionAndOrientation(world.arm, arm_pos.tolist(),
                                       pb.getQuaternionFromEuler([0, 0, rng.uniform(-yaw, yaw)]),
                                       physicsClientId=c)
    visuals = world._tray_visuals
    k = int(rng.integers(len(visuals)))
    vis = visuals[k]
    jittered = np.array(tray_pos) + np.append(rng.uniform(-j, j, 2), 0.0)
    pb.resetBasePositionAndOrientation(visuals[0], world._parked(0), [0, 0, 0, 1], physicsClientId=c)
    pb.resetBasePositionAndOrientation(vis, jittered.tolist(), pb.getQuaternionFromEuler([0, 0, rng.uniform(-yaw, yaw)]),
                                       physicsClientId=c)

    def restore() -> None:
        pb.resetBasePositionAndOrientation(world.arm, arm_pose[0], arm_pose[1], physicsClientId=c)
        pb.resetBasePositionAndOrientation(vis, world._parked(k), [0, 0, 0, 1], physicsClientId=c)
        pb.resetBasePositionAndOrientation(visuals[0], tray_pos, [0, 0, 0, 1], physicsClientId=c)

    return restore
