"""Face recognisers for verification: an ArcFace-style ONNX model through onnxruntime, or a torch module.

Both take aligned crops as ``uint8 [N, S, S, 3]`` **BGR** (OpenCV order, as the rest of the pipeline)
and return float32 embeddings ``[N, D]`` (not normalised: the norm is the aggregation's business).
Pre-processing is explicit (:class:`Preprocess`): channel order, then ``(pixel / 255 - mean) / std``.

Recognisers are built from frozen, picklable configs (``*RecognizerConfig.build()``) so that Ray
workers can build their own copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: insightface's ArcFace convention, (pixel - 127.5) / 127.5.
ARCFACE_MEAN = (0.5, 0.5, 0.5)
ARCFACE_STD = (0.5, 0.5, 0.5)


def parse_triplet(text: str, *, what: str) -> tuple[float, float, float]:
    """``"a,b,c"`` -> three floats (for ``--mean`` / ``--std``)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3:
        raise ValueError(f"{what} needs three comma-separated values, got {text!r}")
    try:
        a, b, c = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{what} values must be numbers, got {text!r}") from None
    return a, b, c


def add_preprocess_arguments(group: Any) -> None:
    """The recogniser's normalisation flags ``--rgb --mean --std`` (shared by the align job's
    ``--recognizer`` and ``jobs/eval_verification.py``); :func:`preprocess_from_args` reads them."""
    group.add_argument("--rgb", action="store_true", help="the recogniser takes RGB (default BGR)")
    group.add_argument("--mean", default=",".join(map(str, ARCFACE_MEAN)),
                       help="recogniser per-channel mean in [0,1] units, model channel order (default 0.5,0.5,0.5)")
    group.add_argument("--std", default=",".join(map(str, ARCFACE_STD)),
                       help="recogniser per-channel std in [0,1] units (default 0.5,0.5,0.5)")


def preprocess_from_args(args: Any) -> Preprocess:
    """:class:`Preprocess` from the flags of :func:`add_preprocess_arguments` (``ValueError`` names the flag)."""
    return Preprocess(rgb=args.rgb, mean=parse_triplet(args.mean, what="--mean"),
                      std=parse_triplet(args.std, what="--std"))


@dataclass(frozen=True, kw_only=True)
class Preprocess:
    """``x = (pixel / 255 - mean) / std`` per channel, in the model's channel order.

    ``rgb``: the model expects RGB (crops are BGR, so channels are swapped first); ``mean``/``std`` are
    in [0, 1] pixel units and listed in the model's channel order (ImageNet: mean (0.485, 0.456, 0.406),
    std (0.229, 0.224, 0.225) for RGB; insightface ArcFace: 0.5 / 0.5).
    """

    rgb: bool = False
    mean: tuple[float, float, float] = ARCFACE_MEAN
    std: tuple[float, float, float] = ARCFACE_STD

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {self.mean} and {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if any(abs(m) > 1.0 for m in self.mean) or any(s > 1.0 for s in self.std):
            raise ValueError(
                f"mean {self.mean} / std {self.std} look like 0-255 values; give them in [0, 1] pixel units "
                "(e.g. 127.5 -> 0.5)"
            )

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"crops must be [N, H, W, 3], got shape {crops.shape}")
        if crops.dtype != np.uint8:
            raise ValueError(f"crops must be uint8, got {crops.dtype}")
        x = crops[..., ::-1] if self.rgb else crops
        x = x.astype(np.float32) * np.float32(1.0 / 255.0)
        x -= np.asarray(self.mean, dtype=np.float32)
        x /= np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def to_json(self) -> dict:
        return {"rgb": self.rgb, "mean": list(self.mean), "std": list(self.std)}


@runtime_checkable
class Recognizer(Protocol):
    input_size: int

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """``uint8 [N, S, S, 3]`` BGR crops -> float32 ``[N, D]``."""


class RecognizerConfig(Protocol):
    def build(self) -> Recognizer: ...

    def with_threads(self, threads: int) -> RecognizerConfig: ...

    def to_json(self) -> dict: ...


def _check_crops(crops: np.ndarray, size: int) -> np.ndarray:
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
        raise ValueError(f"crops must be [N, {size}, {size}, 3], got shape {crops.shape}")
    return crops


# ------------------------------------------------------------------------------------------------------ ONNX


class OnnxRecognizer:
    """An ONNX face-embedding model with one image input ``[B, 3, S, S]``.

    A static batch dimension (e.g. 1) is honoured by running chunks of exactly that size, padding the
    last one; a dynamic one runs chunks of ``batch_size``.
    """

    def __init__(
        self,
        *,
        model: Path | str,
        preprocess: Preprocess,
        batch_size: int = 32,
        threads: int = 0,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
    ):
        import onnxruntime as ort

        self.model_path = Path(model)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.model_path}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.model_path), sess_options=options, providers=list(providers))
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{self.model_path}: expected one input, got {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"{self.model_path}: input {self.input_name} must be [B, 3, S, S], got {shape}")
        height, width = shape[2], shape[3]
        if not (isinstance(height, int) and isinstance(width, int)) or height != width:
            raise ValueError(f"{self.model_path}: input {self.input_name} needs a fixed square size, got {shape}")
        self.input_size = int(height)
        self.fixed_batch: int | None = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.batch_size = self.fixed_batch or batch_size
        self.output_name = self.session.get_outputs()[0].name
        self.preprocess = preprocess

    def embed(self, crops: np.ndarray) -> np.ndarray:
        crops = _check_crops(crops, self.input_size)
        n = crops.shape[0]
        if n == 0:
            raise ValueError("no crops to embed")
        out: list[np.ndarray] = []
        for start in range(0, n, self.batch_size):
            x = self.preprocess(crops[start:start + self.batch_size])
            real = x.shape[0]
            if self.fixed_batch is not None and real < self.fixed_batch:
                x = np.concatenate([x, np.zeros((self.fixed_batch - real, *x.shape[1:]), np.float32)])
            y = self.session.run([self.output_name], {self.input_name: x})[0]
            out.append(np.asarray(y, dtype=np.float32).reshape(y.shape[0], -1)[:real])
        return np.concatenate(out)


@dataclass(frozen=True, kw_only=True)
class OnnxRecognizerConfig:
    model: Path
    preprocess: Preprocess = field(default_factory=Preprocess)
    batch_size: int = 32
    threads: int = 0
    """onnxruntime intra-op threads; 0 is onnxruntime's default (all cores)."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def build(self) -> OnnxRecognizer:
        return OnnxRecognizer(
            model=self.model, preprocess=self.preprocess, batch_size=self.batch_size,
            threads=self.threads, providers=self.providers,
        )

    def with_threads(self, threads: int) -> OnnxRecognizerConfig:
        from dataclasses import replace

        return replace(self, threads=threads)

    def to_json(self) -> dict:
        return {"kind": "onnx", "model": str(self.model), "preprocess": self.preprocess.to_json(),
                "batch_size": self.batch_size}


# ----------------------------------------------------------------------------------------------------- torch


class TorchRecognizer:
    """A torch module mapping ``float [B, 3, S, S]`` to embeddings ``[B, D]`` (eval mode, no grad)."""

    def __init__(
        self,
        *,
        module: Any,
        preprocess: Preprocess,
        input_size: int = 112,
        batch_size: int = 64,
        device: str = "cpu",
        threads: int = 0,
    ):
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if threads > 0:
            torch.set_num_threads(threads)
        self._torch = torch
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.preprocess = preprocess
        self.input_size = input_size
        self.batch_size = batch_size

    def embed(self, crops: np.ndarray) -> np.ndarray:
        crops = _check_crops(crops, self.input_size)
        if crops.shape[0] == 0:
            raise ValueError("no crops to embed")
        torch = self._torch
        out = []
        with torch.inference_mode():
            for start in range(0, crops.shape[0], self.batch_size):
                x = torch.from_numpy(self.preprocess(crops[start:start + self.batch_size])).to(self.device)
                y = self.module(x)
                if isinstance(y, (tuple, list)):
                    y = y[0]
                out.append(y.float().reshape(y.shape[0], -1).cpu().numpy())
        return np.concatenate(out)


@dataclass(frozen=True, eq=False, kw_only=True)
class TorchRecognizerConfig:
    module: Any
    preprocess: Preprocess = field(default_factory=Preprocess)
    input_size: int = 112
    batch_size: int = 64
    device: str = "cpu"
    threads: int = 0

    def build(self) -> TorchRecognizer:
        return TorchRecognizer(
            module=self.module, preprocess=self.preprocess, input_size=self.input_size,
            batch_size=self.batch_size, device=self.device, threads=self.threads,
        )

    def with_threads(self, threads: int) -> TorchRecognizerConfig:
        from dataclasses import replace

        return replace(self, threads=threads)

    def to_json(self) -> dict:
        return {"kind": "torch", "module": type(self.module).__name__, "preprocess": self.preprocess.to_json(),
                "batch_size": self.batch_size, "device": self.device}
