"""Verification's outputs: the plain-text table, the ROC plot, and ``report.json`` with the scored
pairs (see :mod:`pipeline.verification.runner` for the evaluation itself)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.fsio import atomic_path, atomic_write_text
from pipeline.verification.metrics import far_key

if TYPE_CHECKING:
    from pipeline.verification.runner import EvaluationResult

__all__ = ["format_table", "plot_roc", "write_report"]


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def format_table(result: EvaluationResult) -> str:
    """Plain-text table: AUC and TAR@FAR per source, then each source's gain over the baseline."""
    fars = list(result.config.fars)
    folds = result.protocol.folds
    kfold_head = [] if folds is None else [f"{np.unique(folds).size}-fold acc %"]
    head = ["source", "pairs"] + kfold_head + ["AUC"] + [f"TAR@{far_key(f)}" for f in fars]
    rows = []
    for name, res in result.sources.items():
        m = res.metrics
        kf = [] if res.kfold is None else [f"{100 * res.kfold.mean:.2f} ± {100 * res.kfold.std:.2f}"]
        rows.append([name, str(int(res.pair_mask.sum()))] + kf + [_fmt(m.auc)] + [_fmt(m.tar_at_far[f]) for f in fars])
    base_kfold = result.sources[result.config.baseline_source].kfold
    for name, gain in result.gains().items():
        res = result.sources[name]
        kf = [] if folds is None else [f"{100 * (res.kfold.mean - base_kfold.mean):+.2f}"]
        rows.append([f"{name} - {gain['vs']}", ""] + kf + [_fmt(gain["auc"], True)]
                    + [_fmt(gain["tar_at_far"][far_key(f)], True) for f in fars])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    first = next(iter(result.sources.values())).metrics
    lines.append(f"n/a: FAR below 1/negatives ({first.negatives} negative pairs) cannot be measured")
    return "\n".join(lines)


def _thin_roc(fpr: np.ndarray, tpr: np.ndarray, floor: float, points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """At most ~``points`` ROC points, evenly spaced in log FAR (IJB-C has millions); keeps the step shape."""
    if fpr.size <= 2 * points:
        return fpr, tpr
    grid = np.logspace(np.log10(floor), 0.0, points)
    # last ROC point at or below each grid FAR (the highest TAR reachable there), plus the origin
    idx = np.unique(np.r_[0, np.searchsorted(fpr, grid, side="right") - 1, fpr.size - 1])
    return fpr[idx], tpr[idx]


def plot_roc(result: EvaluationResult, path: Path) -> Path:
    """ROC curves (log FAR axis), one per source, saved as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lowest = 1.0
    for name, res in result.sources.items():
        roc = res.metrics.roc
        floor = 1.0 / roc.negatives
        lowest = min(lowest, floor)
        fpr, tpr = _thin_roc(roc.fpr, roc.tpr, floor)
        fpr = np.maximum(fpr, floor / 2)  # FAR 0 drawn at half the smallest measurable FAR
        ax.step(fpr, tpr, where="post", lw=1.4, label=f"{name} (AUC = {100 * roc.auc:.2f}%)")
    ax.set_xscale("log")
    ax.set_xlim(lowest / 2, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.grid(linestyle="--", linewidth=0.6)
    ax.set_xlabel("False accept rate")
    ax.set_ylabel("True accept rate")
    ax.set_title(f"ROC - {result.protocol.name} ({len(result.protocol.labels)} pairs)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_report(result: EvaluationResult, out_dir: Path | str) -> dict[str, Path]:
    """``report.json``, ``roc.png`` and per-source ``scores_<source>.npz`` (the scored pairs: ``scores``
    float32, ``labels`` bool, ``pair_index`` into the protocol's pairs) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "report.json"
    atomic_write_text(report_path, json.dumps(result.to_json(), indent=2, default=_json_default, allow_nan=False))
    paths = {"report": report_path, "roc": plot_roc(result, out / "roc.png")}
    for name, res in result.sources.items():
        p = out / f"scores_{name}.npz"
        with atomic_path(p) as tmp, open(tmp, "wb") as f:
            np.savez(f, scores=res.scores.astype(np.float32), labels=res.labels,
                     pair_index=np.flatnonzero(res.pair_mask))
        paths[f"scores_{name}"] = p
    return paths
