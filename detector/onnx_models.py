"""What an ONNX or checkpoint file is, read without torch (numpy + onnx only).

* :func:`inspect_onnx` - an ``.onnx`` file -> :class:`OnnxModelInfo`: our exported RetinaFace
  (recognised by its ``faceprep.*`` metadata, which carries the :class:`~detector.config.ModelConfig`)
  or an insightface SCRFD with keypoints (recognised by its nine score / box / keypoint outputs,
  whatever their names); anything else is refused with :class:`~detector.hub.CheckpointError`.
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


def _dims(value_info: Any) -> tuple[Any, ...]:
    dims = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or None)
    return tuple(dims)


def _load(path: Path) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path}: not an ONNX file ({path.stat().st_size} bytes; "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    # protobuf parses some junk into an empty message: a real model has a version and a graph
    if not model.ir_version or not model.HasField("graph") or not model.graph.output:
        raise CheckpointError(f"{path}: not an ONNX file ({path.stat().st_size} bytes; no model graph in it)")
    return model


def _scrfd_layout(shapes: list[tuple[Any, ...]]) -> str | None:
    """``"kps"`` for the 9 outputs of SCRFD with keypoints, ``"no_kps"`` for the 6 without, else None.

    insightface's own ``SCRFD`` class goes by the output count (names differ between exports:
    ``score_8 ...`` in scrfd_500m_bnkps.onnx, numbers in buffalo_l's det_10g.onnx); the last
    dimension (1 score, 4 box distances, 10 keypoint coordinates per anchor) confirms it when declared.
    """
    last = [s[-1] if s else None for s in shapes]
    known = [d for d in last if isinstance(d, int)]
    for layout, count, allowed in (("kps", 9, {1: 3, 4: 3, 10: 3}), ("no_kps", 6, {1: 3, 4: 3})):
        if len(shapes) != count:
            continue
        if all(d in allowed for d in known) and all(known.count(d) <= n for d, n in allowed.items()):
            return layout
    return None


def inspect_onnx(path: str | os.PathLike) -> OnnxModelInfo:
    """Read an ONNX file's graph inputs, outputs and metadata (weights not interpreted).

    Raises:
        CheckpointError: the file is missing, is not ONNX, is not a face detector this project runs,
            or is an SCRFD without keypoints (alignment needs the five landmarks).
    """
    path = Path(path)
    model = _load(path)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    outputs = list(graph.output)
    names = tuple(o.name for o in outputs)
    shapes = [_dims(o) for o in outputs]
    metadata = {p.key: p.value for p in model.metadata_props}
    if len(inputs) != 1:
        raise CheckpointError(f"{path}: not a face detector: expected one image input, found "
                              f"{[i.name for i in inputs]} (outputs {list(names)})")
    input_name, input_shape = inputs[0].name, _dims(inputs[0])

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
    layout = _scrfd_layout(shapes)
    if layout == "kps":
        return info("scrfd", None)
    if layout == "no_kps":
        raise CheckpointError(f"{path}: an SCRFD face detector without keypoints (6 outputs {list(names)}); "
                              "alignment needs the five landmarks: use a *_kps / *_bnkps model such as "
                              "scrfd_500m_bnkps.onnx or buffalo_l's det_10g.onnx")
    described = [f"{n} {list(s)}" for n, s in zip(names, shapes)]
    raise CheckpointError(
        f"{path}: not a face detector: unexpected outputs {described} (expected a RetinaFace from "
        "`python -m detector export`, with faceprep metadata, or an insightface SCRFD with 9 "
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
