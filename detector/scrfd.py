"""insightface's SCRFD face detectors (ONNX files with 5 keypoints) behind :class:`detector.api.FaceDetector`.

The reference is ``insightface.model_zoo.scrfd.SCRFD``; :class:`SCRFDDetector` reproduces its
``detect`` (same preprocessing, decoding, threshold and NMS) on batches of images, with the decoding
done here in torch, batched over the images, like :class:`detector.inference.RetinaFacePostprocess`.

Model files
    Any insightface SCRFD export with keypoints: 9 outputs (strides 8, 16, 32, two anchors per
    location) or 15 outputs (strides 8 ... 128, one anchor). As in insightface, outputs are read by
    ORDER, never by name (``det_10g.onnx`` of ``buffalo_l`` has numeric names): all score maps, then
    all box-distance maps, then all keypoint-distance maps, shallowest stride first. Outputs may be
    ``[A, C]`` (one image per run, e.g. ``det_10g.onnx``) or ``[B, A, C]``. Files without keypoints
    (6 or 10 outputs) are refused: the pipeline aligns on the 5 points.

    A file whose graph fixes its input size (``scrfd_500m_bnkps.onnx``: ``1x3x640x640``, with the
    FPN upsampling written as fixed output sizes and the output reshapes as ``[1, -1, C]``) is made
    shape-generic in memory when that is provably safe: fixed-size ``Resize`` nodes become the same
    integer scale factors, a leading ``1`` of constant reshape targets becomes ``0`` (copy the batch),
    the input dimensions become symbolic. The rewritten graph is checked against the original at the
    file's own size (outputs within 1e-4), at another size (output shapes) and at batch 2 (each image
    equals its single run) before it is used; if any check fails the original file is used as it is,
    at its own size only.

Preprocessing (insightface's, exactly)
    The uint8 BGR image is resized with ``cv2.resize`` (bilinear, on uint8), placed top-left on a
    black uint8 canvas, converted to RGB and normalised as ``(x - 127.5) / 128`` in float32 (what
    ``cv2.dnn.blobFromImage(img, 1/128, size, (127.5,) * 3, swapRB=True)`` computes).

How :class:`~detector.config.ResizePolicy` maps to the network input
    ``long:N``
        insightface's ``detect(img, input_size=(N, N))``: the image is letterboxed into an ``N x N``
        canvas (the long side becomes ``N``, the other ``int(N * short / long)``), and boxes are
        divided by insightface's ``det_scale = new_height / height`` on both axes (its convention,
        kept so that results match it; it is off by less than one resized pixel from the exact
        per-axis factor). ``long:640`` is insightface's default ``det_size``. ``N`` should be a
        multiple of 32 (the largest stride); otherwise the canvas is padded up to one.
    ``cap:N``
        as ``long:N`` for images whose long side exceeds ``N``; smaller images are not resized but
        still placed on the ``N x N`` canvas.
    ``original`` / ``short:S[,MAX]`` / ``widerface``
        the image is scaled by the policy's factor (``original``: not at all; otherwise ``cv2.resize``
        to ``round(h * s), round(w * s)``), and the canvas is that image padded with black to a
        multiple of the largest stride. Boxes are divided by the per-axis factors.

    Mixed-size batches: images sharing a canvas run together (one session call when the graph takes
    a batch, else one call per image); images with different canvases (``original``, ``short``) run
    in separate calls. Either way every image is computed exactly as it would be alone, and all of
    them are decoded together. A file with a fixed input size only runs policies whose canvas is that
    size (``long:640`` for ``scrfd_500m_bnkps.onnx`` if its rewrite were refused).

Postprocessing
    Score threshold (kept when ``score >= conf_threshold``, insightface's comparison), the
    ``top_k`` best (ties in file order, as insightface's stable sort), decode of the survivors
    only (``centre -/+ distance * stride``; keypoints ``centre + distance * stride``), division by the
    resize factors, greedy NMS in original-image pixels with insightface's +1-pixel areas, then
    ``keep_top_k``. :data:`SCRFD_POSTPROCESS` holds insightface's defaults (``det_thresh`` 0.5,
    ``nms_thresh`` 0.4). The rule for a :class:`~detector.spec.DetectorSpec`: when its ``postprocess``
    is the project default :class:`~detector.api.PostprocessConfig` ``()`` (which is RetinaFace's
    reference setting, confidence 0.02), SCRFD uses :data:`SCRFD_POSTPROCESS`; any other value is used
    as given. Per-call overrides (``detect(..., conf_threshold=0.02)``) always apply.
    insightface's ``max_num`` (largest / most central faces) is not part of the interface.

Landmarks come out in insightface's keypoint order, which is the project's: left eye, right eye,
nose, left mouth corner, right mouth corner (image left first).
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from .api import Detections, PostprocessConfig, as_bgr_uint8, check_image_list
from .boxes import chunked_padded_nms
from .config import ResizePolicy
from .hub import CheckpointError
from .onnx_session import OnnxSession, open_session

if TYPE_CHECKING:  # pragma: no cover
    from .spec import DetectorSpec

__all__ = ["SCRFDDetector", "SCRFDLayout", "SCRFD_POSTPROCESS", "scrfd_postprocess", "scrfd_layout"]

SCRFD_POSTPROCESS = PostprocessConfig(conf_threshold=0.5, nms_threshold=0.4, top_k=5000, keep_top_k=750,
                                      nms_plus_one=True)
"""insightface ``SCRFD`` defaults: ``det_thresh = 0.5``, ``nms_thresh = 0.4`` (+1-pixel areas); it has no
top-k, so the project's generous 5000 / 750 stand in."""

_INPUT_MEAN = 127.5
_INPUT_STD = 128.0


def scrfd_postprocess(config: PostprocessConfig | None) -> PostprocessConfig:
    """The postprocessing an SCRFD detector uses for a spec's ``postprocess``: the project default
    ``PostprocessConfig()`` (RetinaFace's reference setting) or ``None`` -> :data:`SCRFD_POSTPROCESS`;
    anything else as given."""
    if config is None or config == PostprocessConfig():
        return SCRFD_POSTPROCESS
    return config


# ---------------------------------------------------------------------------- model layout


@dataclass(frozen=True)
class SCRFDLayout:
    """What the detector needs to know about an SCRFD graph.

    Attributes:
        strides: feature strides, shallowest first (8, 16, 32 or 8 ... 128).
        num_anchors: anchors per feature-map location (2 for 3-level models, 1 for 5-level ones).
        input_hw: the graph's fixed input ``(H, W)``, or ``None`` when any multiple of the largest
            stride runs.
        batch: the graph takes ``B > 1`` images in one call, giving ``[B, A, C]`` outputs.
    """

    strides: tuple[int, ...]
    num_anchors: int
    input_hw: tuple[int, int] | None = None
    batch: bool = False

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def align(self) -> int:
        return max(self.strides)

    def anchors_per_level(self, height: int, width: int) -> list[int]:
        return [(height // s) * (width // s) * self.num_anchors for s in self.strides]


def scrfd_layout(num_outputs: int) -> tuple[tuple[int, ...], int]:
    """``(strides, anchors per location)`` of an SCRFD graph with keypoints, from its output count
    (insightface's rule); raises :class:`CheckpointError` for anything else."""
    if num_outputs == 9:
        return (8, 16, 32), 2
    if num_outputs == 15:
        return (8, 16, 32, 64, 128), 1
    if num_outputs in (6, 10):
        raise CheckpointError(
            f"this SCRFD model has {num_outputs} outputs: no keypoints. The pipeline aligns faces on 5 "
            "landmarks; use a *_kps / *_bnkps model (9 or 15 outputs), e.g. det_10g.onnx or scrfd_500m_bnkps.onnx")
    raise CheckpointError(f"not an SCRFD model: {num_outputs} outputs (SCRFD with keypoints has 9 or 15)")


def _fixed_dim(dim: Any) -> int | None:
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


# ---------------------------------------------------------------------------- making a fixed graph shape-generic


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _static_shapes(model: Any) -> dict[str, list[int | None]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {vi.name: [_fixed_dim(d) for d in vi.type.tensor_type.shape.dim]
            for vi in (*g.value_info, *g.input, *g.output)}


def _dynamic_graph(model: Any) -> Any | None:
    """A copy of a fixed-size SCRFD graph that runs any input size and batch, or ``None`` when a
    node cannot be made generic this way (see the module docstring). Not yet checked numerically."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts = _constants(graph)
    shapes = _static_shapes(model)
    new_inits = []
    replaced: set[str] = set()
    for n, node in enumerate(graph.node):
        if node.op_type == "Resize" and len(node.input) >= 4 and node.input[3]:
            sizes = consts.get(node.input[3])
            if sizes is None:  # computed from shapes at run time: already generic
                continue
            x_shape = shapes.get(node.input[0])
            if not x_shape or None in x_shape or len(x_shape) != len(sizes):
                return None
            ratio = np.asarray(sizes, np.float64) / np.asarray(x_shape, np.float64)
            if not np.allclose(ratio, np.round(ratio)) or (np.round(ratio[:2]) != 1).any():
                return None
            name = f"_scrfd_dynamic_resize_scales_{n}"
            new_inits.append(numpy_helper.from_array(np.round(ratio).astype(np.float32), name))
            node.input[2] = name
            replaced.add(node.input[3])
            del node.input[3]
        elif node.op_type == "Reshape":
            target = consts.get(node.input[1])
            if target is None:
                continue
            data_shape = shapes.get(node.input[0]) or []
            target = np.asarray(target, np.int64).copy()
            if target.size >= 2 and target[0] == 1 and data_shape and data_shape[0] == 1:
                target[0] = 0  # copy the batch dimension
                name = f"_scrfd_dynamic_reshape_{n}"
                new_inits.append(numpy_helper.from_array(target, name))
                replaced.add(node.input[1])
                node.input[1] = name
    graph.initializer.extend(new_inits)
    used = {name for node in graph.node for name in node.input}
    stale = replaced - used  # the size / shape constants no node reads any more
    for init in [i for i in graph.initializer if i.name in stale]:
        graph.initializer.remove(init)
    for value in [v for v in graph.input if v.name in stale]:  # IR < 4 lists initializers as inputs
        graph.input.remove(value)
    inp = graph.input[0].type.tensor_type.shape.dim
    if len(inp) != 4:
        return None
    for dim, name in zip(inp, ("batch", None, "height", "width")):
        if name is not None:
            dim.Clear()
            dim.dim_param = name
    for i, out in enumerate(graph.output):
        dims = out.type.tensor_type.shape.dim
        for j, dim in enumerate(dims):
            if j < len(dims) - 1:
                dim.Clear()
                dim.dim_param = f"out{i}_d{j}"
    del graph.value_info[:]
    return model


def _probe_inputs(hw: tuple[int, int], batch: int, seed: int) -> np.ndarray:
    """Deterministic network inputs in the normalised range."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(batch, 3, hw[0], hw[1])).astype(np.float32)


def _outputs_close(a: list[np.ndarray], b: list[np.ndarray], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.abs(x.astype(np.float64) - y).max() <= tol
                                    for x, y in zip(a, b))


def _expected_shapes(strides: tuple[int, ...], anchors: int, hw: tuple[int, int]) -> list[tuple[int, int]]:
    counts = [(hw[0] // s) * (hw[1] // s) * anchors for s in strides]
    return [(c, width) for width in (1, 4, 10) for c in counts]


def _shapes_ok(outs: list[np.ndarray], expected: list[tuple[int, int]], batch: int) -> bool:
    if len(outs) != len(expected):
        return False
    for o, (rows, cols) in zip(outs, expected):
        if o.ndim == 3 and o.shape != (batch, rows, cols):
            return False
        if o.ndim == 2 and (batch != 1 or o.shape != (rows, cols)):
            return False
        if o.ndim not in (2, 3):
            return False
    return True


def _batch_ok(session: OnnxSession, strides: tuple[int, ...], anchors: int, hw: tuple[int, int]) -> bool:
    """Does ``session`` run a batch of 2 at ``hw`` giving each image its single-run outputs?"""
    x = _probe_inputs(hw, 2, seed=1)
    try:
        both = session.run(x)
    except Exception:
        return False
    if not _shapes_ok(both, _expected_shapes(strides, anchors, hw), 2):
        return False
    singles = [session.run(np.ascontiguousarray(x[i:i + 1])) for i in range(2)]
    return all(_outputs_close([o[i:i + 1] for o in both], singles[i]) for i in range(2))


_REWRITES: dict[tuple, bytes | None] = {}
_REWRITES_LOCK = threading.Lock()


def _open_temp_session(data: bytes, **kwargs: Any) -> OnnxSession:
    fd, name = tempfile.mkstemp(suffix=".onnx", prefix="scrfd_dynamic_")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return open_session(name, **kwargs)
    finally:
        os.unlink(name)


# ---------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class _Placement:
    """Where one image goes: resized to ``new_hw``, top-left on a ``canvas_hw`` canvas; network-input
    coordinates are divided by ``scale = (sx, sy)`` to get original pixels."""

    new_hw: tuple[int, int]
    canvas_hw: tuple[int, int]
    scale: tuple[float, float]


def _round_up(x: int, align: int) -> int:
    return int(math.ceil(x / align) * align)


def _letterbox(h: int, w: int, canvas_w: int, canvas_h: int) -> tuple[tuple[int, int], float]:
    """insightface ``SCRFD.detect``'s fit into a ``(canvas_w, canvas_h)`` input: new (h, w) and its
    ``det_scale``."""
    im_ratio = float(h) / w
    model_ratio = float(canvas_h) / canvas_w
    if im_ratio > model_ratio:
        new_h = canvas_h
        new_w = int(new_h / im_ratio)
    else:
        new_w = canvas_w
        new_h = int(new_w * im_ratio)
    new_h, new_w = max(1, new_h), max(1, new_w)
    return (new_h, new_w), float(new_h) / h


def plan_input(h: int, w: int, policy: ResizePolicy, *, align: int,
               fixed_hw: tuple[int, int] | None = None) -> _Placement:
    """The placement of an ``h x w`` image under ``policy`` (see the module docstring)."""
    if policy.mode in ("long_side", "cap"):
        n = int(policy.size)
        canvas = (_round_up(n, align), _round_up(n, align))
        if policy.mode == "cap" and max(h, w) <= n:
            placement = _Placement((h, w), canvas, (1.0, 1.0))
        else:
            new_hw, det_scale = _letterbox(h, w, n, n)
            placement = _Placement(new_hw, canvas, (det_scale, det_scale))
    else:
        s = policy.scale(h, w)
        if s == 1.0:
            new_hw = (h, w)
        else:
            new_hw = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        placement = _Placement(new_hw, (_round_up(new_hw[0], align), _round_up(new_hw[1], align)),
                               (new_hw[1] / w, new_hw[0] / h))
    if fixed_hw is not None and placement.canvas_hw != tuple(fixed_hw):
        raise ValueError(
            f"this SCRFD file only runs at {fixed_hw[1]}x{fixed_hw[0]} and resize {policy.to_string()!r} "
            f"needs a {placement.canvas_hw[1]}x{placement.canvas_hw[0]} input; use resize "
            f"long:{max(fixed_hw)}" + ("" if fixed_hw[0] == fixed_hw[1] else " (with a square file)"))
    return placement


def _blob(canvases: np.ndarray) -> np.ndarray:
    """uint8 BGR ``[B, H, W, 3]`` -> float32 RGB NCHW ``(x - 127.5) / 128``, as ``cv2.dnn.blobFromImage``."""
    x = canvases[..., ::-1].astype(np.float32)
    x -= _INPUT_MEAN
    x /= _INPUT_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# ---------------------------------------------------------------------------- the detector


class SCRFDDetector:
    """insightface SCRFD (ONNX, with keypoints) on onnxruntime or OpenVINO; see the module docstring.

    Build it with ``DetectorSpec(weights="det_10g.onnx", family="scrfd", resize="long:640").build()``
    (or :meth:`from_spec`). :meth:`detect` (or calling the instance) takes a list of uint8 BGR images
    of any sizes and returns one :class:`Detections` per image (torch CPU tensors, original pixels,
    sorted by score).

    Attributes:
        resize: the default :class:`ResizePolicy` (``long:640`` is insightface's ``det_size``).
        postprocess_config: the default :class:`PostprocessConfig`.
        layout: the graph's :class:`SCRFDLayout`.
        session: the :class:`~detector.onnx_session.OnnxSession`.
    """

    def __init__(self, weights: str | os.PathLike, *, runtime: str = "onnxruntime", precision: str = "fp32",
                 device: str = "cpu", threads: int | None = None,
                 resize: "ResizePolicy | str | int | None" = "long:640",
                 postprocess: PostprocessConfig | None = None, shape_generic: bool = True,
                 max_batch: int = 32, nms_budget: int = 64_000_000) -> None:
        self.weights = Path(weights)
        self.runtime = runtime
        self.resize = ResizePolicy.parse(resize)
        self.postprocess_config = postprocess if postprocess is not None else SCRFD_POSTPROCESS
        self.max_batch = int(max_batch)
        self.nms_budget = int(nms_budget)
        self._geometry: dict[tuple[int, int], Tensor] = {}
        self.session, self.layout = self._open(dict(runtime=runtime, precision=precision, device=device,
                                                    threads=threads), shape_generic)

    @classmethod
    def from_spec(cls, spec: "DetectorSpec") -> "SCRFDDetector":
        """The detector of a resolved :class:`~detector.spec.DetectorSpec` (``family="scrfd"``); its
        ``postprocess`` goes through :func:`scrfd_postprocess`."""
        if spec.runtime not in ("onnxruntime", "openvino") or not spec.weights or not Path(spec.weights).is_file():
            spec = spec.resolved()
        if spec.runtime not in ("onnxruntime", "openvino"):
            raise CheckpointError(f"SCRFD runs on onnxruntime or openvino, not {spec.runtime!r}")
        return cls(spec.weights, runtime=spec.runtime, precision=spec.precision, device=spec.device,
                   threads=spec.threads, resize=spec.resize, postprocess=scrfd_postprocess(spec.postprocess))

    # ------------------------------------------------------------------ loading
    def _open(self, session_args: dict[str, Any], shape_generic: bool) -> tuple[OnnxSession, SCRFDLayout]:
        import onnx

        path = self.weights
        if not path.is_file():
            raise CheckpointError(f"SCRFD weights not found: {path}")
        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable ONNX file ({exc})") from exc
        strides, anchors = scrfd_layout(len(model.graph.output))
        dims = model.graph.input[0].type.tensor_type.shape.dim
        if len(dims) != 4:
            raise CheckpointError(f"{path}: SCRFD input must be NCHW, got rank {len(dims)}")
        fixed_hw = (_fixed_dim(dims[2]), _fixed_dim(dims[3]))
        fixed_batch = _fixed_dim(dims[0])
        out_ranks = {len(o.type.tensor_type.shape.dim) for o in model.graph.output}

        if None not in fixed_hw and shape_generic:
            data = self._rewrite(model, path, session_args, strides, anchors, fixed_hw)
            if data is not None:
                session = _open_temp_session(data, **session_args)
                probe = (3 * max(strides), 4 * max(strides))
                return session, SCRFDLayout(strides, anchors, None, _batch_ok(session, strides, anchors, probe))
        session = open_session(path, **session_args)
        input_hw = None if None in fixed_hw else (int(fixed_hw[0]), int(fixed_hw[1]))
        probe = input_hw or (3 * max(strides), 4 * max(strides))
        batch = fixed_batch is None and out_ranks == {3} and _batch_ok(session, strides, anchors, probe)
        if input_hw is None:
            # a shape-generic file: make sure the output order is what SCRFD decoding assumes
            outs = session.run(_probe_inputs(probe, 1, seed=0))
            if not _shapes_ok(outs, _expected_shapes(strides, anchors, probe), 1):
                raise CheckpointError(
                    f"{path}: outputs {[o.shape for o in outs]} are not SCRFD's (scores, boxes, keypoints per "
                    f"stride {', '.join(map(str, strides))}, in that order)")
        return session, SCRFDLayout(strides, anchors, input_hw, bool(batch))

    @staticmethod
    def _rewrite(model: Any, path: Path, session_args: dict[str, Any], strides: tuple[int, ...], anchors: int,
                 fixed_hw: tuple[int, int]) -> bytes | None:
        """The checked shape-generic version of a fixed-size file, or ``None`` (memoised per file and
        runtime in this process)."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, tuple(sorted(session_args.items())))
        with _REWRITES_LOCK:
            if key in _REWRITES:
                return _REWRITES[key]
        data: bytes | None = None
        try:
            dynamic = _dynamic_graph(model)
            if dynamic is not None:
                candidate = dynamic.SerializeToString()
                original = open_session(path, **session_args)
                generic = _open_temp_session(candidate, **session_args)
                x = _probe_inputs(fixed_hw, 1, seed=0)
                other = (fixed_hw[0] // 2 // max(strides) * max(strides) or max(strides),
                         fixed_hw[1] + max(strides))
                same = _outputs_close(generic.run(x), original.run(x))
                shaped = _shapes_ok(generic.run(_probe_inputs(other, 1, seed=2)),
                                    _expected_shapes(strides, anchors, other), 1)
                if same and shaped:
                    data = candidate
        except Exception:  # any failure: keep the file as it is
            data = None
        with _REWRITES_LOCK:
            _REWRITES[key] = data
        return data

    # ------------------------------------------------------------------ geometry
    def _anchor_geometry(self, canvas_hw: tuple[int, int]) -> Tensor:
        """``Tensor[A, 3]``: anchor centre x, y and stride, in the graph's output order."""
        g = self._geometry.get(canvas_hw)
        if g is None:
            parts = []
            for s in self.layout.strides:
                fh, fw = canvas_hw[0] // s, canvas_hw[1] // s
                ys, xs = torch.meshgrid(torch.arange(fh, dtype=torch.float32),
                                        torch.arange(fw, dtype=torch.float32), indexing="ij")
                level = torch.stack([xs * s, ys * s, torch.full_like(xs, float(s))], dim=-1).reshape(-1, 1, 3)
                parts.append(level.expand(-1, self.layout.num_anchors, 3).reshape(-1, 3))
            g = torch.cat(parts)
            if len(self._geometry) < 64:
                self._geometry[canvas_hw] = g
        return g

    # ------------------------------------------------------------------ inference
    def _run(self, images: Sequence[np.ndarray], plans: Sequence[_Placement],
             canvas_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Images sharing ``canvas_hw`` -> scores ``[b, A]`` and distances ``[b, A, 14]`` (box l, t, r, b
        then 5 keypoint x, y, in units of stride), in the graph's anchor order. One session call per
        ``max_batch`` images when the graph takes a batch, else one per image."""
        step = self.max_batch if self.layout.batch else 1
        expected = _expected_shapes(self.layout.strides, self.layout.num_anchors, canvas_hw)
        n = self.layout.num_levels
        scores, dists = [], []
        for start in range(0, len(images), step):
            chunk = range(start, min(start + step, len(images)))
            canvases = np.zeros((len(chunk), canvas_hw[0], canvas_hw[1], 3), np.uint8)  # black letterbox
            for j, i in enumerate(chunk):
                img, (nh, nw) = images[i], plans[i].new_hw
                if (nh, nw) != img.shape[:2]:
                    img = cv2.resize(img, (nw, nh))  # bilinear on uint8, as insightface
                canvases[j, :nh, :nw] = img
            outs = self.session.run(_blob(canvases))
            b = len(chunk)
            if not _shapes_ok(outs, expected, b):
                raise CheckpointError(
                    f"{self.weights.name}: outputs {[tuple(o.shape) for o in outs]} at input "
                    f"{canvas_hw[1]}x{canvas_hw[0]} are not SCRFD's (expected {expected})")
            outs = [o.reshape(b, o.shape[-2], o.shape[-1]) for o in outs]
            scores.append(np.concatenate(outs[:n], axis=1)[..., 0])
            dists.append(np.concatenate([np.concatenate(outs[n:2 * n], axis=1),
                                         np.concatenate(outs[2 * n:], axis=1)], axis=2))
        return np.concatenate(scores), np.concatenate(dists)

    def detect(self, images: Sequence[np.ndarray], *, resize: "ResizePolicy | str | int | None" = None,
               conf_threshold: float | None = None, nms_threshold: float | None = None,
               top_k: int | None = None, keep_top_k: int | None = None) -> list[Detections]:
        """Detect faces; one :class:`Detections` per image (torch CPU tensors, original pixels)."""
        check_image_list(images)
        cfg = self.postprocess_config.override(conf_threshold=conf_threshold, nms_threshold=nms_threshold,
                                               top_k=top_k, keep_top_k=keep_top_k)
        policy = self.resize if resize is None else ResizePolicy.parse(resize)

        images = [as_bgr_uint8(img, i) for i, img in enumerate(images)]
        plans = [plan_input(img.shape[0], img.shape[1], policy, align=self.layout.align,
                            fixed_hw=self.layout.input_hw) for img in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(plans):
            groups.setdefault(p.canvas_hw, []).append(i)

        batch_size = len(images)
        per_group = []
        for canvas_hw, members in groups.items():
            s, d = self._run([images[i] for i in members], [plans[i] for i in members], canvas_hw)
            per_group.append((members, torch.from_numpy(s), torch.from_numpy(d), self._anchor_geometry(canvas_hw)))

        if len(per_group) == 1 and per_group[0][0] == list(range(batch_size)):
            _, scores, dists, geometry = per_group[0]
            geometry = geometry.expand(batch_size, -1, -1)
        else:  # different canvases: pad to the longest anchor list (padding never passes the threshold)
            a_max = max(g[1].shape[1] for g in per_group)
            scores = torch.full((batch_size, a_max), -1.0)
            dists = torch.zeros((batch_size, a_max, 14))
            geometry = torch.zeros((batch_size, a_max, 3))
            for members, s, d, geo in per_group:
                idx = torch.tensor(members)
                scores[idx, : s.shape[1]] = s
                dists[idx, : s.shape[1]] = d
                geometry[idx, : s.shape[1]] = geo
        scales = torch.tensor([p.scale for p in plans], dtype=torch.float32)  # [B, 2] (sx, sy)
        return self._decode(scores, dists, geometry, scales, cfg)

    __call__ = detect

    @torch.inference_mode()
    def _decode(self, scores: Tensor, dists: Tensor, geometry: Tensor, scales: Tensor,
                cfg: PostprocessConfig) -> list[Detections]:
        batch_size = scores.shape[0]
        above = scores >= cfg.conf_threshold
        k = min(int(above.sum(dim=1).max()) if scores.numel() else 0, int(cfg.top_k))
        if k == 0:
            empty = Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 5, 2))
            return [empty] * batch_size
        top, idx = scores.topk(k, dim=1)
        # insightface orders by a stable sort: equal scores keep file order
        idx, perm = idx.sort(dim=1)
        top = top.gather(1, perm)
        top, perm = top.sort(dim=1, descending=True, stable=True)
        idx = idx.gather(1, perm)
        valid = top >= cfg.conf_threshold

        geo = torch.gather(geometry, 1, idx[..., None].expand(-1, -1, 3))  # [B, K, 3]
        d = torch.gather(dists, 1, idx[..., None].expand(-1, -1, 14)) * geo[..., 2:3]
        cx, cy = geo[..., 0], geo[..., 1]
        boxes = torch.stack([cx - d[..., 0], cy - d[..., 1], cx + d[..., 2], cy + d[..., 3]], dim=-1)
        kps = geo[..., None, :2] + d[..., 4:].reshape(batch_size, k, 5, 2)
        sxy = scales[:, None, :]  # [B, 1, 2]
        boxes = boxes / sxy.repeat(1, 1, 2)
        kps = kps / sxy[:, :, None, :]

        keep = chunked_padded_nms(boxes, top, valid, cfg.nms_threshold, plus_one=cfg.nms_plus_one,
                                  budget=self.nms_budget)
        keep &= keep.cumsum(dim=1) <= cfg.keep_top_k
        return [Detections(boxes[b][keep[b]], top[b][keep[b]], kps[b][keep[b]]) for b in range(batch_size)]

    def __repr__(self) -> str:
        return (f"SCRFDDetector({self.weights.name}, runtime={self.runtime}, strides={self.layout.strides}, "
                f"batch={self.layout.batch}, input={self.layout.input_hw or 'any'}, resize={self.resize.to_string()})")
