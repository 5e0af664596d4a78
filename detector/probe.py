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
from typing import TYPE_CHECKING

from .hub import CheckpointError, cache_dir, sha256sum

if TYPE_CHECKING:  # pragma: no cover
    from .spec import DetectorSpec

__all__ = ["PROBE_TIMEOUT_S", "RESULT_PREFIX", "check_build", "probe_spec"]

PROBE_TIMEOUT_S = 600.0
"""Longest a child may take to build the detector (a ResNet-50 ONNX export on a slow CPU included)."""
RESULT_PREFIX = "faceprep-probe-result "
_MARKER_VERSION = 1
_VERSIONED_PACKAGES = ("torch", "onnxruntime", "openvino", "onnx")


def probe_spec(spec: "DetectorSpec") -> "DetectorSpec":
    """What the child builds: ``spec`` on the CPU (a driver need not see the workers' GPUs; every
    runtime runs fp32 there). The weights and the architecture checked are the same."""
    if spec.device == "cpu":
        return spec
    return dataclasses.replace(spec, device="cpu", precision="fp32")


def _marker_path(spec: "DetectorSpec") -> Path:
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


def _remember(marker: Path, spec: "DetectorSpec") -> None:
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


def check_build(spec: "DetectorSpec", *, timeout_s: float = PROBE_TIMEOUT_S, remember: bool = True) -> None:
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


if __name__ == "__main__":
    sys.exit(_main())
