"""Visual domains: what each render randomizes (paper 4.1 and 5.2).

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
"""
from __future__ import annotations

from dataclasses import dataclass

from rcan_common.domains import DOMAINS


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
