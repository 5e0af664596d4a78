"""What an ONNX or checkpoint file is, read without torch and without the ``onnx`` package.

* :func:`inspect_onnx` - an ``.onnx`` file -> :class:`OnnxModelInfo`: our exported RetinaFace
  (recognised by its ``faceprep.*`` metadata, which carries the :class:`~detector.config.ModelConfig`)
  or an insightface SCRFD with keypoints (recognised by its score / box / keypoint outputs, whatever
  their names: :func:`detector.scrfd_layout.scrfd_outputs`); anything else is refused with
  :class:`~detector.hub.CheckpointError`. The file's interface is read by
  :func:`detector.onnx_header.read_header` (weights skipped).
* :func:`check_weights_file` - the cheap check :meth:`detector.spec.DetectorSpec.check` makes in a
  job driver before workers start: an ``.onnx`` file of the right family, or a file that really is
  a torch checkpoint (zip or legacy format, recognised by its header, not loaded).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ModelConfig
from .hub import CheckpointError
from .onnx_header import OnnxHeader, ProtobufError, read_header
from .scrfd_layout import scrfd_outputs

__all__ = [
    "META_FAMILY",
    "META_FORMAT",
    "META_MODEL_CONFIG",
    "OUTPUT_NAMES",
    "ONNX_FORMAT",
    "OnnxModelInfo",
    "check_weights_file",
    "inspect_onnx",
]

# metadata_props of the files written by detector.export
META_FORMAT = "faceprep.format"
META_FAMILY = "faceprep.family"
META_MODEL_CONFIG = "faceprep.model_config"
ONNX_FORMAT = "faceprep.retinaface.onnx/1"
INPUT_NAME = "input"
OUTPUT_NAMES: tuple[str, str, str] = ("cls_logits", "bbox_deltas", "landmark_deltas")

_TORCH_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")



@dataclass(frozen=True)
class OnnxModelInfo:
    """What :func:`inspect_onnx` found.

    Attributes:
        path: the file.
        family: ``"retinaface"`` (ours, from ``python -m detector export``) or ``"scrfd"``.
        model_config: the RetinaFace architecture and preprocessing stored in the file; ``None``
            for SCRFD.
        input_name: the graph's (single) image input.
        input_shape: its declared shape (ints, symbolic names, or ``None``).
        output_names: every graph output, in the file's order.
        output_shapes: their declared shapes.
        metadata: the file's ``metadata_props``.
    """

    path: Path
    family: str
    model_config: ModelConfig | None
    input_name: str
    input_shape: tuple[Any, ...]
    output_names: tuple[str, ...]
    output_shapes: tuple[tuple[Any, ...], ...]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def dynamic_input(self) -> bool:
        """Whether the spatial input size is free (ours: always)."""
        return len(self.input_shape) == 4 and not all(isinstance(d, int) for d in self.input_shape[2:])


def _load(path: Path) -> OnnxHeader:
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    data = path.read_bytes()
    try:
        header = read_header(data)
    except ProtobufError as exc:
        raise CheckpointError(f"{path}: not an ONNX file ({len(data)} bytes; {exc})") from exc
    # junk can parse as an empty message: a real model has a version and a graph with outputs
    if not header.ir_version or not header.has_graph or not header.outputs:
        raise CheckpointError(f"{path}: not an ONNX file ({len(data)} bytes; no model graph in it)")
    return header


def inspect_onnx(path: str | os.PathLike) -> OnnxModelInfo:
    """Read an ONNX file's graph inputs, outputs and metadata (weights not interpreted).

    Raises:
        CheckpointError: the file is missing, is not ONNX, is not a face detector this project runs,
            or is an SCRFD without keypoints (alignment needs the five landmarks).
    """
    path = Path(path)
    header = _load(path)
    inputs = [i for i in header.inputs if i[0] not in header.initializers]
    names = tuple(name for name, _ in header.outputs)
    shapes = [shape for _, shape in header.outputs]
    metadata = dict(header.metadata)
    if len(inputs) != 1:
        raise CheckpointError(f"{path}: not a face detector: expected one image input, found "
                              f"{[i[0] for i in inputs]} (outputs {list(names)})")
    input_name, input_shape = inputs[0]

    def info(family: str, config: ModelConfig | None) -> OnnxModelInfo:
        return OnnxModelInfo(path, family, config, input_name, input_shape, names, tuple(shapes), metadata)

    if metadata.get(META_FAMILY) == "retinaface":
        try:
            config = ModelConfig.from_dict(json.loads(metadata[META_MODEL_CONFIG]))
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: RetinaFace ONNX with an unreadable {META_MODEL_CONFIG!r} metadata "
                                  f"entry ({type(exc).__name__}: {exc}); re-export it with `python -m detector "
                                  "export`") from exc
        missing = [n for n in OUTPUT_NAMES if n not in names]
        if missing:
            raise CheckpointError(f"{path}: RetinaFace ONNX without the outputs {missing} (has {list(names)}); "
                                  "re-export it with `python -m detector export`")
        return info("retinaface", config)
    layout = scrfd_outputs(shapes)
    if layout is not None and layout[2]:
        return info("scrfd", None)
    if layout is not None:
        raise CheckpointError(f"{path}: an SCRFD face detector without keypoints (6 outputs {list(names)}); "
                              "alignment needs the five landmarks: use a *_kps / *_bnkps model such as "
                              "scrfd_500m_bnkps.onnx or buffalo_l's det_10g.onnx")
    described = [f"{n} {list(s)}" for n, s in zip(names, shapes)]
    raise CheckpointError(
        f"{path}: not a face detector: unexpected outputs {described} (expected a RetinaFace from "
        "`python -m detector export`, with faceprep metadata, or an insightface SCRFD with 9 or 15 "
        "score / bbox / kps outputs)")


def _looks_like_torch(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(64)
    if head[:1] == b"\x80" and _TORCH_LEGACY_MAGIC in head:
        return True  # legacy format: a pickled magic number first
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith("data.pkl") for n in zf.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def check_weights_file(path: str | os.PathLike, *, family: str) -> None:
    """Refuse a weights file of the wrong kind, cheaply and without torch.

    ``.onnx`` files are inspected (:func:`inspect_onnx`) and must be of ``family``; anything else
    must be a torch checkpoint (zip format with a ``data.pkl``, or the legacy pickle format with
    torch's magic number), which only the ``retinaface`` family reads.

    Raises:
        CheckpointError: with the path and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix.lower() == ".onnx":
        info = inspect_onnx(path)
        if info.family != family:
            raise CheckpointError(f"{path}: an ONNX {info.family} model, not {family}; pass --family "
                                  f"{info.family} (or leave --family unset)")
        return
    if not _looks_like_torch(path):
        raise CheckpointError(f"{path}: not a torch checkpoint or ONNX file ({path.stat().st_size} bytes)")
    if family != "retinaface":
        raise CheckpointError(f"{path}: a torch checkpoint; the {family} family runs from .onnx files only")
