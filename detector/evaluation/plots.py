"""Precision-recall curves of a WIDER FACE result (matplotlib, Agg canvas, no pyplot state)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from detector.evaluation.widerface import WiderFaceResult

__all__ = ["plot_pr_curves"]


def plot_pr_curves(result: WiderFaceResult, out_dir: str | os.PathLike[str], *, label: str = "ours",
                   prefix: str = "pr_curve", dpi: int = 100) -> list[Path]:
    """Write one precision-recall PNG per setting (``<out_dir>/<prefix>_<setting>.png``).

    Uses matplotlib's object API with the Agg canvas (no pyplot state).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for setting, r in result.settings.items():
        fig = Figure(figsize=(5, 4.5), dpi=dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ok = np.isfinite(r.precision)
        ax.plot(r.recall[ok], r.precision[ok], lw=2, label=f"{label} (AP {r.ap:.4f})")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision",
               title=f"WIDER FACE val {setting}"
                     + ("" if result.complete else f" ({result.images_evaluated}/{result.images_total} images)"))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
        path = out_dir / f"{prefix}_{setting}.png"
        fig.savefig(path)
        paths.append(path)
    return paths
