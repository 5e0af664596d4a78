"""The maths of the identity pass (see :mod:`pipeline.job.identity`): each identity's centre, its
photos' distances to it and the folder's outlier threshold, one identity in memory at a time."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from pipeline.curation.identity import OutlierRule, cosine_distances, robust_centre
from pipeline.job.identity.store import IdentityTable
from pipeline.records import EMBEDDINGS_NAME
from pipeline.writers import identity_of

__all__ = ["identity_figures", "score_identities"]


def identity_figures(embeddings: np.ndarray, sizes: np.ndarray,
                     rule: OutlierRule) -> tuple[int, np.ndarray, dict[str, Any]]:
    """One identity's centre and distances.

    Args:
        embeddings: ``[R, D]`` unit rows: the faces of the identity's photos, photo after photo.
        sizes: ``[P]`` faces per photo (each >= 1, summing to ``R``).
        rule: the outlier rule.

    Returns:
        the centre's local row (in ``embeddings``), the ``[R]`` cosine distances (``1 - cos``,
        clipped to ``[0, 2]``) of every face to the centre, and the identity's figures
        (``photos``, ``single_face_photos``, ``threshold``, ``rule``, ``median_distance``,
        ``mad_distance``, ``outliers``) where a photo's distance is that of its nearest face.
        The centre is :func:`robust_centre` of the single-face photos (of every face when none).
    """
    sizes = np.asarray(sizes, np.int64)
    single = (np.cumsum(sizes) - sizes)[sizes == 1]  # local rows of the single-face photos
    base = single if single.size else np.arange(len(embeddings))
    centre = int(base[robust_centre(embeddings[base])])
    d = np.clip(cosine_distances(embeddings, embeddings[centre]), 0.0, 2.0)
    starts = np.cumsum(sizes) - sizes
    nearest = np.array([d[s:s + k].min() for s, k in zip(starts, sizes)], np.float64)
    threshold = round(float(rule.threshold(nearest)), 5)
    median = float(np.median(nearest))
    figures = {
        "photos": len(sizes), "single_face_photos": int(single.size), "threshold": threshold,
        "rule": "fixed" if len(sizes) < rule.min_photos else "folder", "median_distance": round(median, 5),
        "mad_distance": round(float(np.median(np.abs(nearest - median))), 5),
        "outliers": int((nearest > threshold).sum()),
    }
    return centre, d, figures


def score_identities(table: IdentityTable, rule: OutlierRule, *, keep: set[str], want: set[str]) -> None:
    """Centres, distances and thresholds of every identity among the photos in ``keep`` (the
    listed inputs), from ``dst/embeddings.npy``; fills ``table.info`` (per-photo JSON for the photos
    in ``want``, the crop pass's) and ``table.centres`` (per-identity figures)."""
    embeddings = np.load(table.store.dst / EMBEDDINGS_NAME, mmap_mode="r")
    starts, counts = table.photo_start, table.photo_count
    groups: dict[str | None, list[int]] = {}
    for p, src in enumerate(table.sources):
        if src in keep:
            groups.setdefault(identity_of(src), []).append(p)
    for identity, photos in groups.items():
        photos = [p for p in photos if counts[p]]
        distances: dict[int, np.ndarray] = {}
        threshold = None
        if identity is not None and photos:
            rows = np.concatenate([np.arange(starts[p], starts[p] + counts[p]) for p in photos])
            local, d, figures = identity_figures(np.asarray(embeddings[rows], np.float32), counts[photos], rule)
            offset = 0
            for p in photos:
                distances[p] = d[offset:offset + counts[p]]
                offset += counts[p]
            centre_row = int(rows[local])
            threshold = figures["threshold"]
            table.centres[identity] = {
                "photos": figures["photos"], "single_face_photos": figures["single_face_photos"],
                "centre_row": centre_row, "centre_src": table.sources[table.photo_of_row(centre_row)],
                **{k: figures[k] for k in ("threshold", "rule", "median_distance", "mad_distance", "outliers")},
            }
        for p in groups[identity]:
            src = table.sources[p]
            if src not in want:
                continue
            first, k = int(starts[p]), int(counts[p])
            dist = distances.get(p)
            table.info[src] = json.dumps({
                "identity": identity, "threshold": threshold,
                "faces": [[table.face_of_row(r), r, None if dist is None else round(float(dist[r - first]), 5),
                           *(round(v, 2) for v in table.row_box(r))]
                          for r in range(first, first + k)],
            }, separators=(",", ":"))
