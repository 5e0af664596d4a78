"""Which detector, as one frozen, torch-free value: :class:`DetectorSpec`, and its command-line flags.

A spec names the detector family (RetinaFace, SCRFD), the weights (a ``.pth`` checkpoint, an
``.onnx`` file or a registry name), the runtime (eager torch, onnxruntime, OpenVINO), the
precision, the device, the resize policy and the postprocessing. ``spec.build()`` gives a
:class:`detector.api.FaceDetector`; ``spec.check()`` is the cheap check a job driver makes before
it starts workers (the weights exist and are of the right kind, the runtime is installed and
supports the precision) - no torch, no model loaded. ``spec.fingerprint()`` is what decides the
outputs (a resumed job compares it).

Every command line that detects (``python -m detector detect``, the align job, verification, WIDER
evaluation) takes the same flags through :func:`add_detector_arguments` / :func:`spec_from_args`.

Families live in :data:`detector.families.FAMILIES`: each family module registers its name, the
runtimes it runs on, its default weights and its builder; this module knows none of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import FaceDetector, PostprocessConfig
from .config import ResizePolicy
from .families import FAMILIES, Family
from .hub import CheckpointError, resolve_weights

__all__ = [
    "AUTO",
    "DetectorSpec",
    "FAMILIES",
    "Family",
    "PRECISIONS",
    "RUNTIMES",
    "RuntimeUnavailableError",
    "add_detector_arguments",
    "available_runtimes",
    "spec_from_args",
]

AUTO = "auto"
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8")
"""``precision="auto"`` resolves to bf16 for OpenVINO on a CPU with bf16 instructions, else fp32."""

_RUNTIME_MODULES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}
_RUNTIME_PRECISIONS: dict[str, dict[str, tuple[str, ...]]] = {
    # runtime -> device type -> precisions it runs
    "torch": {"cpu": ("fp32",), "cuda": ("fp32", "fp16")},
    "onnxruntime": {"cpu": ("fp32",), "cuda": ("fp32", "fp16")},
    "openvino": {"cpu": ("fp32", "bf16")},
}
# The CPU runtimes in order of preference when ``runtime="auto"``: measured on the exported
# MobileNet-0.25 at 640x480, one thread (see README, "Runtimes"). On CUDA, torch.
_AUTO_CPU_ORDER: tuple[str, ...] = ("openvino", "onnxruntime", "torch")


class RuntimeUnavailableError(CheckpointError):
    """The runtime is not installed, or cannot run this precision / device."""


def cpu_has_bf16() -> bool:
    """The CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16), read from ``/proc/cpuinfo``
    (other systems: ``False``)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def available_runtimes() -> list[str]:
    """The runtimes importable here (checked without importing them)."""
    return [r for r in RUNTIMES if importlib.util.find_spec(_RUNTIME_MODULES[r]) is not None]


def _device_type(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else str(device)


@dataclass(frozen=True, kw_only=True)
class DetectorSpec:
    """Everything that decides which detector runs and what it returns.

    Attributes:
        weights: a ``.pth`` checkpoint, an ``.onnx`` file (ours, or an insightface SCRFD model),
            or a registry name; ``None``: the family's default (RetinaFace MobileNet-0.25, found
            by :func:`detector.hub.resolve_weights`).
        family: ``"retinaface"`` or ``"scrfd"``; ``None``: from the weights (an ``.onnx`` file
            says what it is; anything else is RetinaFace).
        preset: RetinaFace architecture preset when a bare checkpoint does not say.
        runtime: ``"torch"``, ``"onnxruntime"``, ``"openvino"``, or ``"auto"`` (the fastest
            installed one for the device, see :meth:`resolved`).
        precision: ``"fp32"``, ``"bf16"`` (OpenVINO on CPUs with bf16 support), ``"fp16"``
            (CUDA), ``"auto"`` (bf16 where OpenVINO runs it natively, else fp32) or ``"int8"``
            (not shipped: it loses faces, see the README).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: intra-op threads of the runtime; ``None``: the runtime's default.
        resize: the image scaling before the network (:class:`ResizePolicy` or its string form).
        postprocess: score threshold, top-k and NMS.
    """

    weights: str | None = None
    family: str | None = None
    preset: str | None = None
    runtime: str = AUTO
    precision: str = "fp32"
    device: str = "cpu"
    threads: int | None = None
    resize: ResizePolicy | str | int | None = field(default_factory=ResizePolicy.original)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def __post_init__(self) -> None:
        if self.weights is not None:
            object.__setattr__(self, "weights", str(self.weights))
        object.__setattr__(self, "resize", ResizePolicy.parse(self.resize))
        if self.family is not None and self.family not in FAMILIES:
            raise ValueError(f"unknown detector family {self.family!r}; known: {', '.join(FAMILIES)}")
        if self.runtime != AUTO and self.runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {self.runtime!r}; choose from auto, {', '.join(RUNTIMES)}")
        if self.precision != AUTO and self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from auto, {', '.join(PRECISIONS)}")
        device = str(self.device)
        if not (device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not isinstance(self.postprocess, PostprocessConfig):
            raise TypeError(f"postprocess must be a PostprocessConfig, got {type(self.postprocess).__name__}")

    # ------------------------------------------------------------------ resolution
    def _family_of_weights(self) -> str:
        if self.family is not None:
            return self.family
        if self.weights is not None and str(self.weights).lower().endswith(".onnx"):
            from .onnx_models import inspect_onnx  # reads the file's header: no torch, no onnx

            return inspect_onnx(resolve_weights(self.weights)).family
        return "retinaface"

    def resolved(self) -> DetectorSpec:
        """This spec with ``family``, ``runtime`` and ``weights`` (a file path) made explicit.

        Raises:
            CheckpointError: weights missing, or an ``.onnx`` file that is not a face detector.
            RuntimeUnavailableError: the runtime is not installed or cannot run the precision.
        """
        family = FAMILIES[self._family_of_weights()]
        weights = self.weights if self.weights is not None else family.default_weights
        if weights is None:
            raise CheckpointError(f"the {family.name} family has no default weights: pass --weights FILE")
        path = resolve_weights(weights)
        runtime = self.runtime
        installed = available_runtimes()
        wanted = "fp32" if self.precision == AUTO else self.precision
        if runtime == AUTO:
            order = ("torch", "onnxruntime") if _device_type(self.device) == "cuda" else _AUTO_CPU_ORDER
            order = tuple(r for r in order if r in family.runtimes
                          and wanted in _RUNTIME_PRECISIONS[r].get(_device_type(self.device), ()))
            runtime = next((r for r in order if r in installed), None)
            if runtime is None:
                raise RuntimeUnavailableError(
                    f"no installed runtime runs {family.name} at {wanted} on {self.device} "
                    f"(tried {', '.join(order) or 'none'}; installed: {', '.join(installed) or 'none'})")
        precision = self.precision
        if precision == AUTO:
            precision = "bf16" if runtime == "openvino" and self.device == "cpu" and cpu_has_bf16() else "fp32"
        spec = dataclasses.replace(self, family=family.name, weights=str(path), runtime=runtime, precision=precision)
        spec._check_runtime(installed)
        return spec

    def _check_runtime(self, installed: list[str]) -> None:
        family = FAMILIES[self.family or "retinaface"]
        if self.runtime not in family.runtimes:
            raise RuntimeUnavailableError(
                f"the {family.name} family runs on {', '.join(family.runtimes)}, not {self.runtime}")
        if self.runtime not in installed:
            hint = {"openvino": "pip install openvino", "onnxruntime": "pip install onnxruntime"}.get(self.runtime, "")
            raise RuntimeUnavailableError(
                f"runtime {self.runtime!r} is not installed{f' ({hint})' if hint else ''}; installed: "
                f"{', '.join(installed) or 'none'}; or pass --runtime auto")
        supported = _RUNTIME_PRECISIONS[self.runtime].get(_device_type(self.device), ())
        if not supported:
            raise RuntimeUnavailableError(f"runtime {self.runtime!r} does not run on device {self.device!r}")
        if self.precision not in supported:
            raise RuntimeUnavailableError(
                f"runtime {self.runtime!r} on {_device_type(self.device)} does not support precision "
                f"{self.precision!r}; supported: {', '.join(supported)}")

    def check(self, *, load: bool = False) -> DetectorSpec:
        """The cheap check before any work (no torch, no model): returns :meth:`resolved`, and
        for checkpoint and ONNX files reads enough of the file to refuse one of the wrong kind.

        ``load=True`` also builds the detector once in a child process (this process still never
        imports torch), which refuses a truncated file or weights that do not fit the preset; a
        success is remembered per weights content (:func:`detector.probe.check_build`)."""
        spec = self.resolved()
        from .onnx_models import check_weights_file  # no torch

        check_weights_file(Path(spec.weights), family=spec.family)
        if load:
            from .probe import check_build

            check_build(spec)
        return spec

    def build(self) -> FaceDetector:
        """The detector (loads the model; imports the runtime)."""
        spec = self if (self.family and self.runtime != AUTO and self.precision != AUTO and self.weights
                        and Path(self.weights).is_file()) else self.resolved()
        return FAMILIES[spec.family].build(spec)

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide the detections (JSON-safe; weights by file name)."""
        spec = self if self.family and self.runtime != AUTO and self.precision != AUTO else self.resolved()
        return {
            "family": spec.family, "weights": None if spec.weights is None else Path(spec.weights).name,
            "preset": spec.preset, "runtime": spec.runtime, "precision": spec.precision,
            "resize": spec.resize.to_string(), "postprocess": dataclasses.asdict(spec.postprocess),
        }

    def describe(self) -> str:
        weights = Path(self.weights).name if self.weights else "default weights"
        return (f"{self.family or 'detector'} ({weights}) on {self.runtime} {self.precision}, {self.device}, "
                f"resize {self.resize.to_string()}")


# ---------------------------------------------------------------------------- command line


def add_detector_arguments(parser: argparse.ArgumentParser, *, resize_default: str = "original",
                           device_default: str = "cpu", precision_default: str = "fp32",
                           group_title: str = "detector") -> argparse._ArgumentGroup:
    """The one set of detector flags: ``--weights --family --preset --runtime --precision
    --device --threads --detect-resize``."""
    g = parser.add_argument_group(group_title)
    g.add_argument("--weights", metavar="FILE|NAME",
                   help="detector weights: a RetinaFace .pth, an .onnx (ours from `python -m detector export`, "
                        "or an insightface SCRFD model such as det_10g.onnx), or a registry name "
                        "(mobilenet0.25, resnet50); default mobilenet0.25, found via $FACEPREP_WEIGHTS, the "
                        "cache, or downloaded")
    g.add_argument("--family", choices=sorted(FAMILIES), help="detector family (default: from the weights)")
    g.add_argument("--preset", help="RetinaFace architecture preset when a bare checkpoint does not say")
    g.add_argument("--runtime", default=AUTO, choices=(AUTO, *RUNTIMES),
                   help="inference runtime (default auto: the fastest installed one, openvino > onnxruntime "
                        "> torch on CPU, torch on CUDA)")
    g.add_argument("--precision", default=precision_default, choices=(AUTO, *PRECISIONS),
                   help="fp32, bf16 (openvino on CPUs with bf16 instructions), fp16 (CUDA), or auto (bf16 where "
                        f"openvino runs it natively, else fp32) (default {precision_default})")
    g.add_argument("--device", default=device_default,
                   help=f"cpu, cuda or cuda:N"
                        f"{', or auto (GPUs when Ray has them)' if device_default == 'auto' else ''} "
                        f"(default {device_default})")
    g.add_argument("--threads", type=int, help="intra-op threads of the runtime (default: its own)")
    g.add_argument("--detect-resize", default=resize_default, metavar="POLICY",
                   help="detector input size: original, long:N, cap:N (shrink only), short:N[,MAX], widerface "
                        f"(default {resize_default})")
    return g


def spec_from_args(args: argparse.Namespace, **overrides: Any) -> DetectorSpec:
    """A :class:`DetectorSpec` from the flags of :func:`add_detector_arguments` (``overrides``:
    other fields, e.g. ``postprocess=``)."""
    fields = dict(weights=args.weights, family=args.family, preset=args.preset, runtime=args.runtime,
                  precision=args.precision, device=args.device, threads=args.threads,
                  resize=args.detect_resize)
    fields.update(overrides)
    return DetectorSpec(**fields)
