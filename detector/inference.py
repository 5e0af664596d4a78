"""Batched RetinaFace inference: preprocessing, forward, and on-device postprocessing.

Postprocessing follows torchvision's ``retinanet.py``: everything after the forward pass (softmax,
score threshold, top-k, decode, NMS, keep-top-k) runs in torch on the model's device, batched over
the images; the only per-image work is slicing the final per-image results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .anchors import AnchorGenerator
from .api import Detections, InputImageError, PostprocessConfig, as_bgr_uint8, check_image_list
from .box_coder import BoxCoder
from .boxes import batched_box_iou, chunked_padded_nms
from .config import ModelConfig, ResizePolicy
from .model import RetinaFace, RetinaFaceOutput, fuse_conv_bn
from .weights import load_model

__all__ = ["ResizePolicy", "PostprocessConfig", "Detections", "Detector", "InputImageError",
           "RetinaFaceInput", "RetinaFacePostprocess", "vote_torch"]


class _PaddingMask:
    """Make a padded mixed-size batch behave like each image run alone.

    Alone, every convolution of an image sees zeros beyond the image border (its own zero padding).
    In a padded batch, feature maps of the padding region are not zero after the first layer (biases,
    activations), and spatial convolutions would leak them into the image's border pixels. While
    active, this zeroes the input of every spatial (k > 1) convolution and pooling outside each
    image's valid region at that layer's resolution (``ceil(size / stride)``), so border detections
    match the single-image ones. FPN nearest upsampling needs no help: for these sizes it maps the
    valid region exactly as the unpadded map would.
    """

    def __init__(self, model: torch.nn.Module, sizes: Tensor, input_hw: tuple[int, int]) -> None:
        self.model = model
        self.sizes = sizes  # [B, 2] valid (h, w) in network-input pixels
        self.input_hw = input_hw
        self._masks: dict[tuple[int, int], Tensor] = {}
        self._handles: list = []

    def _mask(self, hw: tuple[int, int], like: Tensor) -> Tensor:
        m = self._masks.get(hw)
        if m is None:
            stride_h = 2 ** round(np.log2(self.input_hw[0] / hw[0]))
            stride_w = 2 ** round(np.log2(self.input_hw[1] / hw[1]))
            vh = torch.ceil(self.sizes[:, 0] / stride_h)
            vw = torch.ceil(self.sizes[:, 1] / stride_w)
            rows = torch.arange(hw[0], device=like.device)[None, :] < vh[:, None]
            cols = torch.arange(hw[1], device=like.device)[None, :] < vw[:, None]
            m = (rows[:, :, None] & cols[:, None, :])[:, None].to(like.dtype)
            self._masks[hw] = m
        return m

    def _hook(self, module, args):
        x = args[0]
        return (x * self._mask((x.shape[-2], x.shape[-1]), x),) + tuple(args[1:])

    def __enter__(self) -> _PaddingMask:
        for module in self.model.modules():
            spatial_conv = isinstance(module, torch.nn.Conv2d) and max(module.kernel_size) > 1
            if spatial_conv or isinstance(module, torch.nn.MaxPool2d):
                self._handles.append(module.register_forward_pre_hook(self._hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class RetinaFaceInput:
    """Preprocessing of a RetinaFace preset: resize, channel order, mean / std, zero padding.

    ``__call__(images, policy)`` -> ``(Tensor[B, 3, H, W]`` network input (zero-padded bottom/right
    to the largest image, channels_last), ``Tensor[B]`` resize factors, ``Tensor[B, 2]`` valid
    (h, w) of each image in the input). Shared by every runtime: the eager model reads the tensor,
    ONNX runtimes its numpy view.
    """

    def __init__(self, config: ModelConfig, *, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self._channel_order = [0, 1, 2] if config.channel_order == "BGR" else [2, 1, 0]
        mean, std = (torch.tensor(v, dtype=torch.float32) for v in config.network_mean_std())
        self._mean = mean.to(self.device).view(1, 3, 1, 1)
        self._std = std.to(self.device).view(1, 3, 1, 1)
        self._mean_hwc = mean.to(self.device)
        self._std_hwc = std.to(self.device)
        self._unit_std = bool(torch.all(std == 1))

    def _arrays(self, images: Sequence[np.ndarray], policy: ResizePolicy) -> tuple[Tensor, Tensor, Tensor]:
        prepared: list[np.ndarray] = []
        scales: list[float] = []
        for i, img in enumerate(images):
            img = as_bgr_uint8(img, i)
            s = policy.scale(img.shape[0], img.shape[1])
            if s != 1.0:
                # exactly the reference's resize: float32 image, cv2 bilinear, fx = fy = s
                img = cv2.resize(img.astype(np.float32), None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
            prepared.append(img)
            scales.append(s)
        hmax = max(p.shape[0] for p in prepared)
        wmax = max(p.shape[1] for p in prepared)
        # Built as NHWC, the images' own layout: one copy per image, and the NCHW view handed to the
        # network is already channels_last. The padding stays 0, i.e. the mean colour after
        # normalisation, which is what a convolution's zero padding sees too.
        batch = torch.empty((len(prepared), hmax, wmax, 3), dtype=torch.float32, device=self.device)
        for i, p in enumerate(prepared):
            batch[i, p.shape[0]:].zero_()
            batch[i, : p.shape[0], p.shape[1]:].zero_()
            region = batch[i, : p.shape[0], : p.shape[1]]
            region.copy_(torch.from_numpy(np.ascontiguousarray(p)).to(self.device, non_blocking=True))
            if self._channel_order != [0, 1, 2]:
                region.copy_(region[..., self._channel_order])
            region.sub_(self._mean_hwc)
            if not self._unit_std:
                region.div_(self._std_hwc)
        sizes = torch.tensor([p.shape[:2] for p in prepared], dtype=torch.float32, device=self.device)
        scales_t = torch.tensor(scales, dtype=torch.float32, device=self.device)
        return batch.permute(0, 3, 1, 2), scales_t, sizes

    def grouped(self, images: Sequence[np.ndarray], policy: ResizePolicy) -> list[tuple[list[int], Tensor, Tensor]]:
        """The images in batches of one detector-input shape (no padding, no mask): per batch
        ``(indices into images, Tensor[B, 3, h, w]`` normalised float32 channels_last network
        input on the device, ``Tensor[B]`` resize factors), the batches in order of first image.

        Images of one size and scale are stacked as uint8 into one host buffer (page-locked when
        the device is CUDA) and copied to the device at once; the resize (bilinear, sampled as
        ``cv2.resize`` with ``fx = fy = s`` samples it), channel order and mean / std run there.
        """
        check_image_list(images)
        arrays = [as_bgr_uint8(img, i) for i, img in enumerate(images)]
        groups: dict[tuple[int, int, float], list[int]] = {}
        for i, img in enumerate(arrays):
            h, w = img.shape[:2]
            groups.setdefault((h, w, policy.scale(h, w)), []).append(i)
        pinned = self.device.type == "cuda"
        out = []
        for (h, w, s), idx in groups.items():
            host = torch.empty((len(idx), h, w, 3), dtype=torch.uint8, pin_memory=pinned)
            np.stack([arrays[i] for i in idx], out=host.numpy())  # the one host copy
            x = host.to(self.device, non_blocking=pinned).permute(0, 3, 1, 2)[:, self._channel_order].float()
            if s != 1.0:  # cv2's output size (round) and sampling (source = (dst + 0.5) / s - 0.5)
                x = torch.ops.aten.upsample_bilinear2d(x, [int(round(h * s)), int(round(w * s))], False, s, s)
            x = x - self._mean
            x = x if self._unit_std else x / self._std
            scales = torch.full((len(idx),), s, dtype=torch.float32, device=self.device)
            out.append((idx, x.contiguous(memory_format=torch.channels_last), scales))
        return out

    def _tensor(self, images: Tensor, policy: ResizePolicy) -> tuple[Tensor, Tensor, Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise InputImageError(f"expected a Tensor[B, 3, H, W] of BGR pixels, got shape {tuple(images.shape)}")
        if images.numel() == 0:
            raise InputImageError(f"empty image tensor of shape {tuple(images.shape)}")
        x = images.to(self.device)[:, self._channel_order].float()
        s = policy.scale(x.shape[2], x.shape[3])
        if s != 1.0:
            size = (int(round(x.shape[2] * s)), int(round(x.shape[3] * s)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        scales = torch.full((x.shape[0],), s, dtype=torch.float32, device=self.device)
        sizes = torch.tensor([x.shape[2:]] * x.shape[0], dtype=torch.float32, device=self.device)
        x = x - self._mean
        return (x if self._unit_std else x / self._std), scales, sizes

    def __call__(self, images: Sequence[np.ndarray] | Tensor,
                 policy: ResizePolicy) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(images, Tensor):
            return self._tensor(images, policy)
        check_image_list(images)
        return self._arrays(images, policy)


class RetinaFacePostprocess:
    """Raw RetinaFace outputs of a batch -> per-image :class:`Detections`, on the outputs' device.

    torchvision ``retinanet.py`` style: rank on the face-vs-background logit margin, threshold,
    top-k, decode only the survivors, batched greedy NMS in original-image pixels, keep-top-k.
    The eager torch runtime's postprocess (on the model's device, batched over the padded batch);
    the ONNX runtimes run the same steps in numpy (:mod:`detector.postprocess`, with the same
    :class:`~detector.box_coder.BoxCoder` and anchors; tested equal).
    """

    def __init__(self, config: ModelConfig, postprocess: PostprocessConfig = PostprocessConfig(), *,
                 nms_budget: int = 64_000_000) -> None:
        self.config = postprocess
        self.anchors = AnchorGenerator(config.anchors)
        self.coder = BoxCoder(config.variance)
        self.nms_budget = nms_budget

    @torch.inference_mode()
    def __call__(self, output: RetinaFaceOutput, input_size: tuple[int, int], scales: Tensor,
                 config: PostprocessConfig | None = None, *, to_host: bool = False) -> list[Detections]:
        """Decode raw outputs of a ``input_size = (H, W)`` batch into per-image detections.

        ``scales[b]`` is the resize factor of image ``b``; results are divided by it. ``to_host``:
        the detections as CPU tensors, the whole batch's in one device-to-host copy (else on the
        outputs' device, one masked selection per image).
        """
        cfg = config or self.config
        logits = output.cls_logits.float()
        batch_size = logits.shape[0]
        # softmax over (background, face) is sigmoid(face - background): rank and threshold on that
        # margin, and only turn the K survivors into probabilities.
        margin = logits[..., 1] - logits[..., 0]  # [B, A]
        above = torch.sigmoid(margin) > cfg.conf_threshold
        k = min(int(above.sum(dim=1).max()), cfg.top_k)  # the one host sync
        dev = margin.device
        if k == 0:
            at = torch.device("cpu") if to_host else dev
            empty = Detections(torch.zeros(0, 4, device=at), torch.zeros(0, device=at),
                               torch.zeros(0, 5, 2, device=at))
            return [empty] * batch_size
        top_margin, top_idx = margin.topk(k, dim=1)  # sorted, [B, K]
        top_scores = torch.sigmoid(top_margin)
        valid = top_scores > cfg.conf_threshold
        anchors = self.anchors(input_size[0], input_size[1], device=dev)[top_idx]  # [B, K, 4]
        deltas = torch.gather(output.bbox_deltas.float(), 1, top_idx[..., None].expand(-1, -1, 4))
        inv = (1.0 / scales.to(dev)).view(-1, 1, 1)
        # NMS in original-image pixels, as the reference does: with the +1-pixel area convention the
        # IoU depends on the scale the boxes are expressed at.
        boxes = self.coder.decode_boxes(deltas, anchors) * inv
        keep = chunked_padded_nms(boxes, top_scores, valid, cfg.nms_threshold, plus_one=cfg.nms_plus_one,
                                  budget=self.nms_budget)
        keep &= keep.cumsum(dim=1) <= cfg.keep_top_k
        ldeltas = torch.gather(output.landmark_deltas.float(), 1, top_idx[..., None].expand(-1, -1, 10))
        landmarks = self.coder.decode_landmarks(ldeltas, anchors) * inv[..., None]
        if cfg.vote_iou is not None:  # the survivors' boxes and landmarks become their neighbours' vote
            boxes, landmarks = vote_torch(boxes, top_scores, landmarks, valid, keep, cfg.vote_iou,
                                          plus_one=cfg.nms_plus_one, budget=self.nms_budget)
        if to_host:  # [B, K, 4 + 1 + 10 + 1]: one copy, then the per-image selections on the host
            packed = torch.cat([boxes, top_scores[..., None], landmarks.reshape(batch_size, k, 10),
                                keep[..., None].to(boxes.dtype)], dim=2).cpu()
            picked = [packed[b][packed[b, :, 15] > 0] for b in range(batch_size)]
            return [Detections(p[:, :4], p[:, 4], p[:, 5:15].reshape(-1, 5, 2)) for p in picked]
        return [Detections(boxes[b][keep[b]], top_scores[b][keep[b]], landmarks[b][keep[b]])
                for b in range(batch_size)]


def vote_torch(boxes: Tensor, scores: Tensor, landmarks: Tensor, valid: Tensor, keep: Tensor, iou_threshold: float,
               *, plus_one: bool = False, budget: int = 64_000_000) -> tuple[Tensor, Tensor]:
    """The batched torch twin of :func:`detector.postprocess.vote`: the same float32 IoU operations
    and a float64 weighted mean, no loop over the images and no host sync.

    Args:
        boxes: ``[B, K, 4]``, scores ``[B, K]``, landmarks ``[B, K, 5, 2]``: each image's candidates.
        valid: ``BoolTensor[B, K]`` real candidates (only they vote).
        keep: ``BoolTensor[B, K]`` NMS's survivors.
        budget: most elements of one slice's ``[b, K, K]`` weights (slices of the batch).

    Returns ``boxes`` and ``landmarks`` with the survivors' rows replaced by their votes (float32).
    """
    b, k = scores.shape
    per_chunk = max(1, budget // max(1, k * k))
    out_b, out_l = [], []
    eye = torch.eye(k, dtype=torch.bool, device=boxes.device)
    for i in range(0, b, per_chunk):
        sl = slice(i, i + per_chunk)
        iou = batched_box_iou(boxes[sl], boxes[sl], plus_one=plus_one)  # [b, K, K]
        member = ((iou >= torch.tensor(iou_threshold, dtype=iou.dtype, device=iou.device)) | eye) & valid[sl, None, :]
        weights = torch.where(member, scores[sl, None, :].double(), torch.zeros((), dtype=torch.float64,
                                                                                device=iou.device))
        total = weights.sum(dim=2, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        vb = (weights @ boxes[sl].double()) / total
        vl = (weights @ landmarks[sl].double().reshape(-1, k, 10)) / total
        kept = keep[sl, :, None]
        out_b.append(torch.where(kept, vb.float(), boxes[sl]))
        out_l.append(torch.where(kept, vl.float(), landmarks[sl].reshape(-1, k, 10)).reshape(-1, k, 5, 2))
    return torch.cat(out_b), torch.cat(out_l)


class Detector:
    """RetinaFace inference in eager torch on batches of images of any sizes (the ``torch``
    runtime of :class:`detector.spec.DetectorSpec`; reference-exact).

    Call :meth:`detect` (or the instance) with a list of ``HxWx3`` uint8 BGR images, or with one
    ``Tensor[B, 3, H, W]`` of BGR pixel values. Build it from a spec
    (``DetectorSpec(runtime="torch", ...).build()``), or from a model in training code.

    ``group_shapes`` (default: on CUDA): a list of images runs as batches of one input shape
    (:meth:`RetinaFaceInput.grouped`: uint8 in, one pinned host-to-device copy per batch,
    normalised on the device, no padding mask) and its detections come back as CPU tensors, one
    device-to-host copy per batch. Off (the CPU default): one zero-padded batch with the padding
    mask, the resize by ``cv2`` on the host (reference-exact), detections on the device.
    """

    def __init__(self, model: RetinaFace, *, device: str | torch.device | None = None, fp16: bool = False,
                 resize: ResizePolicy | str | int | None = None,
                 postprocess: PostprocessConfig = PostprocessConfig(), fuse: bool = True,
                 nms_budget: int = 64_000_000, group_shapes: bool | None = None) -> None:
        device = torch.device(device) if device is not None else next(model.parameters()).device
        self.group_shapes = device.type == "cuda" if group_shapes is None else bool(group_shapes)
        if fp16 and device.type != "cuda":
            raise ValueError("fp16 inference is only supported on CUDA devices")
        self.config: ModelConfig = model.config
        self.device = device
        self.fp16 = fp16
        self.resize = ResizePolicy.parse(resize)
        net = fuse_conv_bn(model) if fuse else model.eval()
        # channels_last lets oneDNN / cuDNN pick their fast (NHWC) depthwise and 1x1 kernels
        net = net.to(device).to(memory_format=torch.channels_last)
        if fp16:
            net = net.half()
        self.model = net.eval()
        self.inputs = RetinaFaceInput(self.config, device=device)
        self.decoder = RetinaFacePostprocess(self.config, postprocess, nms_budget=nms_budget)

    @property
    def postprocess_config(self) -> PostprocessConfig:
        return self.decoder.config

    @classmethod
    def from_weights(cls, weights: str | Path | None = None, *, preset: str | ModelConfig | None = None,
                     device: str | torch.device = "cpu", fp16: bool = False,
                     resize: ResizePolicy | str | int | None = None,
                     postprocess: PostprocessConfig | None = None) -> Detector:
        """Load weights (path, registry name, or ``None`` for the default MobileNet-0.25) and build a
        detector. Library code builds detectors through :class:`detector.spec.DetectorSpec`."""
        model = load_model(weights, preset=preset, device=device)
        return cls(model, device=device, fp16=fp16, resize=resize, postprocess=postprocess or PostprocessConfig())

    def preprocess(self, images: Sequence[np.ndarray] | Tensor, *,
                   resize: ResizePolicy | str | int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """See :class:`RetinaFaceInput`."""
        return self.inputs(images, self.resize if resize is None else ResizePolicy.parse(resize))

    @torch.inference_mode()
    def forward(self, batch: Tensor, sizes: Tensor | None = None) -> RetinaFaceOutput:
        """Network outputs for a preprocessed batch. ``sizes`` (``Tensor[B, 2]``, valid h, w) makes a
        padded mixed-size batch give each image the result it would get alone."""
        if self.fp16:
            batch = batch.half()
        batch = batch.contiguous(memory_format=torch.channels_last)
        full = torch.tensor(batch.shape[2:], dtype=torch.float32, device=batch.device)
        if sizes is None or bool((sizes == full).all()):
            return self.model(batch)
        with _PaddingMask(self.model, sizes, (batch.shape[2], batch.shape[3])):
            return self.model(batch)

    def postprocess(self, output: RetinaFaceOutput, input_size: tuple[int, int], scales: Tensor,
                    config: PostprocessConfig | None = None) -> list[Detections]:
        """See :class:`RetinaFacePostprocess`."""
        return self.decoder(output, input_size, scales, config)

    def detect(self, images: Sequence[np.ndarray] | Tensor, *,
               resize: ResizePolicy | str | int | None = None, conf_threshold: float | None = None,
               nms_threshold: float | None = None, top_k: int | None = None,
               keep_top_k: int | None = None, vote_iou: float | None = None) -> list[Detections]:
        """Detect faces; one :class:`Detections` per input image (tensors on the model's device, or
        on the CPU for a list of images with ``group_shapes``)."""
        cfg = self.postprocess_config.override(conf_threshold=conf_threshold, nms_threshold=nms_threshold,
                                               top_k=top_k, keep_top_k=keep_top_k, vote_iou=vote_iou)
        if self.group_shapes and not isinstance(images, Tensor):
            policy = self.resize if resize is None else ResizePolicy.parse(resize)
            results: list[Detections | None] = [None] * len(images)
            for idx, batch, scales in self.inputs.grouped(images, policy):
                output = self.forward(batch)
                found = self.decoder(output, (batch.shape[2], batch.shape[3]), scales, cfg, to_host=True)
                for i, d in zip(idx, found):
                    results[i] = d
            return results
        batch, scales, sizes = self.preprocess(images, resize=resize)
        output = self.forward(batch, sizes)
        return self.decoder(output, (batch.shape[2], batch.shape[3]), scales, cfg)

    __call__ = detect
