"""ONNX Runtime wrapper shared by the perception and policy nodes.

* Execution provider from a parameter ("tensorrt", "cuda" or "cpu"); each falls back to
  the next (tensorrt -> cuda -> cpu) when it is not installed or fails to load, and ONE
  log line says which provider runs the model and why any fallback happened.
* Thread settings (intra-/inter-op) are exposed; ``0`` keeps ONNX Runtime's default.
* Warm-up runs at start-up so the first real frame does not pay for allocation/tuning.
* On a GPU, inputs and outputs go through IO binding (outputs stay on the device until
  one copy back), and ``fp16`` builds a half-precision engine (TensorRT flag, or a
  float16 conversion of the graph for CUDA, keeping float32 inputs/outputs).  Asked for
  fp16 off the GPU, one log line says so and the model runs in fp32.
* A missing, corrupt or mismatched model fails at start-up with :class:`ModelError`
  naming the file and the mismatch (input name, rank, channels, size, outputs).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

import numpy as np

from rcan_common.config import require

_log = logging.getLogger(__name__)

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
# Each choice falls back along this chain.
_CHAIN = ("tensorrt", "cuda", "cpu")
_GPU = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
             "tensor(bool)": np.bool_}

Dim = int | None  # None: any size


class ModelError(RuntimeError):
    """The model file is missing, corrupt or does not match what the caller expects."""


@dataclass(frozen=True)
class RuntimeConfig:
    """How to run an ONNX model."""

    provider: Literal["tensorrt", "cuda", "cpu"] = "cpu"
    """Preferred execution provider; falls back tensorrt -> cuda -> cpu."""
    intra_op_threads: int = 0
    """Threads inside one operator (0 = ONNX Runtime default)."""
    inter_op_threads: int = 0
    """Threads across independent operators (0 = default; > 1 enables parallel execution)."""
    fp16: bool = False
    """Half precision on the GPU (ignored, with one log line, on the CPU)."""
    warmup_runs: int = 2
    """Inference runs on dummy inputs at start-up."""
    device_id: int = 0
    """GPU index for the CUDA/TensorRT providers."""

    def __post_init__(self) -> None:
        require(self.provider in PROVIDERS, "provider", f"must be one of {list(PROVIDERS)}, got {self.provider!r}")
        require(self.intra_op_threads >= 0, "intra_op_threads", "must be >= 0")
        require(self.inter_op_threads >= 0, "inter_op_threads", "must be >= 0")
        require(self.warmup_runs >= 0, "warmup_runs", "must be >= 0")
        require(self.device_id >= 0, "device_id", "must be >= 0")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str | None, ...]  # int: fixed, str/None: dynamic
    dtype: type


def session_options(cfg: RuntimeConfig):
    """ONNX Runtime session options for `cfg` (threads, graph optimisation); the benches use them too."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = cfg.intra_op_threads
    opts.inter_op_num_threads = cfg.inter_op_threads
    if cfg.inter_op_threads > 1:
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    return opts


def provider_chain(requested: str, available: Sequence[str]) -> tuple[list[str], list[str]]:
    """(providers to try in order, reasons for skipping the requested ones)."""
    if requested not in PROVIDERS:
        raise ModelError(f"unknown execution provider {requested!r}; choose one of {list(PROVIDERS)}")
    wanted = [PROVIDERS[p] for p in _CHAIN[_CHAIN.index(requested):]]
    chosen = [p for p in wanted if p in available]
    skipped = [f"{p} not installed" for p in wanted if p not in available]
    if PROVIDERS["cpu"] not in chosen:
        chosen.append(PROVIDERS["cpu"])  # the CPU provider is always built in
    return chosen, skipped


def _spec(arg) -> TensorSpec:
    return TensorSpec(arg.name, tuple(arg.shape), _NP_TYPES.get(arg.type, np.float32))


def _check_shape(path: Path, spec: TensorSpec, expected: Sequence[Dim]) -> None:
    if len(spec.shape) != len(expected):
        raise ModelError(f"model {path}: input '{spec.name}' has rank {len(spec.shape)} {list(spec.shape)}, "
                         f"expected rank {len(expected)} {list(expected)}")
    for axis, (got, want) in enumerate(zip(spec.shape, expected)):
        if isinstance(got, int) and want is not None and got != want:
            what = "channels" if axis == 1 and len(expected) == 4 else f"axis {axis}"
            raise ModelError(f"model {path}: input '{spec.name}' has {what} = {got}, expected {want} "
                             f"(model shape {list(spec.shape)}, expected {list(expected)})")


class OrtModel:
    """One ONNX model in an ONNX Runtime session, validated against the caller's expectations.

    ``expected_inputs`` maps input names to shapes (``None`` = any size); every model
    input must be listed and fixed model dims must agree.  ``expected_outputs`` names
    outputs that must exist.
    """

    def __init__(self, path: str | Path, cfg: RuntimeConfig = RuntimeConfig(), *,
                 expected_inputs: Mapping[str, Sequence[Dim]] | None = None,
                 expected_outputs: Sequence[str] | None = None,
                 log: Callable[[str], None] | None = None,
                 available_providers: Sequence[str] | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.cfg = cfg
        log = log or _log.info
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        available = list(ort.get_available_providers() if available_providers is None else available_providers)
        chain, skipped = provider_chain(cfg.provider, available)

        opts = session_options(cfg)
        opts.log_severity_level = 3  # our one line replaces ORT's provider warnings

        self._session = self._create(ort, self.path.read_bytes(), opts, chain)
        active = self._session.get_providers()[0]
        self.provider = active
        self.on_gpu = active in _GPU
        if active != chain[0]:
            skipped.append(f"{chain[0]} failed to initialise")
        fp16_note = ""
        if cfg.fp16 and self.on_gpu and active == PROVIDERS["cuda"]:
            try:
                self._session = self._create(ort, self._to_fp16(), opts, chain)
                fp16_note = ", fp16"
            except Exception as exc:  # an op without a float16 kernel: fp32 still works
                fp16_note = f", fp32 (fp16 conversion failed: {exc})"
        elif cfg.fp16 and self.on_gpu:
            fp16_note = ", fp16"  # TensorRT builds the fp16 engine from its provider option
        reason = f" (requested {cfg.provider}: {'; '.join(skipped)})" if skipped else ""
        log(f"onnxruntime {ort.__version__}: {self.path.name} runs on {active}{fp16_note}{reason}")
        if cfg.fp16 and not self.on_gpu:
            log(f"fp16 requested for {self.path.name} but it runs on {active}, not a GPU; using fp32")

        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        self.output_names = [o.name for o in self.outputs]
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        self._expected: dict[str, Sequence[Dim]] = {}
        self.check_io(expected_inputs, expected_outputs)
        self._device = "cuda" if self.on_gpu else "cpu"
        self._use_binding = self.on_gpu  # on the CPU, plain run() already avoids copies
        self.warmup(cfg.warmup_runs)

    def check_io(self, expected_inputs: Mapping[str, Sequence[Dim]] | None = None,
                 expected_outputs: Sequence[str] | None = None) -> None:
        """Raise ModelError unless the graph has exactly these inputs (compatible shapes) and these outputs."""
        if expected_inputs is not None:
            names = {s.name for s in self.inputs}
            if names != set(expected_inputs):
                raise ModelError(f"model {self.path}: inputs {sorted(names)} do not match the expected "
                                 f"{sorted(expected_inputs)}")
            for spec in self.inputs:
                _check_shape(self.path, spec, expected_inputs[spec.name])
            self._expected = dict(expected_inputs)
        if expected_outputs is not None:
            missing = [n for n in expected_outputs if n not in self.output_names]
            if missing:
                raise ModelError(f"model {self.path}: missing outputs {missing}; it has {self.output_names}")

    def warmup(self, runs: int) -> None:
        for _ in range(runs):
            self.run(self.dummy_inputs())

    def _create(self, ort, model: bytes, opts, chain: list[str]):
        providers: list = []
        for p in chain:
            if p == PROVIDERS["tensorrt"]:
                providers.append((p, {"device_id": self.cfg.device_id, "trt_fp16_enable": self.cfg.fp16}))
            elif p == PROVIDERS["cuda"]:
                providers.append((p, {"device_id": self.cfg.device_id}))
            else:
                providers.append(p)
        try:
            return ort.InferenceSession(model, sess_options=opts, providers=providers)
        except Exception as exc:  # InvalidProtobuf, Fail, NoSuchFile... all mean "this file is unusable"
            raise ModelError(f"cannot load ONNX model {self.path}: {str(exc).strip() or type(exc).__name__}") from exc

    def _to_fp16(self) -> bytes:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(self.path)), keep_io_types=True)
        return model.SerializeToString()

    def dummy_inputs(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Zeros of a valid shape for every input (dynamic dims from the expectations, else 1)."""
        feeds = {}
        for spec in self.inputs:
            want = self._expected.get(spec.name, [None] * len(spec.shape))
            shape = [d if isinstance(d, int) else (w if w is not None else (batch if i == 0 else 1))
                     for i, (d, w) in enumerate(zip(spec.shape, want))]
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        return feeds

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; returns every output by name as a CPU numpy array."""
        if not self._use_binding:
            return dict(zip(self.output_names, self._session.run(self.output_names, dict(feeds))))
        binding = self._session.io_binding()
        for name, arr in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(arr))
        for name in self.output_names:
            binding.bind_output(name, self._device, self.cfg.device_id)
        self._session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))
