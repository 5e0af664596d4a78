"""RetinaFace exported to ONNX (:mod:`detector.export`), run by onnxruntime or OpenVINO, without torch.

:class:`OnnxRetinaFace` is the ``onnxruntime`` / ``openvino`` runtime of the RetinaFace family
(:class:`detector.spec.DetectorSpec`), a :class:`detector.dense.DenseDetector`: the base groups the
images by their size after resizing (each group one unpadded batch, so every image gets exactly its
single-image result: a fixed graph cannot mask the padding as the eager path does), and finishes with
the numpy postprocess (:mod:`detector.postprocess`). This class supplies the resize (the eager path's,
the reference's float32 bilinear resize), the forward pass and the decode (threshold on the logit
margin, top-k, decode of the survivors with the one :class:`~detector.box_coder.BoxCoder`). The rest
of the preprocessing (channel order, mean, layout) belongs to the session
(:class:`detector.onnx_session.PixelInput`): OpenVINO runs it inside the compiled graph, so a photo
goes in as its float32 pixels with no other copy.

The architecture and preprocessing come from the file's metadata, read through the runtime's own
API (:attr:`detector.onnx_session.OnnxSession.metadata`): a process that builds and runs this
detector imports neither torch nor ``onnx``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .anchors import AnchorCache
from .api import Detections, PostprocessConfig, as_bgr_uint8, check_image_list
from .backbones import bf16_keep_f32 as _backbone_bf16_keep_f32
from .box_coder import BoxCoder
from .config import ModelConfig, ResizePolicy
from .dense import DenseDetector, InputPlan
from .families import Family, register_family
from .hub import CheckpointError
from .onnx_models import META_FAMILY, META_MODEL_CONFIG, OUTPUT_NAMES
from .onnx_session import OnnxSession, PixelInput, SessionSetup, open_session
from .postprocess import sigmoid, top_candidates

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from .model import RetinaFaceOutput
    from .spec import DetectorSpec

__all__ = ["OnnxRetinaFace", "build_retinaface", "model_config_of"]


def model_config_of(metadata: dict[str, str], path: str | os.PathLike) -> ModelConfig:
    """The :class:`ModelConfig` our export stores in the file's ``metadata_props``."""
    if metadata.get(META_FAMILY) != "retinaface":
        raise CheckpointError(f"{path}: not a RetinaFace exported by `python -m detector export` (no "
                              f"{META_FAMILY} metadata)")
    try:
        return ModelConfig.from_dict(json.loads(metadata[META_MODEL_CONFIG]))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: RetinaFace ONNX with an unreadable {META_MODEL_CONFIG!r} metadata entry "
                              f"({type(exc).__name__}: {exc}); re-export it with `python -m detector export`") from exc


class OnnxRetinaFace(DenseDetector):
    """A :class:`detector.api.FaceDetector` over an exported RetinaFace ONNX file.

    Build it with ``DetectorSpec(runtime="openvino", ...).build()`` (or :meth:`from_spec` /
    :meth:`from_onnx`). One ``detect`` call at a time per instance (it reuses its pixel buffers and
    its OpenVINO requests; one detector per thread or process). ``detect(images)`` takes a list of
    ``HxWx3`` uint8 BGR images of any sizes (or a ``Tensor[B, 3, H, W]`` of BGR pixels) and returns
    one :class:`Detections` per image: float32 numpy arrays in original-image pixels.

    ``bf16`` (OpenVINO) keeps some convolutions in f32: the backbone's ``bf16_keep_f32`` patterns
    (registered with the backbone, :func:`detector.backbones.bf16_keep_f32`).
    """

    def __init__(self, session: OnnxSession, config: ModelConfig, *,
                 resize: ResizePolicy | str | int | None = None,
                 postprocess: PostprocessConfig = PostprocessConfig(), path: str | os.PathLike | None = None) -> None:
        missing = [n for n in OUTPUT_NAMES if n not in session.output_names]
        if missing:
            raise CheckpointError(f"{path or 'ONNX model'}: outputs {list(session.output_names)} lack {missing}")
        if getattr(session, "pixels", None) is None:
            raise ValueError("OnnxRetinaFace needs a session opened with pixels=OnnxRetinaFace.pixel_input(config)")
        self.session = session
        self.config = config
        self.path = None if path is None else Path(path)
        self.resize = ResizePolicy.parse(resize)
        self.postprocess_config = postprocess
        self.anchors = AnchorCache(config.anchors)
        self.coder = BoxCoder(config.variance)
        self._order = [list(session.output_names).index(n) for n in OUTPUT_NAMES]
        # float32 pixel buffers by shape, reused from call to call (a fresh multi-megabyte array per
        # photo costs more in page faults than the conversion itself); see _pixels
        self._buffers: dict[tuple[int, ...], np.ndarray] = {}
        self._inputs: Any = None  # the eager preprocessing, for tensor inputs only (imports torch)

    @staticmethod
    def bf16_keep_f32(config: ModelConfig) -> tuple[str, ...]:
        """The node-name patterns kept in f32 under OpenVINO bf16 for ``config``'s backbone."""
        return _backbone_bf16_keep_f32(config.backbone)

    @staticmethod
    def pixel_input(config: ModelConfig) -> PixelInput:
        """The :class:`~detector.onnx_session.PixelInput` of a preset (its channel order, mean, std)."""
        mean, std = config.network_mean_std()
        return PixelInput(mean=mean, std=std, rgb=config.channel_order == "RGB")

    @property
    def runtime(self) -> str:
        return self.session.runtime

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_onnx(cls, path: str | os.PathLike, *, runtime: str = "onnxruntime", precision: str = "fp32",
                  device: str = "cpu", threads: int | None = None,
                  resize: ResizePolicy | str | int | None = None,
                  postprocess: PostprocessConfig | None = None, preset: str | None = None,
                  bf16_keep_f32: Sequence[str] | None = None) -> OnnxRetinaFace:
        """Open one of our exported files (its metadata, read by the runtime, says the architecture
        and preprocessing).

        ``bf16_keep_f32``: node-name patterns kept in f32 under OpenVINO bf16 (default
        :meth:`bf16_keep_f32` of the file's backbone; ``()`` runs the whole network in bf16)."""
        found: list[ModelConfig] = []

        def setup(metadata: dict[str, str]) -> SessionSetup:
            config = model_config_of(metadata, path)
            if preset is not None and preset != config.name:
                raise CheckpointError(f"{path}: exported from the {config.name!r} preset, not {preset!r}; "
                                      "an ONNX file fixes its architecture: drop --preset")
            found.append(config)
            keep = cls.bf16_keep_f32(config) if bf16_keep_f32 is None else tuple(bf16_keep_f32)
            return SessionSetup(keep_f32=keep, pixels=cls.pixel_input(config))

        session = open_session(path, runtime=runtime, precision=precision, device=device, threads=threads,
                               setup=setup)
        return cls(session, found[0], resize=resize, postprocess=postprocess or PostprocessConfig(), path=path)

    @classmethod
    def from_spec(cls, spec: DetectorSpec) -> OnnxRetinaFace:
        """From a resolved spec: ``spec.weights`` an ``.onnx`` file of ours, or a checkpoint that is
        exported once into the cache (:func:`detector.export.onnx_for_weights`: found there by its
        content hash without torch; only a missing export imports torch to make it)."""
        path = Path(spec.weights)
        if path.suffix.lower() != ".onnx":
            from .export import onnx_for_weights

            path = onnx_for_weights(path, preset=spec.preset)
            preset = None  # the export used it
        else:
            preset = spec.preset
        return cls.from_onnx(path, runtime=spec.runtime, precision=spec.precision, device=spec.device,
                             threads=spec.threads, resize=spec.resize, postprocess=spec.postprocess,
                             preset=preset)

    # ------------------------------------------------------------------ the family's parts
    def plan(self, height: int, width: int, policy: ResizePolicy) -> InputPlan:
        s = policy.scale(height, width)
        hw = (height, width) if s == 1.0 else (round(height * s), round(width * s))
        return InputPlan(hw, hw, (s, s))

    def _pixels(self, images: Sequence[np.ndarray],
                policy: ResizePolicy) -> tuple[list[np.ndarray], list[float]]:
        """Each image as float32 pixels at its detector size (the reference's resize), and its scale.

        The arrays of a one-image call are this detector's reused buffers: valid until the next call."""
        check_image_list(images)
        images = [as_bgr_uint8(img, i) for i, img in enumerate(images)]
        scales = [policy.scale(img.shape[0], img.shape[1]) for img in images]
        return self._pixels_at(images, scales), scales

    def _pixels_at(self, images: Sequence[np.ndarray], scales: Sequence[float]) -> list[np.ndarray]:
        out = []
        single = len(images) == 1
        for img, s in zip(images, scales):
            pixels = self._buffer(img.shape, single and s == 1.0)
            np.copyto(pixels, img)
            if s != 1.0:  # exactly the eager path's (and the reference's) resize
                # (dsize None, as the reference: cv2 derives it from fx, fy; dst only lends memory)
                dst = self._buffer((round(img.shape[0] * s), round(img.shape[1] * s), 3), single)
                pixels = cv2.resize(pixels, None, dst, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
            out.append(pixels)
        return out

    def _buffer(self, shape: tuple[int, ...], reuse: bool) -> np.ndarray:
        if not reuse:
            return np.empty(shape, np.float32)
        buf = self._buffers.get(shape)
        if buf is None:
            if len(self._buffers) >= 8:  # photos of many sizes: keep the latest few
                self._buffers.pop(next(iter(self._buffers)))
            buf = self._buffers[shape] = np.empty(shape, np.float32)
        return buf

    def _raw(self, pixels: np.ndarray) -> list[np.ndarray]:
        """``[cls_logits, bbox_deltas, landmark_deltas]`` for float32 ``[B, H, W, 3]`` BGR pixels
        (resized, not normalised); views of the session's buffers, valid until the next run."""
        outputs = self.session.run(pixels, copy=False)
        return [np.asarray(outputs[i]) for i in self._order]

    def forward_group(self, images: Sequence[np.ndarray], plans: Sequence[InputPlan],
                      canvas_hw: tuple[int, int]) -> list[np.ndarray]:
        """Raw outputs of images (uint8 BGR, before resizing) of one size after resizing."""
        pixels = self._pixels_at(images, [p.scale[0] for p in plans])
        batch = pixels[0][None] if len(pixels) == 1 else np.stack(pixels)
        return self._raw(batch)

    def select(self, raw: list[np.ndarray], index: int, config: PostprocessConfig) -> tuple[np.ndarray, np.ndarray]:
        """Rank on the face-vs-background logit margin (softmax over two classes is the sigmoid of
        the margin); threshold ``sigmoid(margin) > conf_threshold`` as the torch path does."""
        logits = raw[0][index]
        margin = logits[:, 1] - logits[:, 0]
        # margin > logit(conf) up to rounding: a cheap pre-filter, then the exact float32 comparison
        c = float(config.conf_threshold)
        bound = -math.inf if c <= 0.0 else math.log(c / (1.0 - c)) - 1e-3
        candidates = np.flatnonzero(margin > bound)
        scores = sigmoid(margin[candidates])
        passed = scores > c
        candidates, scores = candidates[passed], scores[passed]
        # ranked on the margin, as torch's topk: the sigmoid saturates (many faces score 1.0 in float32)
        order = top_candidates(margin[candidates], np.ones(len(scores), bool), int(config.top_k))
        return candidates[order], scores[order]

    def decode(self, raw: list[np.ndarray], index: int, anchors: np.ndarray,
               canvas_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        priors = self.anchors(*canvas_hw)[anchors]
        boxes = self.coder.decode_boxes(np.asarray(raw[1][index][anchors], np.float32), priors)
        landmarks = self.coder.decode_landmarks(np.asarray(raw[2][index][anchors], np.float32), priors)
        return boxes, landmarks

    # ------------------------------------------------------------------ tensors (eager preprocessing)
    def _run(self, pixels: np.ndarray) -> RetinaFaceOutput:
        """Raw outputs as torch tensors (a copy), for comparisons with the eager model."""
        import torch

        from .model import RetinaFaceOutput

        return RetinaFaceOutput(*(torch.from_numpy(np.array(o)) for o in self._raw(pixels)))

    def forward(self, batch: Tensor) -> RetinaFaceOutput:
        """Raw outputs of one unpadded preprocessed batch (``Tensor[B, 3, H, W]`` as
        :class:`~detector.inference.RetinaFaceInput` makes it: normalised, network channel order)."""
        pixels = self.session.pixels
        x = batch.detach().float().cpu().permute(0, 2, 3, 1).numpy()
        x = x * np.asarray(pixels.std, np.float32) + np.asarray(pixels.mean, np.float32)
        if pixels.rgb:
            x = x[..., ::-1]
        return self._run(np.ascontiguousarray(x, np.float32))

    def detect(self, images: Sequence[np.ndarray] | Tensor, *,
               resize: ResizePolicy | str | int | None = None, conf_threshold: float | None = None,
               nms_threshold: float | None = None, top_k: int | None = None,
               keep_top_k: int | None = None, vote_iou: float | None = None) -> list[Detections]:
        """Detect faces; one :class:`Detections` per input image (float32 numpy, original pixels)."""
        if not hasattr(images, "detach"):  # not a torch tensor: the base's path, torch-free
            return super().detect(images, resize=resize, conf_threshold=conf_threshold,
                                  nms_threshold=nms_threshold, top_k=top_k, keep_top_k=keep_top_k,
                                  vote_iou=vote_iou)
        # a Tensor[B, 3, H, W] of BGR pixels: the eager path's tensor preprocessing, one batch
        from .inference import RetinaFaceInput

        if self._inputs is None:
            self._inputs = RetinaFaceInput(self.config, device="cpu")
        config = self.postprocess_config.override(conf_threshold=conf_threshold, nms_threshold=nms_threshold,
                                                  top_k=top_k, keep_top_k=keep_top_k, vote_iou=vote_iou)
        policy = self.resize if resize is None else ResizePolicy.parse(resize)
        batch, scales, _ = self._inputs(images, policy)
        raw = [t.numpy() for t in self.forward(batch)]
        hw = (int(batch.shape[2]), int(batch.shape[3]))
        plans = [InputPlan(hw, hw, (float(s), float(s))) for s in scales.tolist()]
        return self.postprocess(raw, plans, hw, config)

    __call__ = detect

    def __repr__(self) -> str:
        return (f"OnnxRetinaFace({self.path.name if self.path else '?'}, {self.session.runtime}, "
                f"{self.config.name}, resize={self.resize.to_string()})")


def build_retinaface(spec: DetectorSpec) -> Any:
    """RetinaFace on ``spec.runtime``: eager torch (reference-exact, torch imported here), or the
    exported ONNX graph on onnxruntime / OpenVINO (a ``.pth`` is exported once into the cache, see
    :func:`detector.export.onnx_for_weights`)."""
    if spec.runtime != "torch":
        return OnnxRetinaFace.from_spec(spec)
    import torch

    from .inference import Detector

    if spec.threads:
        torch.set_num_threads(int(spec.threads))
    return Detector.from_weights(spec.weights, preset=spec.preset, device=spec.device,
                                 fp16=spec.precision == "fp16", resize=spec.resize, postprocess=spec.postprocess)


register_family(Family(name="retinaface", runtimes=("torch", "onnxruntime", "openvino"), build=build_retinaface,
                       default_weights="mobilenet0.25"))
