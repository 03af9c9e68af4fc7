"""Generator latency: torch eager vs ONNX Runtime (CPU), batch 1, at the shipped size and at 472.

Writes bench/results/perception.json with p50/p95 latencies, their ratio, FLOPs per frame
(counted from the convolutions actually run, via forward hooks), achieved GFLOP/s and the
fraction of this CPU's nominal fp32 peak.  Uses the shipped model (models/generator_64.*)
when present, else a default-width generator with random weights (latency does not depend
on the weight values).  Run: ``python -m bench.bench_perception``.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rcan_common.io import atomic_write_json
from rcan_perception.contract import GeneratorContract, contract_path, postprocess, preprocess
from rcan_perception.export import export_onnx
from rcan_perception.model import Generator, load_generator
from rcan_perception.runtime import RuntimeConfig, session_options

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "generator_64.onnx"
RESULT = ROOT / "bench" / "results" / "perception.json"
SIZES = (64, 472)
BUDGET_S = {64: 4.0, 472: 8.0}  # timed seconds per (size, backend); the whole bench stays well under 3 min


def conv_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs (2 x multiply-accumulates) of every convolution executed in one forward pass on x.

    Counted by torch's FlopCounterMode on the aten.convolution calls themselves, so convolutions run
    through F.conv2d (the decoder's split skip fusion) count as well as Conv2d modules; bias adds
    (the three 1x1 heads only) are not counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(sum(v for op, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(op)))


def elementwise_flops(model: nn.Module, x: torch.Tensor) -> int:
    """Rough count of the non-conv work: InstanceNorm ~7, ReLU 1, bilinear resize ~8 FLOPs per output element."""
    from rcan_perception.model import UpStage

    total = 0

    def hook(m, _inp, out):
        nonlocal total
        total += out.numel() * (7 if isinstance(m, nn.InstanceNorm2d) else 1)

    def resize_hook(_m, args):
        nonlocal total
        h, skip = args
        total += 8 * h.shape[0] * h.shape[1] * skip.shape[-2] * skip.shape[-1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.InstanceNorm2d, nn.ReLU))]
    handles += [m.register_forward_pre_hook(resize_hook) for m in model.modules() if isinstance(m, UpStage)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def cpu_peak() -> dict:
    """Nominal fp32 peak = logical cores x clock x FLOPs/cycle (FMA width x 2 FLOPs x 2 FMA pipes)."""
    flags, mhz, model = set(), None, platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            key = key.strip()
            if key == "flags" and not flags:
                flags = set(val.split())
            elif key == "cpu MHz" and mhz is None:
                mhz = float(val)
            elif key == "model name":
                model = val.strip()
    except OSError:
        pass
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma = "fma" in flags or "avx512f" in flags
    per_cycle = lanes * (2 if fma else 1) * 2
    cores = os.cpu_count() or 1
    peak = cores * (mhz or 0) * 1e6 * per_cycle / 1e9 if mhz else None
    return {"cpu": model, "logical_cores": cores, "clock_mhz": mhz,
            "simd": "avx512" if lanes == 16 else "avx2" if lanes == 8 else "sse", "fma": fma,
            "flops_per_cycle_per_core": per_cycle, "peak_gflops": peak,
            "assumption": (f"{cores} logical cores x {mhz} MHz (/proc/cpuinfo, as reported by the VM) x "
                           f"{lanes} fp32 lanes x {'2 (FMA)' if fma else '1'} x 2 SIMD pipes per core; "
                           "SMT siblings counted as cores, so the true peak may be half this")}


def sgemm_check(threads: int, n: int = 2048) -> dict:
    """GFLOP/s of a large fp32 matrix product in torch: a measured ceiling to hold the assumed peak against
    (on a VM that counts SMT siblings as cores, 2 threads would get no faster than 1)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = time_it(lambda: a @ b, 1.5)
    return {"threads": threads, "n": n, "p50_ms": t["p50_ms"], "gflops": 2 * n ** 3 / 1e9 / (t["p50_ms"] / 1e3)}


def time_it(fn, budget_s: float, min_iters: int = 5, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < budget_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 1000:
            break
    ms = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "iters": len(times)}


def ort_op_profile(onnx_path: Path, input_name: str, threads: int, size: int, runs: int, flops: int,
                   peak_gflops: float | None) -> dict:
    """Where ONNX Runtime's time goes: its own profiler's kernel time per operator type over `runs` passes.

    The convolutions' share gives their GFLOP/s on their own, which separates "the conv kernels are
    slow" from "everything around them (InstanceNorm, resize, layout reorders) is"."""
    import onnxruntime as ort

    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        so = session_options(RuntimeConfig(intra_op_threads=threads, inter_op_threads=1))
        so.enable_profiling, so.profile_file_prefix = True, str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        for _ in range(runs + 1):  # the first pass warms up and is left out below
            sess.run(None, {input_name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    first_timed = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")[1]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed:
            op = e["args"]["op_name"]
            per_op[op] = per_op.get(op, 0.0) + e["dur"] / 1e3 / runs
    total = sum(per_op.values())
    conv_ms = per_op.get("Conv", 0.0)
    conv_gflops = flops / 1e9 / (conv_ms / 1e3) if conv_ms else None
    return {"threads": threads, "size": size, "runs": runs, "kernel_ms_per_run": total,
            "ms_per_run_by_op": {k: round(v, 3) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
            "share_by_op": {k: round(v / total, 4) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
            "conv_only_gflops": conv_gflops,
            "conv_only_fraction_of_peak": conv_gflops / peak_gflops if conv_gflops and peak_gflops else None}


def measure_sizes(g: Generator, sess, contract: GeneratorContract, peak: dict, sgemm_gflops: float) -> dict:
    sizes = {}
    for size in SIZES:
        x = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
        xt = torch.from_numpy(x)
        flops = conv_flops(g, xt)

        def run_torch():
            with torch.no_grad():
                g(xt)

        def run_ort():
            sess.run(None, {contract.input_name: x})

        warmup = 3 if size <= 128 else 1  # one 472 pass already warms every kernel
        t_torch = time_it(run_torch, BUDGET_S[size], warmup=warmup)
        t_ort = time_it(run_ort, BUDGET_S[size], warmup=warmup)
        entry = {"conv_gflop_per_frame": flops / 1e9,
                 "elementwise_gflop_per_frame_estimate": elementwise_flops(g, xt) / 1e9,
                 "torch_eager": t_torch, "onnxruntime_cpu": t_ort,
                 "ort_speedup_p50": t_torch["p50_ms"] / t_ort["p50_ms"]}
        for t in (t_torch, t_ort):
            gflops = flops / 1e9 / (t["p50_ms"] / 1e3)
            t["achieved_gflops"] = gflops
            t["fraction_of_peak"] = gflops / peak["peak_gflops"] if peak["peak_gflops"] else None
            t["fraction_of_sgemm"] = gflops / sgemm_gflops  # of what a large matmul reached, same threads, same run
        sizes[str(size)] = entry
    return sizes


def main() -> dict:
    import onnxruntime as ort

    # 1 thread and all cores: on a shared, loaded machine torch's OpenMP threads can be far slower than one
    thread_settings = sorted({1, int(os.environ.get("RCAN_BENCH_THREADS", os.cpu_count() or 1))})
    load_at_start = os.getloadavg()[0]
    shipped = MODEL.is_file() and MODEL.with_suffix(".safetensors").is_file()
    with tempfile.TemporaryDirectory() as tmp:
        if shipped:
            g = load_generator(MODEL.with_suffix(".safetensors"))
            contract = GeneratorContract.load(contract_path(MODEL))
            onnx_path = MODEL
        else:
            torch.manual_seed(0)
            g = Generator().eval()
            contract = GeneratorContract()
            onnx_path = export_onnx(g, contract, Path(tmp) / "g.onnx")
        peak = cpu_peak()
        peak["sgemm_check"] = [sgemm_check(t) for t in thread_settings]
        for check in peak["sgemm_check"]:
            check["fraction_of_peak"] = check["gflops"] / peak["peak_gflops"] if peak["peak_gflops"] else None
        by_threads = {}
        for threads in thread_settings:
            torch.set_num_threads(threads)
            # The perception node's own session options (rcan_perception.runtime), so this is what it runs.
            so = session_options(RuntimeConfig(intra_op_threads=threads, inter_op_threads=1))
            sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
            sgemm = next(c["gflops"] for c in peak["sgemm_check"] if c["threads"] == threads)
            by_threads[str(threads)] = measure_sizes(g, sess, contract, peak, sgemm)
        threads = max(thread_settings)
        flops_472 = round(by_threads[str(threads)]["472"]["conv_gflop_per_frame"] * 1e9)  # counted above
        profile = ort_op_profile(onnx_path, contract.input_name, threads, 472, runs=5, flops=flops_472,
                                 peak_gflops=peak["peak_gflops"])
        # the perception node's work around the graph: 472x472 camera image -> input, outputs -> images
        cam = np.random.default_rng(1).integers(0, 256, (472, 472, 3), dtype=np.uint8)
        outs = sess.run(None, {contract.input_name: preprocess(contract, cam)})
        pre = time_it(lambda: preprocess(contract, cam), 2.0)
        post = time_it(lambda: postprocess(contract, outs, output_size=(472, 472)), 2.0)
    result = {
        "model": str(onnx_path.relative_to(ROOT)) if shipped else "default GeneratorConfig, random weights "
                                                                  "(models/generator_64.* not found)",
        "generator_channels": list(g.cfg.channels),
        "parameters": sum(p.numel() for p in g.parameters()),
        "batch": 1,
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg()[0],
        "by_threads": by_threads,
        "ort_op_profile_472": profile,
        "contract_pre_post_472_camera": {"preprocess": pre, "postprocess_with_resize_to_472": post},
        "cpu": peak,
        "flops_note": "conv FLOPs = 2 x MACs of every convolution actually executed (torch FlopCounterMode); "
                      "InstanceNorm/ReLU/resize work is listed separately as a rough estimate and not used for GFLOP/s",
        "gpu": None,
        "gpu_reason": ("no GPU on this machine (torch.cuda.is_available() is False)" if not torch.cuda.is_available()
                       else "GPU present but this bench measures CPU only"),
        "software": {"torch": torch.__version__, "onnxruntime": ort.__version__},
    }
    atomic_write_json(RESULT, result)
    print(json.dumps({f"threads={t}/{s}": {"torch_p50_ms": round(e["torch_eager"]["p50_ms"], 2),
                                           "ort_p50_ms": round(e["onnxruntime_cpu"]["p50_ms"], 2),
                                           "ort_speedup": round(e["ort_speedup_p50"], 2)}
                      for t, sizes in by_threads.items() for s, e in sizes.items()}))
    return result


if __name__ == "__main__":
    main()
