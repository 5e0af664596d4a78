"""RetinaFace -> ONNX: the file the onnxruntime and OpenVINO runtimes run.

:func:`export_onnx` writes the BN-fused eval network with a dynamic batch, height and width:

* input ``input``: ``float32[B, 3, H, W]``, already preprocessed exactly as
  :class:`detector.inference.RetinaFaceInput` does (channel order and mean / std of the preset);
* outputs ``cls_logits [B, A, 2]``, ``bbox_deltas [B, A, 4]``, ``landmark_deltas [B, A, 10]``: the
  raw heads (:class:`detector.model.RetinaFaceOutput`), decoded by
  :class:`detector.onnx_runtime.OnnxRetinaFace` (numpy, :mod:`detector.postprocess`);
* ``metadata_props``: ``faceprep.family = retinaface`` and ``faceprep.model_config`` (the JSON of
  :meth:`ModelConfig.to_dict`: anchors, variances, mean, std, channel order), so the file alone is
  enough to run it (the runtimes read them back through their own API; :func:`detector.onnx_models.inspect_onnx`
  reads them without any runtime).

:func:`onnx_for_weights` exports a checkpoint once into the cache and reuses it: how
``--runtime onnxruntime|openvino`` runs a ``.pth``.

Command line: ``python -m detector export --weights W --out model.onnx [--preset P]``.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

from common.fsio import atomic_write_bytes

from .hub import CheckpointError, cache_dir, resolve_weights, sha256sum
from .onnx_models import (
    INPUT_NAME,
    META_FAMILY,
    META_FORMAT,
    META_MODEL_CONFIG,
    ONNX_FORMAT,
    OUTPUT_NAMES,
    inspect_onnx,
)

__all__ = ["export_onnx", "onnx_for_weights"]

_OUTPUT_WIDTHS = dict(zip(OUTPUT_NAMES, (2, 4, 10)))
# traced at a batch > 1 and a non-square size, so nothing gets specialised to 1 or to H == W
_TRACE_SHAPE = (2, 3, 160, 224)


def _export_bytes(net, opset: int) -> bytes:
    """The ONNX bytes of ``net`` (legacy TorchScript exporter; the torch.export one if it is gone)."""
    import torch

    x = torch.zeros(_TRACE_SHAPE)
    dyn_in = {0: "batch", 2: "height", 3: "width"}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation
            torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES), do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: dyn_in,
                                            **{n: {0: "batch", 1: "anchors"} for n in OUTPUT_NAMES}})
        return buf.getvalue()
    except Exception as legacy_exc:  # any failure: removed / broken legacy exporter: try dynamo
        from torch.export import Dim

        try:
            program = torch.onnx.export(net, (x,), dynamo=True, opset_version=max(opset, 18),
                                        input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                        dynamic_shapes=({0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC},),
                                        verbose=False)
        except Exception as exc:
            raise RuntimeError(f"ONNX export failed (legacy exporter: {legacy_exc}; dynamo exporter: {exc})") from exc
        return program.model_proto.SerializeToString()


def _verify(net, model_bytes: bytes) -> None:
    """The graph must give the eager network's outputs at sizes and a batch other than the traced ones."""
    import importlib.util

    import numpy as np
    import torch

    if importlib.util.find_spec("onnxruntime") is None:
        return
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    for shape in ((1, 3, 96, 128), (3, 3, 75, 131)):
        x = torch.randn(shape, generator=gen) * 60
        with torch.inference_mode():
            ref = net(x)
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
        for name, r, g in zip(OUTPUT_NAMES, ref, got):
            if g.shape != tuple(r.shape) or not np.allclose(g, r.numpy(), atol=2e-3, rtol=1e-3):
                raise RuntimeError(f"exported ONNX disagrees with the eager model at input {shape}: {name} "
                                   f"{g.shape} vs {tuple(r.shape)}, max diff "
                                   f"{float(np.abs(g - r.numpy()).max()) if g.shape == tuple(r.shape) else 'n/a'}")


def export_onnx(weights: str | os.PathLike | None, out: str | os.PathLike, *, preset: str | None = None,
                opset: int = 17, verify: bool = True) -> Path:
    """Export RetinaFace ``weights`` (a checkpoint path or registry name) to the ONNX file ``out``.

    The file is written atomically (a temporary file in the same folder, then renamed). With
    ``verify`` (and onnxruntime installed) the graph is run at two other input sizes and batch
    sizes and compared with the eager model first.

    Returns:
        ``out`` as a :class:`Path`.
    """
    import onnx
    import torch

    from .model import fuse_conv_bn
    from .weights import load_model

    out = Path(out)
    model = load_model(weights, preset=preset, device="cpu")
    net = fuse_conv_bn(model).float().eval()
    proto = onnx.load_from_string(_export_bytes(net, opset))
    for o in proto.graph.output:  # the exporter leaves the last dimension symbolic
        dims = o.type.tensor_type.shape.dim
        if len(dims) == 3 and o.name in _OUTPUT_WIDTHS:
            dims[2].Clear()
            dims[2].dim_value = _OUTPUT_WIDTHS[o.name]
    del proto.metadata_props[:]
    source = resolve_weights(weights)
    for key, value in ((META_FORMAT, ONNX_FORMAT), (META_FAMILY, "retinaface"),
                       (META_MODEL_CONFIG, json.dumps(model.config.to_dict(), sort_keys=True)),
                       ("faceprep.source_weights", source.name),
                       ("faceprep.source_sha256", sha256sum(source)),
                       ("faceprep.torch_version", torch.__version__)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "faceprep detector.export"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if verify:
        _verify(net, data)
    return atomic_write_bytes(out, data)


def onnx_for_weights(weights_path: str | os.PathLike, *, preset: str | None = None) -> Path:
    """The ONNX export of a checkpoint, made once into ``cache_dir()/onnx/<stem>-<sha16>.onnx``
    (``-<preset>`` added when one is forced) and reused while it reads back as ours.

    Finding it is torch-free (the checkpoint's SHA-256 and the file's header); only a missing or
    stale export imports torch (and ``onnx``) to make it."""
    path = Path(weights_path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    name = f"{path.stem}-{sha256sum(path)[:16]}" + (f"-{preset}" if preset else "") + ".onnx"
    target = cache_dir() / "onnx" / name
    if target.is_file():
        try:
            info = inspect_onnx(target)
            if info.family == "retinaface" and info.metadata.get(META_FORMAT) == ONNX_FORMAT:
                return target
        except CheckpointError:
            pass  # truncated or stale: export again
    return export_onnx(path, target, preset=preset)
