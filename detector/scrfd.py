"""insightface's SCRFD face detectors (ONNX files with 5 keypoints) behind :class:`detector.api.FaceDetector`.

The reference is ``insightface.model_zoo.scrfd.SCRFD``; :class:`SCRFDDetector` reproduces its
``detect`` (same preprocessing, decoding, threshold and NMS) on batches of images. It is a
:class:`detector.dense.DenseDetector`: grouping, top-k, NMS and rescale are the base's (numpy, no
torch); this module supplies the preprocessing, the forward pass and the decoding.

Model files
    Any insightface SCRFD export with keypoints: 9 outputs (strides 8, 16, 32, two anchors per
    location) or 15 outputs (strides 8 ... 128, one anchor). As in insightface, outputs are read by
    ORDER, never by name (``det_10g.onnx`` of ``buffalo_l`` has numeric names): all score maps, then
    all box-distance maps, then all keypoint-distance maps, shallowest stride first. Outputs may be
    ``[A, C]`` (one image per run, e.g. ``det_10g.onnx``) or ``[B, A, C]``. Files without keypoints
    (6 or 10 outputs) are refused: the pipeline aligns on the 5 points.

    A file whose graph fixes its input size (``scrfd_500m_bnkps.onnx``: ``1x3x640x640``, with the
    FPN upsampling written as fixed output sizes and the output reshapes as ``[1, -1, C]``) is made
    shape-generic when that is provably safe (:mod:`detector.scrfd_graph`: the rewrite, its checks
    against the original, and its copy in the cache, found by the file's content hash); if any check
    fails the original file is used as it is, at its own size only. The output layout comes from
    :mod:`detector.scrfd_layout`.

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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .api import PostprocessConfig
from .config import ResizePolicy
from .dense import DenseDetector, InputPlan
from .families import Family, register_family
from .hub import CheckpointError
from .onnx_session import OnnxSession, open_session
from .postprocess import top_candidates
from .scrfd_graph import batch_ok, probe_inputs, shape_generic_file, shapes_ok
from .scrfd_layout import SCRFDLayout, scrfd_layout

if TYPE_CHECKING:  # pragma: no cover
    from .spec import DetectorSpec

__all__ = ["SCRFDDetector", "SCRFDLayout", "SCRFD_POSTPROCESS", "plan_input", "scrfd_postprocess", "scrfd_layout"]

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


# ---------------------------------------------------------------------------- preprocessing


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
               fixed_hw: tuple[int, int] | None = None) -> InputPlan:
    """The placement of an ``h x w`` image under ``policy`` (see the module docstring)."""
    if policy.mode in ("long_side", "cap"):
        n = int(policy.size)
        canvas = (_round_up(n, align), _round_up(n, align))
        if policy.mode == "cap" and max(h, w) <= n:
            placement = InputPlan((h, w), canvas, (1.0, 1.0))
        else:
            new_hw, det_scale = _letterbox(h, w, n, n)
            placement = InputPlan(new_hw, canvas, (det_scale, det_scale))
    else:
        s = policy.scale(h, w)
        if s == 1.0:
            new_hw = (h, w)
        else:
            new_hw = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        placement = InputPlan(new_hw, (_round_up(new_hw[0], align), _round_up(new_hw[1], align)),
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


class SCRFDDetector(DenseDetector):
    """insightface SCRFD (ONNX, with keypoints) on onnxruntime or OpenVINO; see the module docstring.

    Build it with ``DetectorSpec(weights="det_10g.onnx", family="scrfd", resize="long:640").build()``
    (or :meth:`from_spec`). :meth:`detect` (or calling the instance) takes a list of uint8 BGR images
    of any sizes and returns one :class:`~detector.api.Detections` per image (float32 numpy arrays,
    original pixels, sorted by score).

    Attributes:
        resize: the default :class:`ResizePolicy` (``long:640`` is insightface's ``det_size``).
        postprocess_config: the default :class:`PostprocessConfig`.
        layout: the graph's :class:`SCRFDLayout`.
        session: the :class:`~detector.onnx_session.OnnxSession`.
    """

    def __init__(self, weights: str | os.PathLike, *, runtime: str = "onnxruntime", precision: str = "fp32",
                 device: str = "cpu", threads: int | None = None,
                 resize: ResizePolicy | str | int | None = "long:640",
                 postprocess: PostprocessConfig | None = None, shape_generic: bool = True,
                 max_batch: int = 32) -> None:
        self.weights = Path(weights)
        self.runtime = runtime
        self.resize = ResizePolicy.parse(resize)
        self.postprocess_config = postprocess if postprocess is not None else SCRFD_POSTPROCESS
        self.max_batch = int(max_batch)
        self._geometry: dict[tuple[int, int], np.ndarray] = {}
        self.session, self.layout = self._open(dict(runtime=runtime, precision=precision, device=device,
                                                    threads=threads), shape_generic)

    @classmethod
    def from_spec(cls, spec: DetectorSpec) -> SCRFDDetector:
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
        """The session (of the shape-generic copy when the file fixes its size and the rewrite holds)
        and the graph's layout, from what the runtime reads of the file (no ``onnx`` package, except
        to rewrite a fixed-size file the first time)."""
        path = self.weights
        if not path.is_file():
            raise CheckpointError(f"SCRFD weights not found: {path}")

        def open_file(p: Path) -> OnnxSession:
            return open_session(p, **session_args)

        session = open_file(path)
        strides, anchors = scrfd_layout(len(session.output_names))
        if len(session.input_shape) != 4:
            raise CheckpointError(f"{path}: SCRFD input must be NCHW, got rank {len(session.input_shape)}")
        fixed_batch, _, fh, fw = session.input_shape
        probe = (3 * max(strides), 4 * max(strides))
        if fh is not None and fw is not None and shape_generic:
            generic = shape_generic_file(path, open_file, lambda: session, SCRFDLayout(strides, anchors),
                                         (int(fh), int(fw)))
            if generic is not None:
                session = open_file(generic)
                return session, SCRFDLayout(strides, anchors, None, batch_ok(session, SCRFDLayout(strides, anchors),
                                                                            probe))
        input_hw = None if fh is None or fw is None else (int(fh), int(fw))
        layout = SCRFDLayout(strides, anchors, input_hw)
        probe = input_hw or probe
        out_ranks = {len(s) for s in session.output_shapes}
        batch = fixed_batch is None and out_ranks == {3} and batch_ok(session, layout, probe)
        if input_hw is None:
            # a shape-generic file: make sure the output order is what SCRFD decoding assumes
            outs = session.run(probe_inputs(probe, 1, seed=0))
            if not shapes_ok(outs, layout.expected_shapes(probe), 1):
                raise CheckpointError(
                    f"{path}: outputs {[o.shape for o in outs]} are not SCRFD's (scores, boxes, keypoints per "
                    f"stride {', '.join(map(str, strides))}, in that order)")
        return session, SCRFDLayout(strides, anchors, input_hw, bool(batch))

    # ------------------------------------------------------------------ the family's parts
    def plan(self, height: int, width: int, policy: ResizePolicy) -> InputPlan:
        return plan_input(height, width, policy, align=self.layout.align, fixed_hw=self.layout.input_hw)

    def _anchor_geometry(self, canvas_hw: tuple[int, int]) -> np.ndarray:
        """``float32[A, 3]``: anchor centre x, y and stride, in the graph's output order."""
        g = self._geometry.get(canvas_hw)
        if g is None:
            parts = []
            for s in self.layout.strides:
                fh, fw = canvas_hw[0] // s, canvas_hw[1] // s
                ys, xs = np.meshgrid(np.arange(fh, dtype=np.float32), np.arange(fw, dtype=np.float32), indexing="ij")
                level = np.stack([xs * s, ys * s, np.full_like(xs, float(s))], axis=-1).reshape(-1, 1, 3)
                parts.append(np.broadcast_to(level, (level.shape[0], self.layout.num_anchors, 3)).reshape(-1, 3))
            g = np.concatenate(parts)
            if len(self._geometry) < 64:
                self._geometry[canvas_hw] = g
        return g

    def forward_group(self, images: Sequence[np.ndarray], plans: Sequence[InputPlan],
                canvas_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Images sharing ``canvas_hw`` -> scores ``float32[b, A]`` and distances ``[b, A, 14]`` (box l,
        t, r, b then 5 keypoint x, y, in units of stride), in the graph's anchor order. One session
        call per ``max_batch`` images when the graph takes a batch, else one per image."""
        step = self.max_batch if self.layout.batch else 1
        expected = self.layout.expected_shapes(canvas_hw)
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
            if not shapes_ok(outs, expected, b):
                raise CheckpointError(
                    f"{self.weights.name}: outputs {[tuple(o.shape) for o in outs]} at input "
                    f"{canvas_hw[1]}x{canvas_hw[0]} are not SCRFD's (expected {expected})")
            outs = [o.reshape(b, o.shape[-2], o.shape[-1]) for o in outs]
            scores.append(np.concatenate(outs[:n], axis=1)[..., 0])
            dists.append(np.concatenate([np.concatenate(outs[n:2 * n], axis=1),
                                         np.concatenate(outs[2 * n:], axis=1)], axis=2))
        if len(scores) == 1:
            return scores[0], dists[0]
        return np.concatenate(scores), np.concatenate(dists)

    def select(self, raw: tuple[np.ndarray, np.ndarray], index: int,
               config: PostprocessConfig) -> tuple[np.ndarray, np.ndarray]:
        """Kept when ``score >= conf_threshold`` (insightface's comparison); ties in file order (its
        stable sort)."""
        scores = raw[0][index]
        idx = top_candidates(scores, scores >= config.conf_threshold, int(config.top_k))
        return idx, scores[idx].astype(np.float32)

    def decode(self, raw: tuple[np.ndarray, np.ndarray], index: int, anchors: np.ndarray,
               canvas_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``centre -/+ distance * stride``; keypoints ``centre + distance * stride``."""
        geo = self._anchor_geometry(canvas_hw)[anchors]  # [K, 3]
        d = raw[1][index][anchors] * geo[:, 2:3]
        cx, cy = geo[:, 0], geo[:, 1]
        boxes = np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], axis=-1)
        kps = geo[:, None, :2] + d[:, 4:].reshape(-1, 5, 2)
        return boxes.astype(np.float32), kps.astype(np.float32)

    def __repr__(self) -> str:
        return (f"SCRFDDetector({self.weights.name}, runtime={self.runtime}, strides={self.layout.strides}, "
                f"batch={self.layout.batch}, input={self.layout.input_hw or 'any'}, resize={self.resize.to_string()})")


register_family(Family(name="scrfd", runtimes=("onnxruntime", "openvino"), build=SCRFDDetector.from_spec))
