"""RetinaFace exported to ONNX (:mod:`detector.export`), run by onnxruntime or OpenVINO.

:class:`OnnxRetinaFace` is the ``onnxruntime`` / ``openvino`` runtime of the RetinaFace family
(:class:`detector.spec.DetectorSpec`). Only the forward pass differs from the eager
:class:`detector.inference.Detector`: preprocessing is the same :class:`RetinaFaceInput` and decoding
(threshold, top-k, decode, NMS) the same :class:`RetinaFacePostprocess`, in torch on the CPU.

Mixed-size batches: the eager path masks the padding of a padded batch inside the network (forward
hooks), which a fixed graph cannot do. Here the images are grouped by their size after resizing and
each group runs as one unpadded batch (same-size images batch exactly), results back in input order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .api import Detections, PostprocessConfig
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
    :meth:`from_onnx`). ``detect(images)`` takes a list of ``HxWx3`` uint8 BGR images of any sizes
    (or a ``Tensor[B, 3, H, W]`` of BGR pixels) and returns one :class:`Detections` per image, CPU
    torch tensors in original-image pixels.

    ``bf16`` (OpenVINO) keeps the backbone in f32 (:attr:`BF16_KEEP_F32`): in plain bf16 the
    MobileNet-0.25 trunk loses small faces (on the golden photos 2 of 378 faces at score >= 0.5 no
    longer found at IoU >= 0.7); with the trunk in f32 all are found, landmarks within 0.2 % of the
    box width (p95), at about 1.2x the plain-bf16 time and 0.65x the fp32 time (one thread).
    """

    #: node-name patterns (ONNX names of our export) that OpenVINO bf16 keeps in f32
    BF16_KEEP_F32: tuple[str, ...] = (r"^/body/",)

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
        :attr:`BF16_KEEP_F32`; ``()`` runs the whole network in bf16)."""
        from .onnx_session import open_session

        info = inspect_onnx(path)
        if info.family != "retinaface" or info.model_config is None:
            raise CheckpointError(f"{path}: an ONNX {info.family} model, not a RetinaFace exported by "
                                  "`python -m detector export`")
        if preset is not None and preset != info.model_config.name:
            raise CheckpointError(f"{path}: exported from the {info.model_config.name!r} preset, not {preset!r}; "
                                  "an ONNX file fixes its architecture: drop --preset")
        keep = cls.BF16_KEEP_F32 if bf16_keep_f32 is None else tuple(bf16_keep_f32)
        session = open_session(path, runtime=runtime, precision=precision, device=device, threads=threads,
                               keep_f32=keep if precision == "bf16" else ())
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
    def forward(self, batch: "Tensor") -> "RetinaFaceOutput":
        """Raw outputs of one unpadded preprocessed batch (``Tensor[B, 3, H, W]``, any layout)."""
        import torch

        from .model import RetinaFaceOutput

        # RetinaFaceInput hands out a channels_last view: the runtimes want contiguous NCHW
        x = batch.detach().float().cpu().contiguous().numpy()
        outputs = self.session.run(x)
        return RetinaFaceOutput(*(torch.from_numpy(np.asarray(outputs[i])) for i in self._order))

    def detect(self, images: "Sequence[np.ndarray] | Tensor", *,
               resize: "ResizePolicy | str | int | None" = None, conf_threshold: float | None = None,
               nms_threshold: float | None = None, top_k: int | None = None,
               keep_top_k: int | None = None) -> list[Detections]:
        """Detect faces; one :class:`Detections` per input image (CPU tensors, original pixels)."""
        import torch

        cfg = self.postprocess_config.override(conf_threshold=conf_threshold, nms_threshold=nms_threshold,
                                               top_k=top_k, keep_top_k=keep_top_k)
        policy = self.resize if resize is None else ResizePolicy.parse(resize)
        batch, scales, sizes = self.inputs(images, policy)
        h, w = int(batch.shape[2]), int(batch.shape[3])
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (vh, vw) in enumerate(sizes.round().to(torch.int64).tolist()):
            groups.setdefault((vh, vw), []).append(i)
        results: list[Any] = [None] * len(sizes)
        for (gh, gw), index in groups.items():
            if len(groups) == 1 and (gh, gw) == (h, w):
                part, part_scales = batch, scales
            else:
                idx = torch.tensor(index)
                part, part_scales = batch[idx, :, :gh, :gw], scales[idx]
            dets = self.decoder(self.forward(part), (gh, gw), part_scales, cfg)
            for i, det in zip(index, dets):
                results[i] = det
        return results

    __call__ = detect

    def __repr__(self) -> str:
        return (f"OnnxRetinaFace({self.path.name if self.path else '?'}, {self.session.runtime}, "
                f"{self.config.name}, resize={self.resize.to_string()})")
