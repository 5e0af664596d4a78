"""One inference session over an ONNX file, on onnxruntime or OpenVINO (no torch).

:func:`open_session` gives an :class:`OnnxSession`: ``run(x: float32 NCHW array) -> list of the
model's outputs`` (numpy, in the file's output order), whatever the runtime. The detector families
(:mod:`detector.onnx_runtime` for RetinaFace, :mod:`detector.scrfd` for SCRFD) only deal with this.

A session also says what the file declares: ``input_shape`` and ``output_shapes`` (ints, or ``None``
for a free dimension) and ``metadata`` (the ONNX ``metadata_props``), read through the runtime's
own API (onnxruntime's ``get_modelmeta().custom_metadata_map``, OpenVINO's ``framework`` run-time
info), so that no process running a model needs the ``onnx`` package.

OpenVINO keeps its compiled models in ``cache_dir()/openvino`` (its ``CACHE_DIR``; ``$FACEPREP_CACHE``,
default ``~/.cache/faceprep``): the next process that compiles the same model (same file, same
precision, same preprocessing) loads the compiled blob instead of compiling again.

With ``pixels=PixelInput(...)`` the session takes raw pixels instead: ``run(x)`` with ``x`` a
float32 ``[B, H, W, 3]`` BGR array, and the session applies the channel order, mean and std and
the NHWC -> NCHW change itself: OpenVINO inside the compiled graph (its ``PrePostProcessor``,
fused with the first convolution), onnxruntime in numpy.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from .hub import CheckpointError

__all__ = ["OnnxSession", "PixelInput", "SessionSetup", "open_session", "openvino_cache_dir"]


@dataclass(frozen=True)
class PixelInput:
    """How a network's NCHW input is made from raw ``[B, H, W, 3]`` BGR pixels:
    ``(pixels[..., order] - mean) / std``, with ``mean`` and ``std`` in the network's channel order.

    ``rgb``: the network takes RGB (the channels are reversed first).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rgb: bool = False

    def to_nchw(self, x: np.ndarray) -> np.ndarray:
        """The network input for raw pixels ``x`` (numpy; what OpenVINO does in its graph)."""
        if self.rgb:
            x = x[..., ::-1]
        x = x - np.asarray(self.mean, np.float32)
        if any(v != 1.0 for v in self.std):
            x /= np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


Shape = tuple[Any, ...]  # ints, None for a free dimension


@dataclass(frozen=True)
class SessionSetup:
    """What a family decides from a file's metadata before the session compiles (see
    :func:`open_session`'s ``setup``): the bf16 ``keep_f32`` patterns and the :class:`PixelInput`."""

    keep_f32: tuple[str, ...] = ()
    pixels: PixelInput | None = None


class OnnxSession(Protocol):
    runtime: str
    input_name: str
    output_names: tuple[str, ...]
    input_shape: Shape
    output_shapes: tuple[Shape, ...]
    metadata: dict[str, str]

    def run(self, x: np.ndarray, *, copy: bool = True) -> list[np.ndarray]:
        """Outputs for input ``x``; ``copy=False`` may return views the next ``run`` overwrites."""
        ...


def _dims(shape: Any) -> Shape:
    """onnxruntime's declared shape (ints, names, ``None``) -> ints and ``None``."""
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)


@dataclass(kw_only=True)
class _Declared:
    """What either runtime's session says about the file (the :class:`OnnxSession` fields), and
    its :class:`PixelInput` when it takes raw pixels."""

    runtime: str
    input_name: str
    output_names: tuple[str, ...]
    pixels: PixelInput | None = None
    input_shape: Shape = ()
    output_shapes: tuple[Shape, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(kw_only=True)
class _OrtSession(_Declared):
    session: Any

    def run(self, x: np.ndarray, *, copy: bool = True) -> list[np.ndarray]:
        if self.pixels is not None:
            x = self.pixels.to_nchw(x)
        return self.session.run(None, {self.input_name: x})  # fresh arrays: copy or not


@dataclass(kw_only=True)
class _OpenVinoSession(_Declared):
    """An OpenVINO session: one request of the dynamic-shape model, plus static-shape ones.

    OpenVINO runs a model compiled for one fixed input shape ~8 % faster than the dynamic-shape
    model (measured, MobileNet-0.25 at 640x480, one thread). An input shape met
    :attr:`STATIC_AFTER` times gets its own compiled model (~0.3 s to compile), for at most
    :attr:`MAX_STATIC` shapes per session, never evicted: photos of one size (video frames, a
    curated set) run on it, photos of many sizes keep the dynamic model and never thrash."""

    request: Any
    compile_static: Callable[[tuple[int, ...]], Any] | None = None
    seen: dict[tuple[int, ...], int] = field(default_factory=dict)
    static: dict[tuple[int, ...], Any] = field(default_factory=dict)

    STATIC_AFTER: ClassVar[int] = 16
    MAX_STATIC: ClassVar[int] = 4

    def _request(self, shape: tuple[int, ...]) -> Any:
        request = self.static.get(shape)
        if request is not None:
            return request
        if self.compile_static is None or len(self.static) >= self.MAX_STATIC:
            return self.request
        if len(self.seen) > 4096:  # many different sizes: start counting afresh
            self.seen.clear()
        count = self.seen[shape] = self.seen.get(shape, 0) + 1
        if count < self.STATIC_AFTER:
            return self.request
        try:
            request = self.static[shape] = self.compile_static(shape)
        except Exception as exc:  # the dynamic model still works: keep it
            warnings.warn(f"OpenVINO could not compile a {list(shape)} model ({exc}); staying dynamic", stacklevel=3)
            self.compile_static = None
            return self.request
        return request

    def run(self, x: np.ndarray, *, copy: bool = True) -> list[np.ndarray]:
        """``copy=False``: views of the request's output buffers, valid until the next ``run``."""
        result = self._request(tuple(x.shape)).infer({0: x}, share_inputs=True, share_outputs=not copy)
        return [np.array(result[i]) if copy else result[i] for i in range(len(self.output_names))]


def _ort_providers(device: str, precision: str) -> list[Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    index = int(device.partition(":")[2] or 0)
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        providers.append(("TensorrtExecutionProvider", {"device_id": index, "trt_fp16_enable": precision == "fp16",
                                                        "trt_engine_cache_enable": True}))
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": index}))
    if not providers:
        raise CheckpointError(f"onnxruntime here has no CUDA provider (available: {', '.join(available)}); "
                              "install onnxruntime-gpu or use --device cpu")
    return providers + ["CPUExecutionProvider"]


def _mark_keep_f32(xml: str, pattern: re.Pattern[str]) -> tuple[str, int]:
    """Mark the IR layers whose name matches ``pattern`` to keep their original (f32) precision.

    OpenVINO's CPU plugin leaves a node out of its bf16 inference precision when the node carries
    the ``DisablePrecisionConversion`` runtime attribute (what ``ov::disable_conversion(node, f16)``
    sets for precision-sensitive subgraphs). Python cannot create that attribute, but the IR reader
    does, so it is written into the serialized model.
    """
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    marked = 0
    for layer in root.iter("layer"):
        if not pattern.search(layer.get("name", "")):
            continue
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ET.Element("rt_info")
            layer.insert(1 if layer.find("data") is not None else 0, rt_info)
        if any(a.get("name") == "DisablePrecisionConversion" for a in rt_info.findall("attribute")):
            continue
        ET.SubElement(rt_info, "attribute", {"name": "DisablePrecisionConversion", "version": "0",
                                             "value": "dynamic:f16"})
        marked += 1
    return ET.tostring(root, encoding="unicode"), marked


def _keep_f32_model(core: Any, model: Any, path: Path,
                    keep_f32: tuple[str, ...]) -> tuple[Any, re.Pattern[str] | None]:
    import openvino as ov

    if not keep_f32:
        return model, None
    pattern = re.compile("|".join(f"(?:{p})" for p in keep_f32))
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
        xml, marked = _mark_keep_f32(xml_path.read_text(), pattern)
        weights = np.fromfile(xml_path.with_suffix(".bin"), dtype=np.uint8)
    if not marked:
        warnings.warn(f"{path}: no layer matches keep_f32 {list(keep_f32)}; everything runs in bf16", stacklevel=3)
        return model, None
    return core.read_model(xml, ov.Tensor(weights)), pattern


def _with_pixel_input(model: Any, pixels: PixelInput) -> Any:
    """``model`` taking raw f32 NHWC BGR pixels: channel order, mean, std and layout in the graph."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(model)
    entry = ppp.input()
    entry.tensor().set_element_type(ov.Type.f32).set_layout(ov.Layout("NHWC"))
    entry.model().set_layout(ov.Layout("NCHW"))
    steps = entry.preprocess()
    if pixels.rgb:
        steps.reverse_channels()
    steps.mean(list(pixels.mean))
    if any(v != 1.0 for v in pixels.std):
        steps.scale(list(pixels.std))
    return ppp.build()


def _check_kept_f32(compiled: Any, pattern: re.Pattern[str], path: Path) -> None:
    """Warn if OpenVINO ran the layers meant to stay f32 in bf16 (an OpenVINO without the attribute)."""
    lowered = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) != "Convolution":
            continue
        if pattern.search(rt["originalLayersNames"].astype(str)) and rt["runtimePrecision"].astype(str) != "f32":
            lowered.append(rt["originalLayersNames"].astype(str))
    if lowered:
        warnings.warn(f"{path}: OpenVINO ran {len(lowered)} convolutions meant to stay f32 in bf16 (e.g. "
                      f"{lowered[0]}); detections may lose accuracy", stacklevel=3)


def _ov_dims(partial_shape: Any) -> Shape:
    return tuple(d.get_length() if d.is_static else None for d in partial_shape)


def _ov_metadata(model: Any) -> dict[str, str]:
    """The ONNX ``metadata_props`` OpenVINO's ONNX reader keeps as run-time info ``framework``."""
    if not model.has_rt_info(["framework"]):
        return {}
    return {str(k): v.astype(str) for k, v in model.get_rt_info()["framework"].items()}


def openvino_cache_dir() -> Path:
    """Where OpenVINO keeps compiled models (``cache_dir()/openvino``, read when a session opens)."""
    from .hub import cache_dir

    return cache_dir() / "openvino"


def open_session(path: str | os.PathLike, *, runtime: str, precision: str = "fp32", device: str = "cpu",
                 threads: int | None = None, keep_f32: Sequence[str] = (),
                 pixels: PixelInput | None = None,
                 setup: Callable[[dict[str, str]], SessionSetup] | None = None,
                 compiled_cache: bool = True) -> OnnxSession:
    """Load ``path`` on ``runtime`` (``"onnxruntime"`` or ``"openvino"``).

    ``precision``: OpenVINO runs ``bf16`` through its inference-precision hint (the file stays
    fp32); onnxruntime runs the file as it is (``fp16`` on CUDA through TensorRT's flag).
    ``threads``: intra-op threads (``None``: the runtime's default, every core).
    ``keep_f32``: with OpenVINO bf16, regular expressions of node names (as the ONNX file names
    them, e.g. ``^/body/``) that keep running in f32 (a warning if OpenVINO does not honour it).
    ``pixels``: the session takes raw ``[B, H, W, 3]`` BGR pixels (see :class:`PixelInput`).
    ``setup``: called with the file's ``metadata_props`` (read by the runtime) before OpenVINO
    compiles; its :class:`SessionSetup` replaces ``keep_f32`` and ``pixels`` (a family whose
    preprocessing is stored in the file: RetinaFace). It may raise :class:`CheckpointError`.
    ``compiled_cache``: OpenVINO reads and writes compiled models in :func:`openvino_cache_dir`.
    """
    path = Path(path)
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(path), options, providers=_ort_providers(device, precision))
        except Exception as exc:  # onnxruntime raises its own exception types on a bad file
            raise CheckpointError(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from exc
        inputs, outputs = session.get_inputs(), session.get_outputs()
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        if setup is not None:
            pixels = setup(metadata).pixels
        return _OrtSession(session=session, runtime="onnxruntime", input_name=inputs[0].name,
                           output_names=tuple(o.name for o in outputs), pixels=pixels,
                           input_shape=_dims(inputs[0].shape), output_shapes=tuple(_dims(o.shape) for o in outputs),
                           metadata=metadata)
    if runtime == "openvino":
        import openvino as ov

        if device != "cpu":
            raise CheckpointError(f"the openvino runtime runs on cpu here, not {device!r}")
        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if compiled_cache:
            folder = openvino_cache_dir()
            try:
                folder.mkdir(parents=True, exist_ok=True)
                core.set_property({"CACHE_DIR": str(folder)})
            except OSError:  # a read-only cache: compile every time
                pass
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: OpenVINO cannot load it: {str(exc).splitlines()[0]}") from exc
        names = (model.inputs[0].get_any_name(), tuple(o.get_any_name() for o in model.outputs))
        shapes = (_ov_dims(model.inputs[0].get_partial_shape()),
                  tuple(_ov_dims(o.get_partial_shape()) for o in model.outputs))
        metadata = _ov_metadata(model)
        if setup is not None:
            chosen = setup(metadata)
            keep_f32, pixels = chosen.keep_f32, chosen.pixels
        try:
            model, kept = _keep_f32_model(core, model, path, tuple(keep_f32) if precision == "bf16" else ())
            if pixels is not None:
                model = _with_pixel_input(model, pixels)
            compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise CheckpointError(f"{path}: OpenVINO cannot load it: {str(exc).splitlines()[0]}") from exc
        if kept is not None:
            _check_kept_f32(compiled, kept, path)

        def compile_static(shape: tuple[int, ...]) -> Any:
            fixed = model.clone()
            fixed.reshape(list(shape))
            return core.compile_model(fixed, "CPU", config).create_infer_request()

        return _OpenVinoSession(request=compiled.create_infer_request(), runtime="openvino", input_name=names[0],
                                output_names=names[1], pixels=pixels, input_shape=shapes[0], output_shapes=shapes[1],
                                metadata=metadata, compile_static=compile_static)
    raise ValueError(f"open_session: runtime must be onnxruntime or openvino, got {runtime!r}")
