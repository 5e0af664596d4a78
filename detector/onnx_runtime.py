"""RetinaFace exported to ONNX (:mod:`detector.export`), run by onnxruntime or OpenVINO.

:class:`OnnxRetinaFace` is the ``onnxruntime`` / ``openvino`` runtime of the RetinaFace family
(:class:`detector.spec.DetectorSpec`). The resize is the eager path's (the reference's float32
bilinear resize) and decoding (threshold, top-k, decode, NMS) the same
:class:`RetinaFacePostprocess`, in torch on the CPU. The rest of the preprocessing (channel order,
mean, layout) belongs to the session (:class:`detector.onnx_session.PixelInput`): OpenVINO runs it
inside the compiled graph, so a photo goes in as its float32 pixels with no other copy.

Mixed-size batches: the eager path masks the padding of a padded batch inside the network (forward
hooks), which a fixed graph cannot do. Here the images are grouped by their size after resizing and
each group runs as one unpadded batch (same-size images batch exactly), results back in input order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import cv2
import numpy as np

from .api import Detections, PostprocessConfig, as_bgr_uint8, check_image_list
from .config import ModelConfig, ResizePolicy
from .hub import CheckpointError
from .onnx_models import OUTPUT_NAMES, inspect_onnx

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

    from .model import RetinaFaceOutput
    from .onnx_session import OnnxSession
    from .spec import DetectorSpec

__all__ = ["OnnxRetinaFace"]


class OnnxRetinaFace:
    """A :class:`detector.api.FaceDetector` over an exported RetinaFace ONNX file.

    Build it with ``DetectorSpec(runtime="openvino", ...).build()`` (or :meth:`from_spec` /
    :meth:`from_onnx`). One ``detect`` call at a time per instance (it reuses its pixel buffers and
    its OpenVINO requests; one detector per thread or process). ``detect(images)`` takes a list of ``HxWx3`` uint8 BGR images of any sizes
    (or a ``Tensor[B, 3, H, W]`` of BGR pixels) and returns one :class:`Detections` per image, CPU
    torch tensors in original-image pixels.

    ``bf16`` (OpenVINO) keeps some convolutions in f32 (:attr:`BF16_KEEP_F32`, per backbone). On the
    golden photos, plain bf16 moves the boxes of two 16-pixel faces (of 378 at score >= 0.5) to IoU
    0.67-0.68 with their fp32 boxes. MobileNet-0.25 keeps its depthwise convolutions (and the stem)
    in f32: few multiply-adds, memory-bound, so bf16 saves little there, and with them in f32 every
    face is found (landmarks median 0.2 %, p95 0.6 % of the box width) at about 1.15x the plain-bf16
    time (0.6x fp32); the pointwise convolutions, FPN, SSH and heads run in bf16. Other backbones keep
    the whole trunk in f32 (not measured further).
    """

    #: node-name patterns (ONNX names of our export) that OpenVINO bf16 keeps in f32, per backbone
    BF16_KEEP_F32: dict[str, tuple[str, ...]] = {
        "mobilenet0.25": (r"^/body/stage\d/stage\d\.\d+/stage\d\.\d+\.0/",),  # stem + depthwise convs
    }
    BF16_KEEP_F32_DEFAULT: tuple[str, ...] = (r"^/body/",)

    @classmethod
    def bf16_keep_f32(cls, config: ModelConfig) -> tuple[str, ...]:
        """The node-name patterns kept in f32 under OpenVINO bf16 for ``config``'s backbone."""
        return cls.BF16_KEEP_F32.get(config.backbone, cls.BF16_KEEP_F32_DEFAULT)

    def __init__(self, session: "OnnxSession", config: ModelConfig, *,
                 resize: "ResizePolicy | str | int | None" = None,
                 postprocess: PostprocessConfig = PostprocessConfig(), path: str | os.PathLike | None = None) -> None:
        from .inference import RetinaFaceInput, RetinaFacePostprocess

        missing = [n for n in OUTPUT_NAMES if n not in session.output_names]
        if missing:
            raise CheckpointError(f"{path or 'ONNX model'}: outputs {list(session.output_names)} lack {missing}")
        self.session = session
        self.config = config
        self.path = None if path is None else Path(path)
        self.resize = ResizePolicy.parse(resize)
        self.inputs = RetinaFaceInput(config, device="cpu")
        self.decoder = RetinaFacePostprocess(config, postprocess)
        self._order = [list(session.output_names).index(n) for n in OUTPUT_NAMES]
        # float32 pixel buffers by shape, reused from call to call (a fresh multi-megabyte array per
        # photo costs more in page faults than the conversion itself); see _pixels
        self._buffers: dict[tuple[int, ...], np.ndarray] = {}
        if getattr(session, "pixels", None) is None:
            raise ValueError("OnnxRetinaFace needs a session opened with pixels=OnnxRetinaFace.pixel_input(config)")

    @staticmethod
    def pixel_input(config: ModelConfig):
        """The :class:`~detector.onnx_session.PixelInput` of a preset (its channel order, mean, std)."""
        from .onnx_session import PixelInput

        mean, std = config.network_mean_std()
        return PixelInput(mean=mean, std=std, rgb=config.channel_order == "RGB")

    @property
    def postprocess_config(self) -> PostprocessConfig:
        return self.decoder.config

    @property
    def runtime(self) -> str:
        return self.session.runtime

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_onnx(cls, path: str | os.PathLike, *, runtime: str = "onnxruntime", precision: str = "fp32",
                  device: str = "cpu", threads: int | None = None,
                  resize: "ResizePolicy | str | int | None" = None,
                  postprocess: PostprocessConfig | None = None, preset: str | None = None,
                  bf16_keep_f32: Sequence[str] | None = None) -> "OnnxRetinaFace":
        """Open one of our exported files (its metadata says the architecture and preprocessing).

        ``bf16_keep_f32``: node-name patterns kept in f32 under OpenVINO bf16 (default
        :meth:`bf16_keep_f32` of the file's preset; ``()`` runs the whole network in bf16)."""
        from .onnx_session import open_session

        info = inspect_onnx(path)
        if info.family != "retinaface" or info.model_config is None:
            raise CheckpointError(f"{path}: an ONNX {info.family} model, not a RetinaFace exported by "
                                  "`python -m detector export`")
        if preset is not None and preset != info.model_config.name:
            raise CheckpointError(f"{path}: exported from the {info.model_config.name!r} preset, not {preset!r}; "
                                  "an ONNX file fixes its architecture: drop --preset")
        keep = cls.bf16_keep_f32(info.model_config) if bf16_keep_f32 is None else tuple(bf16_keep_f32)
        session = open_session(path, runtime=runtime, precision=precision, device=device, threads=threads,
                               keep_f32=keep if precision == "bf16" else (),
                               pixels=cls.pixel_input(info.model_config))
        return cls(session, info.model_config, resize=resize, postprocess=postprocess or PostprocessConfig(),
                   path=path)

    @classmethod
    def from_spec(cls, spec: "DetectorSpec") -> "OnnxRetinaFace":
        """From a resolved spec: ``spec.weights`` an ``.onnx`` file of ours, or a checkpoint that is
        exported once into the cache (:func:`detector.export.onnx_for_weights`)."""
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

    # ------------------------------------------------------------------ inference
    def _run(self, pixels: np.ndarray) -> "RetinaFaceOutput":
        """Raw outputs for float32 ``[B, H, W, 3]`` BGR pixels (resized, not normalised)."""
        import torch

        from .model import RetinaFaceOutput

        # no copy: the outputs are decoded before the next run reuses the request's buffers
        outputs = self.session.run(pixels, copy=False)
        return RetinaFaceOutput(*(torch.from_numpy(np.asarray(outputs[i])) for i in self._order))

    def forward(self, batch: "Tensor") -> "RetinaFaceOutput":
        """Raw outputs of one unpadded preprocessed batch (``Tensor[B, 3, H, W]`` as
        :class:`~detector.inference.RetinaFaceInput` makes it: normalised, network channel order)."""
        pixels = self.session.pixels
        x = batch.detach().float().cpu().permute(0, 2, 3, 1).numpy()
        x = x * np.asarray(pixels.std, np.float32) + np.asarray(pixels.mean, np.float32)
        if pixels.rgb:
            x = x[..., ::-1]
        return self._run(np.ascontiguousarray(x, np.float32))

    def _pixels(self, images: Sequence[np.ndarray],
                policy: ResizePolicy) -> tuple[list[np.ndarray], list[float]]:
        """Each image as float32 pixels at its detector size (the reference's resize), and its scale.

        The arrays of a one-image call are this detector's reused buffers: valid until the next call."""
        check_image_list(images)
        out, scales = [], []
        single = len(images) == 1
        for i, img in enumerate(images):
            img = as_bgr_uint8(img, i)
            s = policy.scale(img.shape[0], img.shape[1])
            pixels = self._buffer(img.shape, single and s == 1.0)
            np.copyto(pixels, img)
            if s != 1.0:  # exactly the eager path's (and the reference's) resize
                # (dsize None, as the reference: cv2 derives it from fx, fy; dst only lends memory)
                dst = self._buffer((round(img.shape[0] * s), round(img.shape[1] * s), 3), single)
                pixels = cv2.resize(pixels, None, dst, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
            out.append(pixels)
            scales.append(s)
        return out, scales

    def _buffer(self, shape: tuple[int, ...], reuse: bool) -> np.ndarray:
        if not reuse:
            return np.empty(shape, np.float32)
        buf = self._buffers.get(shape)
        if buf is None:
            if len(self._buffers) >= 8:  # photos of many sizes: keep the latest few
                self._buffers.pop(next(iter(self._buffers)))
            buf = self._buffers[shape] = np.empty(shape, np.float32)
        return buf

    def detect(self, images: "Sequence[np.ndarray] | Tensor", *,
               resize: "ResizePolicy | str | int | None" = None, conf_threshold: float | None = None,
               nms_threshold: float | None = None, top_k: int | None = None,
               keep_top_k: int | None = None) -> list[Detections]:
        """Detect faces; one :class:`Detections` per input image (CPU tensors, original pixels)."""
        import torch

        cfg = self.postprocess_config.override(conf_threshold=conf_threshold, nms_threshold=nms_threshold,
                                               top_k=top_k, keep_top_k=keep_top_k)
        policy = self.resize if resize is None else ResizePolicy.parse(resize)
        if isinstance(images, torch.Tensor):  # BGR pixels: the eager path's tensor preprocessing
            batch, scales, sizes = self.inputs(images, policy)
            return self.decoder(self.forward(batch), tuple(batch.shape[2:]), scales, cfg)
        pixels, scale_list = self._pixels(images, policy)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(pixels):
            groups.setdefault(p.shape[:2], []).append(i)
        results: list[Any] = [None] * len(pixels)
        for hw, index in groups.items():
            part = pixels[index[0]][None] if len(index) == 1 else np.stack([pixels[i] for i in index])
            part_scales = torch.tensor([scale_list[i] for i in index], dtype=torch.float32)
            for i, det in zip(index, self.decoder(self._run(part), hw, part_scales, cfg)):
                results[i] = det
        return results

    __call__ = detect

    def __repr__(self) -> str:
        return (f"OnnxRetinaFace({self.path.name if self.path else '?'}, {self.session.runtime}, "
                f"{self.config.name}, resize={self.resize.to_string()})")
