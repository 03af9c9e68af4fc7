"""`rcan export-generator RUN --out models/x.onnx`: ONNX export + parity check + model card.

Writes, side by side (nothing is left at the target paths if any check fails):

* ``x.onnx``: the generator alone (opset >= 17; batch, height and width are dynamic axes).
* ``x.contract.json``: pre/post-processing contract (:mod:`rcan_perception.contract`).
* ``x.safetensors`` + ``x.json``: the same weights for torch (:func:`model.load_generator`).
* ``x.card.json`` + ``x.md`` (the same naming as the policy export): config, dataset manifest, training time and hardware,
  held-out metrics, parity result and the exact commands.

Parity: held-out frames (or seeded random images if the run's data is gone) go through
:func:`contract.preprocess`, then through torch and ONNX Runtime (CPU, fp32); the max abs
difference over all outputs must be <= ``parity_tol``, else the export fails with exit 1.
"""
from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch

from rcan_common.config import ConfigError, from_dict, parse_cli, require
from rcan_common.io import OutputError, atomic_write_bytes, atomic_write_json, ensure_writable_dir
from rcan_common.provenance import file_sha256
from rcan_perception import checkpoint as ckpt
from rcan_perception.contract import GeneratorContract, contract_path, postprocess, preprocess
from rcan_perception.model import Generator, config_path, save_generator
from tyro.conf import Positional


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree beyond the tolerance."""


@dataclass
class ExportConfig:
    """Export a trained generator run to ONNX with a parity check, contract and model card."""

    run: Annotated[Path, Positional]
    """Run directory written by `rcan train-generator` (runs/<name>)."""
    out: Path = Path("models/generator.onnx")
    """ONNX file to write; contract, weights and card go beside it."""
    checkpoint: Path | None = None
    """A specific checkpoint JSON (runs/<name>/checkpoints/step-NNNNNN.json); default: the latest."""
    opset: int = 17
    """ONNX opset (>= 17)."""
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    """torch.onnx exporter: torchscript (fast, opset 17 as asked) or dynamo (torch.export based, opset 18 native)."""
    parity_tol: float = 1e-4
    """Max abs difference allowed between torch and ONNX Runtime fp32 outputs."""
    parity_frames: int = 8
    """Held-out frames used for the parity check (run as one batch, and the first alone)."""
    samples: Path | None = None
    """Also write a PNG grid of the parity frames decoded through ONNX Runtime + the contract (needs the run's data)."""

    def __post_init__(self) -> None:
        require(self.opset >= 17, "opset", f"must be >= 17, got {self.opset}")
        require(self.parity_tol > 0, "parity_tol", "must be > 0")
        require(self.parity_frames >= 1, "parity_frames", "must be >= 1")
        require(self.out.suffix == ".onnx", "out", f"must end in .onnx, got {self.out}")


def export_onnx(generator: Generator, contract: GeneratorContract, out: str | Path, opset: int = 17,
                exporter: str = "torchscript") -> Path:
    """Write the generator graph to `out` (atomically), with dynamic batch/height/width; returns out."""
    import onnx

    out = Path(out)
    generator = generator.eval().cpu()
    x = torch.zeros(1, 3, contract.input_height, contract.input_width)
    names = list(contract.output_names)
    axes = {0: "batch", 2: "height", 3: "width"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.onnx"
        if exporter == "dynamo":
            dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
            torch.onnx.export(generator, (x,), str(path), dynamo=True, opset_version=max(opset, 18),
                              input_names=[contract.input_name], output_names=names,
                              dynamic_shapes={"x": dims}, external_data=False)
        elif exporter == "torchscript":
            import warnings

            with warnings.catch_warnings():
                # InstanceNorm always normalises with the input's statistics; the "train=True" notice is moot.
                warnings.simplefilter("ignore")
                torch.onnx.export(generator, (x,), str(path), dynamo=False, opset_version=opset,
                                  input_names=[contract.input_name], output_names=names,
                                  dynamic_axes={n: axes for n in [contract.input_name, *names]},
                                  do_constant_folding=True)
        else:
            raise ValueError(f"unknown exporter {exporter!r}")
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        atomic_write_bytes(out, model.SerializeToString())
    return out


def check_parity(generator: Generator, onnx_path: str | Path, contract: GeneratorContract,
                 images_u8: np.ndarray, tol: float) -> dict:
    """Compare torch and ONNX Runtime (CPU) on `images_u8` (N,H,W,3), as a batch and the first frame alone.

    Returns the measured errors; raises ParityError when any output differs by more than `tol`.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got_in = [i.name for i in sess.get_inputs()]
    got_out = [o.name for o in sess.get_outputs()]
    if got_in != [contract.input_name] or got_out != list(contract.output_names):
        raise ParityError(f"ONNX I/O names {got_in} -> {got_out} do not match the contract "
                          f"{contract.input_name} -> {list(contract.output_names)}")
    x = preprocess(contract, images_u8)
    generator = generator.eval().cpu()
    errors: dict[str, float] = {}
    for label, batch in (("batch", x), ("single", x[:1])):
        with torch.no_grad():
            ref = [t.numpy() for t in generator(torch.from_numpy(batch))]
        out = sess.run(None, {contract.input_name: batch})
        for name, r, o in zip(contract.output_names, ref, out):
            if r.shape != o.shape:
                raise ParityError(f"{label} output {name}: ONNX shape {o.shape} != torch shape {r.shape}")
            errors[f"{label}/{name}"] = float(np.abs(r.astype(np.float64) - o).max())
    worst = max(errors.values())
    result = {"max_abs_err": worst, "tolerance": tol, "frames": int(len(x)), "per_output": errors}
    if not worst <= tol:  # also catches NaN
        raise ParityError(f"ONNX Runtime vs torch max abs error {worst:.3g} exceeds {tol:.3g}: {errors}")
    return result


def _summarise(obj, depth: int = 0):
    """Shrink a dataset manifest for the card: long lists become their length."""
    if isinstance(obj, dict):
        return {k: _summarise(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list) and len(obj) > 16:
        return f"<{len(obj)} entries>"
    return obj


def datagen_command(path: str, man: dict) -> str | None:
    """The `rcan datagen` call that reproduces a dataset, from its manifest (None if it has none)."""
    cfg, counts = man.get("config"), man.get("counts") or {}
    if cfg and cfg.get("source") == "rcan label-pairs":  # frames rendered from label sets, not datagen episodes
        return (f"rcan label-pairs --labels {' '.join(cfg['labels'])} --out {path} --image-size {cfg['image_size']} "
                f"--seed {cfg['seed']}")
    if not cfg or "episodes" not in counts:
        return None
    return (f"rcan datagen --out {path} --episodes {counts['episodes']} --image-size {cfg['image_size']} "
            f"--seed {cfg['seed']} --split {cfg.get('split', 'train')} --episodes-per-shard {cfg['episodes_per_shard']}")


def datagen_commands(run_cfg: dict, train_info: dict) -> list[str]:
    """Reproducing datagen calls: from what training actually read when recorded, else today's manifests."""
    from rcan_perception.data import read_manifest

    if train_info.get("datasets"):
        return [c for snap in train_info["datasets"]
                if (c := datagen_command(snap["path"], {"config": snap["config"], "counts": {"episodes": snap["episodes"]}}))]
    dirs = [*run_cfg["data"], run_cfg.get("eval_data"), run_cfg.get("test_data")]
    return [c for d in dirs if d and (c := datagen_command(d, read_manifest(d)))]


def init_chain(run: Path) -> list[dict]:
    """The runs `run` was started from with --init-from, earliest first: {"run", "step", "wall_s", "commands"} for a
    run directory (its command.txt), {"generator": path} for an exported generator, {"checkpoint": path, "step"} for
    a checkpoint whose run is gone.  Paths are as the runs recorded them (relative to where they were started)."""
    chain: list[dict] = []
    seen = {run.resolve()}
    info_path = run / "init_from.json"
    while info_path.is_file():
        info = json.loads(info_path.read_text())
        if "generator" in info:
            chain.insert(0, {"generator": info["generator"]})
            break
        source = Path(info["checkpoint"])  # <run>, <run>/checkpoints or <run>/checkpoints/step-*.json
        source_run = next((p for p in (source, *source.parents[:2]) if (p / "config.json").is_file()), None)
        if source_run is None or source_run.resolve() in seen:
            chain.insert(0, {"checkpoint": str(source), "step": info.get("step")})
            break
        seen.add(source_run.resolve())
        commands = (source_run / "command.txt").read_text().splitlines() if (source_run / "command.txt").is_file() else []
        chain.insert(0, {"run": str(source_run), "step": info.get("step"), "wall_s": info.get("wall_s"),
                         "commands": commands})
        info_path = source_run / "init_from.json"
    return chain


def parity_frames(run_cfg: dict, contract: GeneratorContract, n: int):
    """Held-out frames of the run (a Frames) or, if its data is gone, (seeded random uint8 NHWC images, None)."""
    from rcan_perception.data import DataError, concat_frames, load_frames, split_by_episode

    try:
        if run_cfg.get("eval_data"):
            frames = load_frames(run_cfg["eval_data"], n)
            source = f"held-out frames of {run_cfg['eval_data']}"
        else:
            frames = split_by_episode(concat_frames([load_frames(d, run_cfg.get("max_frames", 0))
                                                     for d in run_cfg["data"]]), run_cfg.get("val_fraction", 0.05))[1]
            source = f"held-out episodes of {', '.join(run_cfg['data'])}"
        frames = frames.select(torch.arange(min(n, len(frames))))
        return frames.randomized.permute(0, 2, 3, 1).numpy(), frames, source
    except (DataError, KeyError, OSError):
        rng = np.random.default_rng(0)
        imgs = rng.integers(0, 256, (n, contract.input_height, contract.input_width, 3), dtype=np.uint8)
        return imgs, None, "seeded random images (the run's dataset was not found)"


def deployed_sample_grid(onnx_path: Path, contract: GeneratorContract, frames) -> np.ndarray:
    """Sample grid of `frames` decoded exactly as deployed: preprocess -> ONNX Runtime -> postprocess.

    Columns: randomized | generated canonical | canonical target | segmentation | target | depth | target.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rgb = frames.randomized.permute(0, 2, 3, 1).numpy()
    dec = postprocess(contract, sess.run(None, {contract.input_name: preprocess(contract, rgb)}))
    palette = np.asarray(contract.class_colors, dtype=np.uint8)

    def gray(depth_m: np.ndarray) -> np.ndarray:
        d = (depth_m - contract.depth_min_m) / (contract.depth_max_m - contract.depth_min_m)
        return np.repeat((np.clip(d, 0, 1) * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)

    cols = [rgb, dec.canonical, frames.canonical.permute(0, 2, 3, 1).numpy(), dec.colour,
            palette[frames.segmentation.numpy()], gray(dec.depth_m), gray(frames.depth.numpy())]
    return np.concatenate([np.concatenate(row, axis=1) for row in zip(*cols)], axis=0)


def _chain_link(link: dict) -> str:
    """One entry of init_chain, as the card's markdown names it."""
    if "generator" in link:
        return f"exported generator `{link['generator']}`"
    if "run" in link:
        wall = "n/a" if link.get("wall_s") is None else f"{link['wall_s']:.0f}"
        return f"run `{link['run']}` at step {link['step']} ({wall} s)"
    return f"checkpoint `{link['checkpoint']}` (step {link['step']}; its run is gone)"


def _markdown(card: dict) -> str:
    m = card.get("held_out_metrics") or {}
    ts = m.get("test_split") or {}
    t = card.get("training") or {}
    hw = t.get("hardware") or {}
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    lines = [
        f"# {card['name']}", "",
        "RCAN generator G (U-Net, Appendix A): randomized/real RGB -> canonical RGB, segmentation (5 classes), depth.", "",
        f"- ONNX: `{card['files']['onnx']}` (opset {card['opset']}, {card['exporter']} exporter; dynamic batch/height/width)",
        f"- Contract: `{card['files']['contract']}`; input {card['contract']['input_height']}x{card['contract']['input_width']} RGB, "
        f"uint8*{card['contract']['input_scale']:.6g}{card['contract']['input_offset']:+g}; argmax and depth scaling are outside the graph",
        f"- Generator channels: {card['generator']['channels']} ({card['parameters']} parameters)",
        f"- Trained {t.get('steps')} steps x batch {card['train_config']['batch_size']} in {fmt(t.get('train_wall_s'), '.0f')} s "
        f"on {hw.get('gpu') or hw.get('cpu', 'unknown')} ({hw.get('device', '?')})",
        f"- Data: {', '.join('`%s`' % d for d in card['train_config']['data'])} ({t.get('train_frames')} frames), held-out: "
        f"{card['train_config'].get('eval_data') or 'last episodes of the training data'} ({m.get('frames')} frames)",
        *([f"- Data note: {t['datasets_note']}"] if t.get("datasets_note") else []),
        *([f"- Started from (`--init-from`, earliest first): {'; then '.join(map(_chain_link, card['init_chain']))}"]
          if card.get("init_chain") else []), "",
        "| metric | held-out frames | test split (unseen objects, textures, lights) |", "|---|---|---|",
        *(f"| {label} | {fmt(m.get(key), f)} | {fmt(ts.get(key), f)} |" for label, key, f in (
            ("PSNR canonical RGB (dB)", "psnr_db", ".2f"), ("SSIM canonical RGB", "ssim", ".3f"),
            ("segmentation mIoU", "seg_miou", ".3f"), ("object-class IoU", "seg_object_iou", ".3f"),
            ("depth RMSE (m)", "depth_rmse_m", ".4f"))), "",
        f"Parity torch vs ONNX Runtime CPU fp32: max abs err {card['parity']['max_abs_err']:.2e} "
        f"(tolerance {card['parity']['tolerance']:.0e}, {card['parity']['source']}).", "",
        "Commands:", "", "```",
        *card["commands"]["datagen"], *card["commands"]["train"], card["commands"]["export"], "```", "",
    ]
    return "\n".join(lines)


def export_run(cfg: ExportConfig, command: str = "") -> dict:
    """Export `cfg.run`; returns the model card. Raises ParityError/CheckpointError/ConfigError."""
    run = cfg.run
    if not (run / "config.json").is_file():
        raise ConfigError(f"invalid config field 'run': {run} is not a train-generator run (no config.json)")
    run_cfg = json.loads((run / "config.json").read_text())
    contract = GeneratorContract.load(run / "contract.json")
    meta, tensors = ckpt.read_checkpoint(cfg.checkpoint or run / "checkpoints")
    from rcan_perception.model import GeneratorConfig

    generator = Generator(from_dict(GeneratorConfig, run_cfg["generator"]))
    ckpt.restore(meta, tensors, generator, None, None, None, restore_rng=False)
    generator.eval()

    ensure_writable_dir(cfg.out.parent)
    stem = cfg.out.with_suffix("")
    with tempfile.TemporaryDirectory(dir=cfg.out.parent) as tmp:
        tmp_onnx = Path(tmp) / cfg.out.name
        t0 = time.monotonic()
        export_onnx(generator, contract, tmp_onnx, cfg.opset, cfg.exporter)
        export_s = time.monotonic() - t0
        images, frames, source = parity_frames(run_cfg, contract, cfg.parity_frames)
        parity = {**check_parity(generator, tmp_onnx, contract, images, cfg.parity_tol), "source": source}
        tmp_onnx.replace(cfg.out)
    if cfg.samples is not None and frames is not None:
        from rcan_perception.train import write_png

        write_png(cfg.samples, deployed_sample_grid(cfg.out, contract, frames))
    contract.save(contract_path(cfg.out))
    weights = stem.with_suffix(".safetensors")
    save_generator(generator, weights)

    def read_json(name: str):
        p = run / name
        return json.loads(p.read_text()) if p.is_file() else None

    from rcan_perception.data import read_manifest

    chain = init_chain(run)
    train_cmds = [*(cmd for c in chain for cmd in c.get("commands", [])),
                  *((run / "command.txt").read_text().splitlines() if (run / "command.txt").is_file() else [])]
    card = {
        "name": cfg.out.stem,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {"onnx": cfg.out.name, "onnx_sha256": file_sha256(cfg.out), "onnx_bytes": cfg.out.stat().st_size,
                  "contract": contract_path(cfg.out).name, "weights": weights.name,
                  "weights_config": config_path(weights).name},
        "opset": cfg.opset if cfg.exporter == "torchscript" else max(cfg.opset, 18),
        "exporter": cfg.exporter, "export_s": round(export_s, 2),
        "checkpoint_step": int(meta["step"]),
        "parameters": sum(p.numel() for p in generator.parameters()),
        "generator": run_cfg["generator"],
        "train_config": run_cfg,
        "contract": json.loads(contract_path(cfg.out).read_text()),
        "datasets_used": (read_json("train_info.json") or {}).get("datasets"),
        "dataset_manifests_at_export": {d: _summarise(read_manifest(d)) for d in run_cfg["data"]},
        "eval_dataset_manifest": _summarise(read_manifest(run_cfg["eval_data"])) if run_cfg.get("eval_data") else None,
        "test_dataset_manifest": _summarise(read_manifest(run_cfg["test_data"])) if run_cfg.get("test_data") else None,
        "training": read_json("train_info.json"),
        "init_chain": chain,
        "held_out_metrics": read_json("metrics.json"),
        "parity": parity,
        "commands": {"datagen": datagen_commands(run_cfg, read_json("train_info.json") or {}),
                     "train": train_cmds, "export": command or f"rcan export-generator {run} --out {cfg.out}"},
        "software": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
                     "onnx": __import__("onnx").__version__},
    }
    atomic_write_json(stem.with_suffix(".card.json"), card)
    atomic_write_bytes(stem.with_suffix(".md"), _markdown(card).encode())
    return card


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(ExportConfig, argv, description="Export a trained RCAN generator to ONNX (parity-checked).")
    command = "rcan export-generator " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    try:
        card = export_run(cfg, command)
    except ParityError as exc:
        print(f"error: parity check failed, nothing written to {cfg.out}: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, ckpt.CheckpointError, OutputError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"onnx": str(cfg.out), "parity_max_abs_err": card["parity"]["max_abs_err"],
                      "held_out_metrics": {k: v for k, v in (card["held_out_metrics"] or {}).items()
                                           if k != "seg_iou_per_class"}}))
    return 0
