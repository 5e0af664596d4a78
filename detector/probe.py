"""Build a detector once in a child process: the proof, before any worker starts, that the weights load.

A job driver never imports torch (see :mod:`pipeline.job`), so :meth:`DetectorSpec.check` only
reads enough of the weights file to refuse one of the wrong kind. A truncated checkpoint, or a
ResNet-50 checkpoint forced into a MobileNet preset, passes that check and would only fail inside
every detector actor. :func:`check_build` closes the gap: it builds the detector the spec names
(the real loader, strict keys and shapes) in a fresh Python process and turns any failure into one
:class:`~detector.hub.CheckpointError` line naming the file.

A success is remembered in ``cache_dir()/checked/`` under the weights' SHA-256, the settings that
decide loading (family, preset, runtime, precision) and the versions of the packages that load
them, so a rerun or a resumed job pays only the hash. For ONNX runtimes building a ``.pth``
detector exports it into the cache once (:func:`detector.export.onnx_for_weights`), which the
actors then reuse.

Run as ``python -m detector.probe``: reads a pickled :class:`DetectorSpec` on stdin, prints one
result line (:data:`RESULT_PREFIX` + JSON) on stdout.

The GPU check (:func:`check_device`) is the other half: it runs where a GPU actor would run (a Ray
task granted one GPU, see :func:`pipeline.job.run.probe_gpu`), builds the detector (and the
recogniser) on the device it will use, and checks that the runtime really got CUDA: a torch built
without CUDA, an onnxruntime without its CUDA provider (or whose CPU wheel hides it), a provider that
fell back to the CPU, or fp16 that onnxruntime would silently run as fp32 without TensorRT. Each is
one line naming the cause. :data:`GPU_ON_CPU_ENV` is a test-only switch (see :func:`on_device`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .hub import CheckpointError, cache_dir, sha256sum

if TYPE_CHECKING:  # pragma: no cover
    from .spec import DetectorSpec

__all__ = ["GPU_ON_CPU_ENV", "PROBE_TIMEOUT_S", "RESULT_PREFIX", "check_build", "check_device", "on_device",
           "onnxruntime_cuda_problem", "probe_spec", "session_providers", "torch_cuda_problem", "weights_on_node",
           "worker_env"]

PROBE_TIMEOUT_S = 600.0
"""Longest a child may take to build the detector (a ResNet-50 ONNX export on a slow CPU included)."""
RESULT_PREFIX = "faceprep-probe-result "
_MARKER_VERSION = 1
_VERSIONED_PACKAGES = ("torch", "onnxruntime", "openvino", "onnx")


def probe_spec(spec: DetectorSpec) -> DetectorSpec:
    """What the child builds: ``spec`` on the CPU (a driver need not see the workers' GPUs; every
    runtime runs fp32 there). The weights and the architecture checked are the same."""
    if spec.device == "cpu":
        return spec
    return dataclasses.replace(spec, device="cpu", precision="fp32")


def _marker_path(spec: DetectorSpec) -> Path:
    versions = {}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    identity = {"version": _MARKER_VERSION, "weights_sha256": sha256sum(spec.weights), "family": spec.family,
                "preset": spec.preset, "runtime": spec.runtime, "precision": spec.precision, "packages": versions}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / "checked" / f"{Path(spec.weights).stem}-{digest}.ok"


def _remember(marker: Path, spec: DetectorSpec) -> None:
    from common.fsio import atomic_write_text

    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, json.dumps({"weights": spec.weights, "runtime": spec.runtime}) + "\n")
    except OSError:
        pass  # a read-only cache only costs the next run another child process


def _child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])  # the folder holding the detector package
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def check_build(spec: DetectorSpec, *, timeout_s: float = PROBE_TIMEOUT_S, remember: bool = True) -> None:
    """Build the detector of the resolved ``spec`` once, in a child process; return if it builds.

    Args:
        spec: a resolved spec (:meth:`DetectorSpec.resolved` / ``check()``): ``weights`` a file.
        timeout_s: give up (and refuse) after this long.
        remember: skip the child when this weights file (by content) already built with these
            settings and package versions, and record a success.

    Raises:
        CheckpointError: one line naming the weights file and what is wrong.
    """
    probe = probe_spec(spec)
    marker = _marker_path(probe) if remember else None
    if marker is not None and marker.is_file():
        return
    try:
        out = subprocess.run([sys.executable, "-m", "detector.probe"], input=pickle.dumps(probe), env=_child_env(),
                             capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise CheckpointError(f"{spec.weights}: building the {spec.family} detector on {probe.runtime} took more "
                              f"than {timeout_s:.0f} s; not started") from None
    result = None
    for line in out.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    if result is None:  # the child died (signal, out of memory) before it could answer
        tail = [ln for ln in out.stderr.decode("utf-8", "replace").splitlines() if ln.strip()][-1:]
        how = f"signal {-out.returncode}" if out.returncode < 0 else f"exit code {out.returncode}"
        raise CheckpointError(f"{spec.weights}: the process building the detector died ({how})"
                              + (f": {tail[0].strip()}" if tail else ""))
    if result.get("error"):
        raise CheckpointError(result["error"])
    if marker is not None:
        _remember(marker, probe)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _main() -> int:
    spec = pickle.load(sys.stdin.buffer)
    try:
        spec.build()
        result = {"error": None}
    except CheckpointError as exc:
        result = {"error": " ".join(str(exc).split())}  # one line, whatever the loader wrote
    except Exception as exc:  # the runtime's own failures (a corrupt ONNX graph, ...)
        result = {"error": f"{spec.weights}: the {spec.family} detector could not be built on {spec.runtime}: "
                           f"{type(exc).__name__}: {_first_line(exc)}"}
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# ---------------------------------------------------------------------------- the GPU check

GPU_ON_CPU_ENV = "FACEPREP_TEST_GPU_ON_CPU"
"""TEST-ONLY switch: with ``FACEPREP_TEST_GPU_ON_CPU=1`` in a worker's environment, a detector
meant for CUDA is built on the CPU in fp32 (:func:`on_device`), so that CI without a GPU runs the
GPU layout (Ray logical GPUs, ``ray.init(num_gpus=2)``: read tasks -> GPU actors -> write tasks)
end to end. Never set it for real work: the job would record CUDA and run on the CPU."""


def weights_on_node(spec: DetectorSpec, asked: str | None) -> DetectorSpec:
    """``spec`` (resolved in the driver) with weights this node can open: the driver's file when
    this node has it (a shared file system), else ``asked`` (what the user named: a registry name,
    or ``None`` for the family's default) resolved here the way the driver resolved it
    (:func:`detector.hub.resolve_weights`: this node's ``FACEPREP_WEIGHTS``, its cache, or a
    download), so that nodes need not hold the file at the driver's path.

    Raises:
        CheckpointError: a weights *file* the node does not have (one line naming the node).
    """
    import socket

    from .hub import KNOWN_WEIGHTS, resolve_weights

    if spec.weights is None or Path(spec.weights).is_file():
        return spec
    if asked is not None and str(asked) not in KNOWN_WEIGHTS:  # a file the user named
        raise CheckpointError(
            f"weights file {spec.weights} is not on node {socket.gethostname()}: put it at that path on every node, "
            "or name registry weights (--weights mobilenet0.25) that each node finds in its own FACEPREP_WEIGHTS "
            "or cache")
    return dataclasses.replace(spec, weights=str(resolve_weights(asked)))


def on_device(spec: DetectorSpec) -> DetectorSpec:
    """The spec a worker granted a GPU builds: ``spec`` itself; with the test-only
    :data:`GPU_ON_CPU_ENV` set to ``1``, a CUDA spec on the CPU in fp32 (what every runtime runs
    there)."""
    if not str(spec.device).startswith("cuda") or os.environ.get(GPU_ON_CPU_ENV) != "1":
        return spec
    return dataclasses.replace(spec, device="cpu", precision="fp32")


def worker_env() -> dict[str, Any]:
    """Ray ``runtime_env`` that forwards the test-only :data:`GPU_ON_CPU_ENV` from the driver to
    the tasks and actors it is given to (``{}`` when the driver does not set it)."""
    value = os.environ.get(GPU_ON_CPU_ENV)
    return {"env_vars": {GPU_ON_CPU_ENV: value}} if value else {}


def torch_cuda_problem() -> str | None:
    """Why torch cannot run on a GPU in this process (``None``: it can)."""
    import torch

    if not torch.backends.cuda.is_built():
        return (f"torch was built without CUDA (torch {torch.__version__}): install a CUDA build of torch "
                "(scripts/setup.sh does where nvidia-smi works)")
    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU in the Ray worker: "
                "no visible device, or an NVIDIA driver older than torch's CUDA")
    return None


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def onnxruntime_cuda_problem(precision: str = "fp32") -> str | None:
    """Why onnxruntime cannot run ``precision`` on a GPU in this process (``None``: it can).

    The CPU wheel ``onnxruntime`` and ``onnxruntime-gpu`` both own the ``onnxruntime/`` folder:
    with both installed, whichever was installed last wins, and the CPU one hides the CUDA
    provider. fp16 runs only through TensorRT (the CUDA provider would run the fp32 graph while
    the job records fp16)."""
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    if "CUDAExecutionProvider" not in available:
        if _installed("onnxruntime") and _installed("onnxruntime-gpu"):
            return ("onnxruntime has no CUDA provider: the CPU wheel 'onnxruntime' hides the one of "
                    "'onnxruntime-gpu' (both own the onnxruntime/ folder): pip uninstall -y onnxruntime "
                    "onnxruntime-gpu && pip install onnxruntime-gpu")
        return (f"onnxruntime has no CUDA provider (providers: {', '.join(available)}): install faceprep[gpu] "
                "(onnxruntime-gpu in place of onnxruntime; see pyproject.toml)")
    if precision == "fp16" and "TensorrtExecutionProvider" not in available:
        return ("onnxruntime runs fp16 only through TensorRT, which this onnxruntime does not have: pass "
                "--precision fp32, or --runtime torch for fp16")
    return None


def session_providers(model: object) -> list[str] | None:
    """The execution providers an onnxruntime-backed object got (its ``session``, or the session
    inside that, as :class:`detector.onnx_session.OnnxSession` holds it); ``None`` when there is no
    onnxruntime session (torch, OpenVINO)."""
    obj = model
    for _ in range(4):
        if hasattr(obj, "get_providers"):
            return list(obj.get_providers())
        obj = getattr(obj, "session", None)
        if obj is None:
            return None
    return None


def _torch_device_of(detector: object) -> str | None:
    model = getattr(detector, "model", None)
    try:
        return str(next(model.parameters()).device.type)
    except (AttributeError, StopIteration, TypeError):
        return None


def check_device(spec: DetectorSpec, recognizer: object | None = None,
                 asked_weights: str | None = None) -> str | None:
    """Build the resolved ``spec`` (and ``recognizer``, an object with ``build()`` such as
    :class:`pipeline.verification.recognizer.OnnxRecognizerConfig`) on its device, run one tiny
    detection, and check that CUDA is what runs. Meant for the process a GPU actor would run in
    (a Ray task granted ``num_gpus=1``). Returns ``None``, or one line naming the cause; never
    raises. ``asked_weights``: what the user named (see :func:`weights_on_node`)."""
    import numpy as np

    try:
        spec = weights_on_node(spec, asked_weights)
    except CheckpointError as exc:
        return str(exc)
    spec = on_device(spec)
    cuda = str(spec.device).startswith("cuda")
    try:
        if cuda:
            problem = (torch_cuda_problem() if spec.runtime == "torch"
                       else onnxruntime_cuda_problem(spec.precision) if spec.runtime == "onnxruntime"
                       else f"runtime {spec.runtime} does not run on CUDA")
            if problem:
                return problem
        detector = spec.build()
        detector.detect([np.zeros((64, 64, 3), np.uint8)])
        if cuda:
            providers = session_providers(detector)
            if spec.runtime == "onnxruntime" and (not providers or not {"CUDAExecutionProvider",
                                                                        "TensorrtExecutionProvider"} & set(providers)):
                return (f"onnxruntime's CUDA provider did not start (the session got {', '.join(providers or [])}): "
                        "the CUDA or cuDNN libraries that onnxruntime-gpu needs are missing or do not match")
            if spec.runtime == "torch" and _torch_device_of(detector) not in (None, "cuda"):
                return f"torch built the detector on {_torch_device_of(detector)}, not on CUDA"
    except Exception as exc:
        return (f"the {spec.family} detector could not be built on {spec.device} ({spec.runtime} {spec.precision}): "
                f"{type(exc).__name__}: {' '.join(_first_line(exc).split())}")
    if recognizer is None:
        return None
    try:
        model = recognizer.build()
        providers = session_providers(model)
        if cuda and providers is not None and "CUDAExecutionProvider" not in providers:
            return ("the recogniser would run on the CPU inside a GPU actor: "
                    + (onnxruntime_cuda_problem() or f"its session got {', '.join(providers)}"))
    except Exception as exc:
        return f"the recogniser could not be built on {spec.device}: {type(exc).__name__}: {_first_line(exc)}"
    return None


if __name__ == "__main__":
    sys.exit(_main())
