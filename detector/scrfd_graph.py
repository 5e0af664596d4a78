"""Making a fixed-size SCRFD graph shape-generic, checked, and cached on disk (see :mod:`detector.scrfd`).

``scrfd_500m_bnkps.onnx`` fixes its input at ``1x3x640x640``, with the FPN upsampling written as fixed
output sizes and the output reshapes as ``[1, -1, C]``. :func:`shape_generic_file` rewrites it in
memory when that is provably safe (fixed-size ``Resize`` nodes become the same integer scale factors,
a leading ``1`` of constant reshape targets becomes ``0``, the input dimensions become symbolic),
checks the rewritten graph against the original at the file's own size (outputs within 1e-4) and at
another size (output shapes), and writes it once into ``cache_dir()/scrfd/<stem>-<sha16>.onnx``. A
later process finds it there by the source's content hash: only the first one imports ``onnx``.

The probes (:func:`probe_inputs`, :func:`outputs_close`, :func:`shapes_ok`, :func:`batch_ok`) need
numpy only; they check any session against :class:`~detector.scrfd_layout.SCRFDLayout`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common.fsio import atomic_write_bytes

from .hub import cache_dir, sha256sum
from .onnx_session import OnnxSession
from .scrfd_layout import SCRFDLayout

__all__ = ["batch_ok", "outputs_close", "probe_inputs", "shape_generic_file", "shapes_ok"]

REWRITE_VERSION = 1  # part of the cache file name: bump when the rewrite changes


def probe_inputs(hw: tuple[int, int], batch: int, seed: int) -> np.ndarray:
    """Deterministic network inputs in the normalised range: ``float32[batch, 3, H, W]``."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(batch, 3, hw[0], hw[1])).astype(np.float32)


def outputs_close(a: list[np.ndarray], b: list[np.ndarray], tol: float = 1e-4) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.abs(x.astype(np.float64) - y).max() <= tol
                                    for x, y in zip(a, b))


def shapes_ok(outs: list[np.ndarray], expected: list[tuple[int, int]], batch: int) -> bool:
    """Outputs ``[batch, A, C]`` (or ``[A, C]`` for one image) of the expected ``(A, C)``."""
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


def batch_ok(session: OnnxSession, layout: SCRFDLayout, hw: tuple[int, int]) -> bool:
    """Does ``session`` run a batch of 2 at ``hw`` giving each image its single-run outputs?"""
    x = probe_inputs(hw, 2, seed=1)
    try:
        both = session.run(x)
    except Exception:
        return False
    if not shapes_ok(both, layout.expected_shapes(hw), 2):
        return False
    singles = [session.run(np.ascontiguousarray(x[i:i + 1])) for i in range(2)]
    return all(outputs_close([o[i:i + 1] for o in both], singles[i]) for i in range(2))


# ---------------------------------------------------------------------------- the rewrite (imports onnx)


def _fixed_dim(dim: Any) -> int | None:
    return int(dim.dim_value) if dim.HasField("dim_value") and dim.dim_value > 0 else None


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


def dynamic_graph(model: Any) -> Any | None:
    """A copy of a fixed-size SCRFD graph (an ``onnx.ModelProto``) that runs any input size and
    batch, or ``None`` when a node cannot be made generic this way. Not yet checked numerically."""
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


def _checked_rewrite(path: Path, original: OnnxSession, open_file: Callable[[Path], OnnxSession],
                     layout: SCRFDLayout, fixed_hw: tuple[int, int], target: Path) -> Path | None:
    """Rewrite ``path``, check it (see the module docstring) and write it to ``target``; ``None`` if
    the rewrite is refused or any check fails."""
    import onnx

    dynamic = dynamic_graph(onnx.load(str(path)))
    if dynamic is None:
        return None
    tmp = target.with_name(f".{target.name}.{os.getpid()}.check.onnx")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.write_bytes(dynamic.SerializeToString())
        generic = open_file(tmp)
        x = probe_inputs(fixed_hw, 1, seed=0)
        other = (fixed_hw[0] // 2 // layout.align * layout.align or layout.align, fixed_hw[1] + layout.align)
        if not (outputs_close(generic.run(x), original.run(x))
                and shapes_ok(generic.run(probe_inputs(other, 1, seed=2)), layout.expected_shapes(other), 1)):
            return None
        return atomic_write_bytes(target, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)


_MEMO: dict[tuple, Path | None] = {}
_MEMO_LOCK = threading.Lock()


def shape_generic_file(path: Path, open_file: Callable[[Path], OnnxSession],
                       original: Callable[[], OnnxSession], layout: SCRFDLayout,
                       fixed_hw: tuple[int, int]) -> Path | None:
    """The checked shape-generic copy of the fixed-size SCRFD file ``path`` (cached by content hash),
    or ``None`` when it cannot be made generic (memoised per file in this process).

    ``open_file(p)`` opens a file on the runtime that will run it; ``original()`` opens ``path``
    itself (only called to check a fresh rewrite)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(cache_dir()))
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    target = cache_dir() / "scrfd" / f"{path.stem}-{sha256sum(path)[:16]}-generic{REWRITE_VERSION}.onnx"
    result: Path | None = target if target.is_file() else None
    if result is None:
        try:
            result = _checked_rewrite(path, original(), open_file, layout, fixed_hw, target)
        except Exception:  # any failure: keep the file as it is
            result = None
    with _MEMO_LOCK:
        _MEMO[key] = result
    return result
