"""`rcan render-grid`: a PNG grid of paired renders, one row per step of a scripted episode.

Columns: randomized | canonical | segmentation (colourised) | depth (near = bright).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from rcan_common.config import parse_cli, require
from rcan_common.classes import colorize
from rcan_sim.env import EnvConfig, GraspEnv
from rcan_sim.scripted import ScriptedGraspPolicy
from rcan_sim.world import PairedFrame, WorldConfig

Source = Literal["randomized", "held-out", "mild", "medium", "heavy"]


@dataclass
class RenderGridConfig:
    """Write a randomized/canonical/segmentation/depth grid for a few steps of one episode."""

    out: Path = Path("docs/sim_grid.png")
    """PNG to write."""
    image_size: int = 128
    """Render size of each tile in pixels."""
    rows: int = 4
    """Number of rows (snapshots)."""
    steps_between: int = 2
    """Scripted-policy steps between snapshots."""
    seed: int = 0
    """Episode seed."""
    source: Source = "randomized"
    """Domain of the randomized column."""
    split: Literal["train", "test"] = "train"
    """Object split."""

    def __post_init__(self) -> None:
        require(16 <= self.image_size <= 1024, "image_size", "must be in 16..1024")
        require(1 <= self.rows <= 16, "rows", "must be in 1..16")
        require(0 <= self.steps_between <= 10, "steps_between", "must be in 0..10")
        require(self.seed >= 0, "seed", "must be >= 0")
        require(str(self.out).lower().endswith(".png"), "out", "must end in .png")


def depth_image(depth: np.ndarray) -> np.ndarray:
    """Metres -> grey uint8 RGB, near bright, scaled to the frame's own range."""
    lo, hi = float(np.percentile(depth, 1)), float(np.percentile(depth, 99))
    g = 1.0 - np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def pair_row(pair: PairedFrame, gap: int = 2) -> np.ndarray:
    tiles = [pair.randomized_rgb, pair.canonical_rgb, colorize(pair.segmentation), depth_image(pair.depth)]
    h = tiles[0].shape[0]
    sep = np.full((h, gap, 3), 255, np.uint8)
    out = [tiles[0]]
    for t in tiles[1:]:
        out += [sep, t]
    return np.concatenate(out, axis=1)


def render_grid(cfg: RenderGridConfig) -> np.ndarray:
    env = GraspEnv(EnvConfig(world=WorldConfig(image_size=cfg.image_size, split=cfg.split)))
    policy = ScriptedGraspPolicy()
    obs, _ = env.reset(cfg.seed)
    rows, done = [], False
    try:
        for r in range(cfg.rows):
            rows.append(pair_row(env.world.render_pair(r, domain=cfg.source)))
            for _ in range(cfg.steps_between):
                if done:
                    break
                obs, _, terminated, truncated, _ = env.step(policy(obs, env))
                done = terminated or truncated
    finally:
        env.close()
    sep = np.full((2, rows[0].shape[1], 3), 255, np.uint8)
    grid = [rows[0]]
    for row in rows[1:]:
        grid += [sep, row]
    return np.concatenate(grid, axis=0)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(RenderGridConfig, argv, description=RenderGridConfig.__doc__)
    from PIL import Image

    from rcan_common.io import atomic_write_bytes, ensure_writable_dir

    ensure_writable_dir(Path(cfg.out).parent or Path("."))
    grid = render_grid(cfg)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG", optimize=True)
    atomic_write_bytes(cfg.out, buf.getvalue())
    print(f"wrote {cfg.out} ({grid.shape[1]}x{grid.shape[0]} px, {len(buf.getvalue()) // 1024} KiB): "
          "randomized | canonical | segmentation | depth")
    return 0
