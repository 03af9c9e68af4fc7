"""`rcan train-generator`: train G (and D) on paired randomized/canonical frames.

A run lives in ``<runs_dir>/<name>/``::

    config.json          the full TrainConfig of the run
    command.txt          the exact command line(s) that produced it
    contract.json        the pre/post-processing contract the model is trained under
    checkpoints/         step-NNNNNN.safetensors + .json (see rcan_perception.checkpoint)
    metrics.csv          step, losses, throughput (every log_every steps)
    tb/                  TensorBoard events
    samples/step-NNNNNN.png   randomized | generated | canonical target | seg | seg target | depth | depth target
    eval.json            every held-out evaluation so far; metrics.json holds the latest
    train_info.json      wall time, hardware, software versions, frames seen

``--resume`` continues from the latest complete checkpoint; SIGTERM ends a run after the current
step with one (and without the final evaluation).  Batch order is a pure function
of (seed, step), and model/optimizer/RNG states are restored, so N steps in one go and
N/2 + resume-to-N give identical weights when ``--deterministic`` is set.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rcan_common.config import ConfigError, parse_cli, require, to_dict
from rcan_common.io import OutputError, atomic_write_json, ensure_writable_dir
from rcan_common.runlog import RunLog
from rcan_perception import checkpoint as ckpt
from rcan_perception.contract import GeneratorContract, canonical_to_unit, normalize_depth, normalize_image
from rcan_perception.data import DataError, Frames, batch_indices, concat_frames, load_frames, split_by_episode
from rcan_perception.losses import (LossWeights, depth_l2, discriminator_loss, generator_gan_loss, mpse,
                                    segmentation_l2)
from rcan_perception.metrics import EvalAccumulator
from rcan_perception.model import DiscriminatorConfig, Generator, GeneratorConfig, MultiScaleDiscriminator

# Fields that may differ between a run and its --resume without changing what is learned (test_data is only
# evaluated at the end: a finished run resumed with --steps at its last step adds that evaluation).
_RESUMABLE = {"resume", "steps", "max_minutes", "device", "cpu_bf16", "threads", "log_every", "sample_every",
              "eval_every", "checkpoint_every", "keep_checkpoints", "progress", "test_data"}


@dataclass
class TrainConfig:
    """Training of the RCAN generator G with its patch discriminator D."""

    data: tuple[Path, ...]
    """Training dataset directories (sharded HDF5 from `rcan datagen`); several are concatenated."""
    name: str = "generator"
    """Run name; everything is written to <runs_dir>/<name>/."""
    runs_dir: Path = Path("runs")
    """Parent directory of run directories."""
    eval_data: Path | None = None
    """Held-out dataset (e.g. `rcan datagen` with the test split); if unset, val_fraction of the training episodes is held out."""
    val_fraction: float = 0.05
    """Fraction of training episodes held out for evaluation when eval_data is unset."""
    max_frames: int = 0
    """Use at most this many training frames (0 = all)."""
    eval_frames: int = 512
    """Evaluate on at most this many held-out frames."""
    steps: int = 2000
    """Total optimisation steps (a resumed run continues up to this number)."""
    max_minutes: float = 0.0
    """Stop early (checkpoint + evaluation) after this much training wall time in this process; 0 = no limit."""
    batch_size: int = 16
    """Frames per step."""
    lr_g: float = 2e-4
    """Adam learning rate of G."""
    lr_d: float = 2e-4
    """Adam learning rate of D."""
    betas: tuple[float, float] = (0.5, 0.999)
    """Adam betas of both optimizers."""
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    """Generator architecture."""
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    """Discriminator architecture."""
    weights: LossWeights = field(default_factory=LossWeights)
    """Loss weights (paper: all 1)."""
    depth_range_m: tuple[float, float] | None = None
    """Depth (m) mapped to normalised 0..1; unset = the training data's min/max, widened to 5 cm steps."""
    seg_l2_on: Literal["softmax", "scores"] = "softmax"
    """Segmentation L2 target: softmax(scores) vs one-hot (default), or the raw scores regressed onto one-hot (no softmax saturation on rare classes)."""
    augment: bool = False
    """Photometric jitter of the randomized input only (per-image channel gains and offsets, i.e. extra light-colour randomization; not in the paper)."""
    test_data: Path | None = None
    """Optional second held-out set (e.g. `rcan datagen --split test`: unseen objects, textures and lights), evaluated at the end into metrics.json["test_split"]."""
    init_from: Path | None = None
    """Start G (and D, if it has one) from this checkpoint (a run directory = its latest, or a step-*.json) instead of random weights; optimizers start fresh.  An exported generator's weights (`models/generator_64.safetensors`, beside its JSON config) start G only; D starts fresh."""
    seed: int = 0
    """Seed of the initial weights, the batch order and the augmentation."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Training device (auto = CUDA when available)."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU; see cpu_bf16)."""
    cpu_bf16: bool = False
    """bf16 autocast on the CPU too (NOT default; a speed option for CPUs with native bfloat16, avx512_bf16 or AMX:
    1.56x the fp32 step at 128 px, batch 8, one thread, on this project's 2-core machine).  Weights, optimizer
    states, losses and the held-out evaluation stay float32; it changes the arithmetic, so a run may switch it on
    --resume but will not repeat the same bits."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms: bit-exact resume at some speed cost."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    log_every: int = 20
    """Steps between metrics.csv / TensorBoard rows."""
    sample_every: int = 250
    """Steps between PNG sample grids (0 = only at the end)."""
    eval_every: int = 500
    """Steps between held-out evaluations (0 = only at the end)."""
    checkpoint_every: int = 250
    """Steps between checkpoints (one is always written at the end)."""
    keep_checkpoints: int = 3
    """Newest checkpoints kept on disk."""
    resume: bool = False
    """Continue the run in <runs_dir>/<name>/ from its latest checkpoint."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path)):
            self.data = (Path(self.data),)
        self.data = tuple(Path(d) for d in self.data)
        require(len(self.data) >= 1, "data", "need at least one dataset directory")
        require(bool(self.name) and "/" not in self.name and self.name not in (".", ".."), "name",
                f"must be a plain directory name, got {self.name!r}")
        require(0 < self.val_fraction < 1, "val_fraction", "must be in (0, 1)")
        require(self.max_frames >= 0, "max_frames", "must be >= 0")
        require(self.eval_frames > 0, "eval_frames", "must be > 0")
        require(self.steps > 0, "steps", "must be > 0")
        require(self.max_minutes >= 0, "max_minutes", "must be >= 0")
        require(self.batch_size > 0, "batch_size", "must be > 0")
        require(self.lr_g > 0, "lr_g", "must be > 0")
        require(self.lr_d > 0, "lr_d", "must be > 0")
        require(all(0 <= b < 1 for b in self.betas), "betas", "must be in [0, 1)")
        if self.depth_range_m is not None:
            require(self.depth_range_m[1] > self.depth_range_m[0], "depth_range_m", "need min < max")
        require(self.threads >= 0, "threads", "must be >= 0")
        for name in ("log_every", "sample_every", "eval_every", "checkpoint_every"):
            require(getattr(self, name) >= 0, name, "must be >= 0")
        require(self.log_every > 0, "log_every", "must be > 0")
        require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.name


def _field_defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return to_dict(out)


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("invalid config field 'device': cuda requested but torch sees no GPU")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def hardware_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def data_depth_range(frames: Frames) -> tuple[float, float]:
    d = frames.depth[torch.isfinite(frames.depth)]
    lo = float(np.floor(float(d.min()) / 0.05) * 0.05)
    hi = float(np.ceil(float(d.max()) / 0.05) * 0.05)
    return (max(lo, 0.0), hi if hi > lo else lo + 0.05)


# ---------------------------------------------------------------- images
def depth_to_gray(depth01: torch.Tensor) -> torch.Tensor:
    return depth01.clamp(0, 1).expand(-1, 3, -1, -1)


def sample_grid(contract: GeneratorContract, frames: Frames, rgb: torch.Tensor, logits: torch.Tensor,
                depth: torch.Tensor) -> np.ndarray:
    """uint8 HxWx3 grid, one row per frame: randomized | generated | canonical | seg | seg target | depth | depth target."""
    palette = torch.tensor(contract.class_colors, dtype=torch.float32) / 255.0
    seg_pred = palette[logits.argmax(1).cpu()].permute(0, 3, 1, 2)
    seg_tgt = palette[frames.segmentation.long()].permute(0, 3, 1, 2)
    cols = [frames.randomized.float() / 255, canonical_to_unit(contract, rgb.float().cpu()),
            frames.canonical.float() / 255, seg_pred, seg_tgt, depth_to_gray(depth.float().cpu().clamp(0, 1)),
            depth_to_gray(normalize_depth(contract, frames.depth)[:, None])]
    rows = torch.cat([torch.cat(list(c), dim=2) for c in zip(*cols)], dim=1)  # (3, rows*H, cols*W)
    return (rows.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


def write_png(path: Path, image: np.ndarray) -> None:
    import io

    from PIL import Image

    from rcan_common.io import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(generator: Generator, contract: GeneratorContract, frames: Frames, device: torch.device,
             batch_size: int = 32) -> dict:
    """Held-out metrics of G (see rcan_perception.metrics), decoded exactly as the contract says."""
    was_training = generator.training
    generator.eval()
    acc = EvalAccumulator(contract.num_classes, object_class=1, class_names=contract.class_names)
    span = contract.depth_max_m - contract.depth_min_m
    for start in range(0, len(frames), batch_size):
        b = frames.select(torch.arange(start, min(start + batch_size, len(frames))))
        rgb, logits, depth = generator(normalize_image(contract, b.randomized).to(device))
        rgb01 = (canonical_to_unit(contract, rgb.float().cpu()) * 255 + 0.5).floor() / 255  # uint8 as deployed
        depth_m = contract.depth_min_m + depth.float().cpu()[:, 0].clamp(0, 1) * span
        acc.update(rgb01, b.canonical.float() / 255, logits.argmax(1).cpu(), b.segmentation,
                   depth_m, b.depth)
    generator.train(was_training)
    return acc.result()


# ---------------------------------------------------------------- training
class Trainer:
    """Owns models, optimizers and the run directory; :meth:`run` trains to ``cfg.steps``."""

    def __init__(self, cfg: TrainConfig, train: Frames, held_out: Frames, command: str = "",
                 test: Frames | None = None, datasets: list[dict] | None = None):
        self.cfg = cfg
        self.datasets = datasets
        self.train_frames, self.held_out, self.test_frames = train, held_out, test
        self.device = pick_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        h, w = train.image_size
        min_side = cfg.generator.min_input_size()
        require(min(h, w) >= min_side, "generator.channels",
                f"{len(cfg.generator.channels)} levels need images >= {min_side}px, data is {h}x{w}")
        if held_out.image_size != (h, w):
            raise DataError(f"held-out frames are {held_out.image_size}, training frames {(h, w)}")
        self.run_dir = ensure_writable_dir(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        existing = ckpt.list_checkpoints(self.ckpt_dir)
        require(not existing or cfg.resume, "name", f"run {self.run_dir} already has checkpoints; pass --resume "
                                                     f"to continue it or choose another --name")
        if cfg.resume:
            self._check_resume_config()
        depth_range = cfg.depth_range_m or self._saved_depth_range() or data_depth_range(train)
        self.contract = GeneratorContract.for_training(h, depth_range)
        require(self.contract.num_classes == cfg.generator.num_classes, "generator.num_classes",
                f"must equal the {self.contract.num_classes} dataset classes")
        if h != w:
            self.contract = dataclasses.replace(self.contract, input_width=w)

        torch.manual_seed(cfg.seed)
        self.G = Generator(cfg.generator).to(self.device)
        self.use_gan = cfg.weights.gan > 0
        self.D = MultiScaleDiscriminator(cfg.discriminator).to(self.device) if self.use_gan else None
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=cfg.betas) if self.D else None
        self.step = 0
        self.wall_s = 0.0
        self.evals: list[dict] = []
        self.init_info: dict | None = None
        if cfg.init_from is not None and not cfg.resume:
            self.init_info = self._init_weights(Path(cfg.init_from))
            atomic_write_json(self.run_dir / "init_from.json", self.init_info)
        elif cfg.resume and (self.run_dir / "init_from.json").is_file():
            self.init_info = json.loads((self.run_dir / "init_from.json").read_text())
        if cfg.resume:
            if not existing:
                raise ckpt.CheckpointError(f"--resume: no complete checkpoint in {self.ckpt_dir}")
            meta, tensors = ckpt.read_checkpoint(existing[-1])
            ckpt.restore(meta, tensors, self.G, self.D, self.opt_g, self.opt_d)
            self.step = int(meta["step"])
            self.wall_s = float(meta["extra"].get("wall_s", 0.0))
            self.evals = json.loads((self.run_dir / "eval.json").read_text()) if (self.run_dir / "eval.json").is_file() else []
        self.amp = cfg.amp if self.device.type == "cuda" else cfg.cpu_bf16
        config_dict = to_dict(cfg)
        atomic_write_json(self.run_dir / "config.json", config_dict)
        self.contract.save(self.run_dir / "contract.json")
        if command:
            with open(self.run_dir / "command.txt", "a") as f:
                f.write(command + "\n")

    def _init_weights(self, path: Path) -> dict:
        """Load --init-from: a training checkpoint (G, and D when it has one) or an exported generator (G)."""
        if path.suffix == ".safetensors":
            from rcan_perception.model import load_generator

            try:
                exported = load_generator(path)
                self.G.load_state_dict(exported.state_dict(), strict=True)
            except (FileNotFoundError, ValueError, RuntimeError) as exc:
                raise ckpt.CheckpointError(f"--init-from {path}: not a generator of this run's shape: {exc}") from exc
            return {"generator": str(path), "discriminator_restored": False}
        meta, tensors = ckpt.read_checkpoint(path)
        has_d = any(k.startswith("D.") for k in tensors)
        ckpt.restore(meta, tensors, self.G, self.D if has_d else None, None, None, restore_rng=False)
        return {"checkpoint": str(path), "step": int(meta["step"]),
                "wall_s": float(meta["extra"].get("wall_s", 0.0)), "discriminator_restored": has_d}

    def _saved(self) -> dict | None:
        p = self.run_dir / "config.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def _saved_depth_range(self) -> tuple[float, float] | None:
        p = self.run_dir / "contract.json"
        if self.cfg.resume and p.is_file():
            c = GeneratorContract.load(p)
            return (c.depth_min_m, c.depth_max_m)
        return None

    def _check_resume_config(self) -> None:
        saved = self._saved()
        if saved is None:
            raise ckpt.CheckpointError(f"--resume: {self.run_dir / 'config.json'} is missing")
        now = to_dict(self.cfg)
        # a field added to TrainConfig after the run started counts as unchanged if it holds its default
        defaults = _field_defaults(TrainConfig)
        changed = sorted(k for k in now if k not in _RESUMABLE and now[k] != saved.get(k, defaults.get(k)))
        if changed:
            raise ConfigError(f"--resume: config field(s) {', '.join(changed)} differ from the saved run "
                              f"{self.run_dir / 'config.json'}; only {', '.join(sorted(_RESUMABLE))} may change")

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image RGB gains in [0.6, 1.4] and offsets in [-0.2, 0.2] on the [-1, 1] input; seeded by (seed, step)."""
        g = torch.Generator().manual_seed(self.cfg.seed * 7_919 + self.step)
        n = x.shape[0]
        gain = 0.6 + 0.8 * torch.rand(n, 3, 1, 1, generator=g)
        offset = 0.4 * torch.rand(n, 3, 1, 1, generator=g) - 0.2
        return ((x + 1) * gain - 1 + offset).clamp(-1, 1)

    def train_step(self, batch: Frames) -> dict[str, float]:
        cfg, c, dev = self.cfg, self.contract, self.device
        x = normalize_image(c, batch.randomized)
        if cfg.augment:
            x = self.augment(x)
        x = x.to(dev, non_blocking=True)
        target = normalize_image(c, batch.canonical).to(dev, non_blocking=True)
        seg = batch.segmentation.to(dev).long()
        depth = normalize_depth(c, batch.depth)[:, None].to(dev)
        with self._autocast():
            rgb, logits, dep = self.G(x)
        rgb, logits, dep = rgb.float(), logits.float(), dep.float()
        out: dict[str, float] = {}
        if self.use_gan:
            self.D.requires_grad_(True)
            with self._autocast():
                d_loss = discriminator_loss(self.D(target), self.D(rgb.detach()))
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            out["loss_d"] = float(d_loss.detach())
            self.D.requires_grad_(False)  # G's GAN term must not leave gradients on D
        l_img, l_seg, l_dep = mpse(rgb, target), segmentation_l2(logits, seg, cfg.seg_l2_on), depth_l2(dep, depth)
        loss = cfg.weights.image * l_img + cfg.weights.segmentation * l_seg + cfg.weights.depth * l_dep
        if self.use_gan:
            with self._autocast():
                g_gan = generator_gan_loss(self.D(rgb))
            loss = loss + cfg.weights.gan * g_gan
            out["loss_g_gan"] = float(g_gan.detach())
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        out.update(loss_g=float(loss.detach()), loss_image_mpse=float(l_img.detach()),
                   loss_seg_l2=float(l_seg.detach()), loss_depth_l2=float(l_dep.detach()))
        return out

    def save(self) -> None:
        ckpt.save_checkpoint(self.ckpt_dir, self.step, self.G, self.D, self.opt_g, self.opt_d,
                             {"wall_s": self.wall_s, "frames_seen": self.step * self.cfg.batch_size})
        ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.keep_checkpoints)

    def write_samples(self) -> np.ndarray:
        frames = self.held_out.select(torch.arange(min(4, len(self.held_out))))
        self.G.eval()
        with torch.no_grad():
            rgb, logits, depth = self.G(normalize_image(self.contract, frames.randomized).to(self.device))
        self.G.train()
        path = self.run_dir / "samples" / f"step-{self.step:06d}.png"
        grid = sample_grid(self.contract, frames, rgb, logits, depth)
        write_png(path, grid)
        return grid

    def run_eval(self, log: RunLog | None, final: bool = False) -> dict:
        res = evaluate(self.G, self.contract, self.held_out, self.device)
        res = {"step": self.step, **res}
        if final and self.test_frames is not None:
            res["test_split"] = evaluate(self.G, self.contract, self.test_frames, self.device)
        self.evals.append(res)
        atomic_write_json(self.run_dir / "eval.json", self.evals)
        atomic_write_json(self.run_dir / "metrics.json", res)
        if log is not None:
            for k in ("psnr_db", "ssim", "seg_miou", "seg_object_iou", "depth_rmse_m"):
                if res.get(k) is not None:
                    log.scalar(f"eval/{k}", res[k], self.step)
        return res

    def run(self) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        log = RunLog(self.run_dir, purge_step=self.step or None)
        started = time.monotonic()
        wall_at_start = self.wall_s
        last_log_t, last_log_step = started, self.step
        stopped_early = stopped_by_signal = False
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress, desc=f"train {cfg.name}",
                   unit="step", dynamic_ncols=True)
        try:
            self.G.train()
            while self.step < cfg.steps:
                idx = batch_indices(len(self.train_frames), cfg.batch_size, self.step, cfg.seed)
                losses = self.train_step(self.train_frames.select(idx))
                self.step += 1
                now = time.monotonic()
                self.wall_s = wall_at_start + (now - started)
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rate = (self.step - last_log_step) * cfg.batch_size / max(now - last_log_t, 1e-9)
                    last_log_t, last_log_step = now, self.step
                    row = {"step": self.step, "wall_s": round(self.wall_s, 2), "frames_per_s": round(rate, 2), **losses}
                    log.write(row)
                    for k, v in losses.items():
                        log.scalar(f"train/{k}", v, self.step)
                    log.scalar("train/frames_per_s", rate, self.step)
                    bar.set_postfix(g=f"{losses['loss_g']:.3f}", seg=f"{losses['loss_seg_l2']:.3f}")
                out_of_time = cfg.max_minutes > 0 and now - started >= cfg.max_minutes * 60
                stopped_by_signal = STOP.is_set() and self.step < cfg.steps
                final = self.step == cfg.steps or out_of_time or stopped_by_signal
                if final or (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0):
                    self.save()
                if cfg.sample_every and self.step % cfg.sample_every == 0 and not final:
                    self.write_samples()
                if cfg.eval_every and self.step % cfg.eval_every == 0 and not final:
                    self.run_eval(log)
                if out_of_time or stopped_by_signal:
                    stopped_early = out_of_time and self.step < cfg.steps
                    break
            if stopped_by_signal:  # asked to stop now: the checkpoint is written, the evaluation can wait
                result = {"step": self.step, "stopped_by_signal": True}
            else:
                log.tb.add_image("samples", self.write_samples(), self.step, dataformats="HWC")
                result = self.run_eval(log, final=True)
        finally:
            bar.close()
            log.close()
        info = {"steps": self.step, "target_steps": cfg.steps,
                "stopped_early_by_max_minutes": stopped_early, "stopped_by_signal": stopped_by_signal,
                "train_wall_s": round(self.wall_s, 1), "frames_seen": self.step * cfg.batch_size,
                "train_frames": len(self.train_frames), "held_out_frames": len(self.held_out),
                "image_size": list(self.train_frames.image_size), "hardware": hardware_info(self.device),
                "generator_params": sum(p.numel() for p in self.G.parameters()),
                "init_from": self.init_info, "datasets": self.datasets}
        atomic_write_json(self.run_dir / "train_info.json", info)
        return result


def dataset_snapshot(path: Path, role: str, frames: Frames) -> dict:
    """What was actually read from a dataset directory (it may grow later: datagen --resume appends)."""
    from rcan_perception.data import read_manifest

    return {"path": str(path), "role": role, "frames": len(frames),
            "episodes": int(frames.episode.unique().numel()), "config": read_manifest(path).get("config")}


def load_datasets(cfg: TrainConfig) -> tuple[Frames, Frames, Frames | None, list[dict]]:
    parts = [load_frames(d, cfg.max_frames) for d in cfg.data]
    snapshots = [dataset_snapshot(d, "train", f) for d, f in zip(cfg.data, parts)]
    frames = concat_frames(parts)
    if cfg.max_frames:
        frames = frames.select(torch.arange(min(cfg.max_frames, len(frames))))
    test = load_frames(cfg.test_data, cfg.eval_frames) if cfg.test_data is not None else None
    if test is not None:
        snapshots.append(dataset_snapshot(cfg.test_data, "test", test))
    if cfg.eval_data is not None:
        held_out = load_frames(cfg.eval_data, cfg.eval_frames)
        snapshots.append(dataset_snapshot(cfg.eval_data, "eval", held_out))
    else:
        frames, held_out = split_by_episode(frames, cfg.val_fraction)
    if len(held_out) > cfg.eval_frames:
        held_out = held_out.select(torch.arange(cfg.eval_frames))
    return frames, held_out, test, snapshots


STOP = threading.Event()
"""Set by SIGTERM: the run ends after the current step with a checkpoint (no final evaluation); --resume continues it exactly."""


def _stop(signum, frame):
    STOP.set()
    print(f"signal {signum}: stopping after this step, with a checkpoint", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import signal

    signal.signal(signal.SIGTERM, _stop)
    cfg = parse_cli(TrainConfig, argv, description="Train the RCAN generator G (U-Net + seg/depth heads, MPSE + L2 + patch GAN).")
    command = "rcan train-generator " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    try:
        train, held_out, test, snapshots = load_datasets(cfg)
        trainer = Trainer(cfg, train, held_out, command=command, test=test, datasets=snapshots)
        print(f"training {cfg.name}: {len(train)} frames {train.image_size}, held-out {len(held_out)}, "
              f"device {trainer.device}, resume from step {trainer.step}", file=sys.stderr)
        result = trainer.run()
    except (DataError, ConfigError, ckpt.CheckpointError, OutputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in result.items() if k not in ("seg_iou_per_class", "test_split")}))
    return 0
