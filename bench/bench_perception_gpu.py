"""Generator latency on a GPU: torch eager fp32 / fp16, fp16 replayed as a CUDA graph, and ONNX
Runtime's CUDA and TensorRT providers where the installed onnxruntime has them.  Batch 1, at the
shipped size and at 472 (the paper's camera).  Timed with CUDA events (median of many runs after a
warm-up).  Needs a CUDA GPU; `make bench` does not run it.  Run:
``python -m bench.bench_perception_gpu [--out PATH]`` (default bench/results/perception_gpu.json).
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch

from rcan_common.io import atomic_write_json
from rcan_perception.contract import GeneratorContract, contract_path
from rcan_perception.export import export_onnx
from rcan_perception.model import Generator, load_generator
from rcan_perception.runtime import OrtModel, RuntimeConfig

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "generator_64.onnx"
RESULT = ROOT / "bench" / "results" / "perception_gpu.json"
GOAL_MS_472_FP16 = 5.0


def cuda_time(fn, iters: int = 200, warmup: int = 20) -> dict:
    """Median / p95 milliseconds of fn() measured with CUDA events, one event pair per call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    ms = np.array(times)
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)), "iters": iters}


def graphed(model: torch.nn.Module, x: torch.Tensor):
    """fn() replaying one forward pass as a CUDA graph (static input/output buffers)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        model(x)
    return graph.replay


def torch_variants(g: Generator, size: int) -> dict:
    dev = torch.device("cuda")
    x = torch.empty(1, 3, size, size, device=dev).uniform_(-1, 1)
    g32 = g.to(dev).eval()
    out = {}
    with torch.no_grad():
        ref = g32(x)[0].float()
        out["torch_eager_fp32"] = cuda_time(lambda: g32(x))
        g16, x16 = Generator(g.cfg).to(dev).eval(), x.half()
        g16.load_state_dict(g32.state_dict())
        g16.half()
        out["torch_eager_fp16"] = cuda_time(lambda: g16(x16))
        err = (g16(x16)[0].float() - ref).norm() / ref.norm()
    out["torch_cuda_graph_fp16"] = cuda_time(graphed(g16, x16))
    out["fp16_vs_fp32_rel_error_canonical"] = float(err)
    return out


def ort_variants(onnx_path: Path, size: int) -> dict:
    import onnxruntime as ort

    available = ort.get_available_providers()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    out = {"available_providers": available}
    for provider, ep in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        if ep not in available:
            out[provider] = f"not available: onnxruntime {ort.__version__} here has {available}"
            continue
        for fp16 in (False, True):
            model = OrtModel(onnx_path, RuntimeConfig(provider=provider, fp16=fp16, warmup_runs=0))
            feeds = {model.inputs[0].name: x}
            out[f"{provider}_{'fp16' if fp16 else 'fp32'}"] = cuda_time(lambda: model.run(feeds), iters=100)
    return out


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_perception_gpu: torch sees no CUDA GPU")
    torch.backends.cudnn.benchmark = True
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        candidates = []
        if SHIPPED.with_suffix(".safetensors").is_file():
            candidates.append(("shipped " + SHIPPED.name, load_generator(SHIPPED.with_suffix(".safetensors")),
                               SHIPPED, GeneratorContract.load(contract_path(SHIPPED)).input_height))
        torch.manual_seed(0)
        default = Generator().eval()
        candidates.append(("default GeneratorConfig (random weights)", default,
                           export_onnx(default, GeneratorContract(), Path(tmp) / "default.onnx"), None))
        for name, g, onnx_path, shipped_size in candidates:
            entry = {"generator_channels": list(g.cfg.channels),
                     "parameters": sum(p.numel() for p in g.parameters()), "by_size": {}}
            for size in sorted({s for s in (shipped_size, 472) if s}):
                entry["by_size"][str(size)] = {**torch_variants(g, size), **ort_variants(onnx_path, size)}
            models[name] = entry
    best_472 = min(v["by_size"]["472"][k]["p50_ms"] for v in models.values()
                   for k in ("torch_eager_fp16", "torch_cuda_graph_fp16"))
    result = {
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "batch": 1, "timing": "CUDA events, median of 200 after 20 warm-up",
        "models": models, "goal_ms_472_fp16": GOAL_MS_472_FP16,
        "best_fp16_p50_ms_472": best_472,
    }
    atomic_write_json(args.out, result)
    print(json.dumps({n: {s: {k: round(v["p50_ms"], 3) for k, v in e.items() if isinstance(v, dict)}
                          for s, e in m["by_size"].items()} for n, m in models.items()}, indent=1))
    return result


if __name__ == "__main__":
    main()
