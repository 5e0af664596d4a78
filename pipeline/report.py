"""The align job's visual report: ``dst/report.html``, a static page built from the manifest alone.

No server and no external URL: HTML, inline CSS, inline SVG histograms and a few lines of inline
JavaScript (it only marks on ``<body>`` whether every image loaded). Open it from the file system.

What it shows (each part only when the manifest has the fields it needs, so manifests of older
runs, without ``quality`` or ``--recognizer`` fields, still give a report):

* counts per status (``ok``, ``no_face``, ``error``, ``filtered``), identity outliers, given and
  detected landmarks, faces and crops;
* histograms of score, box size, inter-ocular distance, yaw / pitch / roll, sharpness, brightness
  (all candidate faces, the selected ones darker), faces per photo and identity distance. Box size
  and eye distance come from ``quality`` when present, else from the box and landmarks;
* the problem photos (``no_face``, ``error``, ``filtered``, ``identity_outlier``): a seeded random
  sample of each, as thumbnails of the source photo with the detections drawn (boxes, the five
  landmarks, the selected face in green, the others in orange), and the complete list as paged
  tables (``report_files/<kind>-NNNN.html``);
* a contact sheet per identity (top-level folder): thumbnails of its crops, outliers first and
  framed in red, paged (``report_files/identities-NNNN.html``, ``page_size`` identities a page);
* a seeded random sample grid of crops.

Crop thumbnails are the crop files themselves for the ``folder`` and ``recordio`` formats
(referenced by relative path, nothing copied); for ``webdataset`` the shown crops are copied out
of the shards into ``report_files/crops/``. Problem thumbnails are small JPEGs in
``report_files/thumbs/`` drawn from the source photos (``src`` from ``dst/job.json``; a photo
that cannot be read is shown as text).

Scale: the manifest is streamed once. Memory holds counters, histogram bins, the seeded
reservoir samples, one page of HTML per paged list and the current identity's thumbnails (at
most ``per_identity``), never every record. A finished job's manifest is compacted (one record
per photo, sorted), so an identity's records are consecutive; any other manifest is first
compacted into a temporary copy. Everything is built in a temporary folder, swapped in as
``report_files/``, and ``report.html`` is written last, atomically.
"""

from __future__ import annotations

import bisect
import html
import json
import logging
import math
import os
import random
import shutil
import stat
import tarfile
import time
import urllib.parse
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from common.fsio import TEMP_MARKER, atomic_write_bytes, atomic_write_text, temp_path
from pipeline.images import DEFAULT_MAX_PIXELS, read_image
from pipeline.manifest import compact_manifest, iter_manifest
from pipeline.writers import identity_of

__all__ = [
    "FILES_NAME", "MEASURES", "PROBLEM_KINDS", "REPORT_NAME", "Histogram", "MeasureSpec", "ReportConfig",
    "ReportError", "Reservoir", "build_report", "draw_detections", "face_measures", "svg_histogram",
]

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
FILES_NAME = "report_files"
MANIFEST_NAME = "manifest.jsonl"
JOB_NAME = "job.json"
SUMMARY_NAME = "summary.json"

STATUS_ORDER = ("ok", "no_face", "error", "filtered")
PROBLEM_KINDS = ("no_face", "error", "filtered", "identity_outlier")
NO_FOLDER = "(top level)"
"""Contact-sheet name of the photos directly in ``src`` (no identity folder)."""


class ReportError(ValueError):
    """The report cannot be built (no manifest in ``dst``); the message names the file."""


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    """What the report shows and how much of it.

    Attributes:
        page_size: identities per contact-sheet page.
        per_identity: crop thumbnails per identity (outliers first, then in file order).
        sample: crops in the random sample grid.
        problems: drawn thumbnails per problem kind on the main page (a random sample).
        list_page_size: rows per page of the complete problem lists.
        thumb_side: long side, in pixels, of the drawn problem thumbnails.
        seed: seed of every random sample (same manifest and seed: same report).
        src: folder of the source photos (``None``: ``settings.src`` of ``dst/job.json``).
        progress: show a progress bar while reading the manifest.
    """

    page_size: int = 50
    per_identity: int = 40
    sample: int = 60
    problems: int = 40
    list_page_size: int = 1000
    thumb_side: int = 256
    seed: int = 0
    src: Path | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("page_size", "per_identity", "list_page_size", "thumb_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        for name in ("sample", "problems"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if self.src is not None:
            object.__setattr__(self, "src", Path(self.src))


# ------------------------------------------------------------------------------ measures


@dataclass(frozen=True)
class MeasureSpec:
    """One histogram: ``edges`` are fixed (streaming), values outside go to the end bins."""

    key: str
    title: str
    edges: tuple[float, ...]
    log_scale: bool = False
    per_face: bool = True


def _linear(lo: float, hi: float, step: float) -> tuple[float, ...]:
    n = int(round((hi - lo) / step))
    return tuple(round(lo + i * step, 6) for i in range(n + 1))


def _geometric(lo: float, hi: float, per_octave: int = 2) -> tuple[float, ...]:
    n = int(round(math.log2(hi / lo) * per_octave))
    return tuple(round(lo * 2 ** (i / per_octave), 3) for i in range(n + 1))


MEASURES: tuple[MeasureSpec, ...] = (
    MeasureSpec("score", "detector score", _linear(0.0, 1.0, 0.05)),
    MeasureSpec("box_size", "box size (px, sqrt of area)", _geometric(4, 4096), log_scale=True),
    MeasureSpec("eye_distance", "eye distance (px)", _geometric(1, 1024), log_scale=True),
    MeasureSpec("yaw", "yaw (deg)", _linear(-90, 90, 7.5)),
    MeasureSpec("pitch", "pitch (deg)", _linear(-90, 90, 7.5)),
    MeasureSpec("roll", "roll (deg)", _linear(-90, 90, 7.5)),
    MeasureSpec("sharpness", "sharpness of the crop", _geometric(1, 65536), log_scale=True),
    MeasureSpec("brightness", "brightness of the crop (0-255)", _linear(0, 256, 8)),
    MeasureSpec("faces", "faces per photo", _linear(0, 11, 1), per_face=False),
    MeasureSpec("identity_distance", "cosine distance to the identity centre", _linear(0.0, 2.0, 0.05),
                per_face=False),
)
"""The histograms, in display order (``per_face``: one value per candidate face, else per photo)."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def face_measures(face: Mapping[str, Any]) -> dict[str, float]:
    """The per-face measures of one manifest face: ``score`` (absent for given landmarks), every
    numeric field of ``quality``, and, when ``quality`` lacks them, ``box_size`` (sqrt of the box
    area) from ``box`` and ``eye_distance`` (pixels between the two eyes) from ``landmarks``."""
    out: dict[str, float] = {}
    score = _number(face.get("score"))
    if score is not None:
        out["score"] = score
    quality = face.get("quality")
    if isinstance(quality, Mapping):
        for key, value in quality.items():
            if (v := _number(value)) is not None:
                out[key] = v
    box = face.get("box")
    if "box_size" not in out and isinstance(box, Sequence) and len(box) == 4:
        try:
            w, h = float(box[2]) - float(box[0]), float(box[3]) - float(box[1])
            out["box_size"] = math.sqrt(max(w, 0.0) * max(h, 0.0))
        except (TypeError, ValueError):
            pass
    lm = face.get("landmarks")
    if "eye_distance" not in out and isinstance(lm, Sequence) and len(lm) >= 2:
        try:
            out["eye_distance"] = math.hypot(float(lm[1][0]) - float(lm[0][0]), float(lm[1][1]) - float(lm[0][1]))
        except (TypeError, ValueError, IndexError):
            pass
    return out


class Histogram:
    """Streaming counts over fixed bins: every value (``all``) and the selected faces' (``selected``)."""

    def __init__(self, spec: MeasureSpec) -> None:
        self.spec = spec
        bins = len(spec.edges) - 1
        self.all = [0] * bins
        self.selected = [0] * bins
        self.n = 0
        self.total = 0.0
        self.lo = math.inf
        self.hi = -math.inf

    def bin_of(self, value: float) -> int:
        """Index of the bin ``[edges[i], edges[i+1])`` holding ``value``, clamped to the end bins."""
        i = bisect.bisect_right(self.spec.edges, value) - 1
        return 0 if i < 0 else i if i < len(self.all) else len(self.all) - 1

    def add(self, value: float, *, selected: bool = False) -> None:
        i = self.bin_of(value)
        self.all[i] += 1
        if selected:
            self.selected[i] += 1
        self.n += 1
        self.total += value
        if value < self.lo:
            self.lo = value
        if value > self.hi:
            self.hi = value

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan


class Reservoir:
    """A uniform random sample of at most ``k`` items of a stream (Vitter's algorithm R), seeded."""

    def __init__(self, k: int, *, seed: str) -> None:
        self.k = k
        self.items: list[Any] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.k:
            self.items.append(item)
        elif self.k:
            j = self._rng.randrange(self.seen)
            if j < self.k:
                self.items[j] = item


# ------------------------------------------------------------------------------ drawing


_LANDMARK_COLORS = ((0, 0, 255), (255, 0, 0), (0, 200, 0), (255, 0, 255), (0, 255, 255))  # BGR, in point order
_SELECTED = (40, 200, 40)
_OTHER = (0, 140, 255)


def draw_detections(image: np.ndarray, faces: Sequence[Mapping[str, Any]], selected: Sequence[int], *,
                    max_side: int = 256) -> np.ndarray:
    """A thumbnail of ``image`` with the detections drawn.

    Args:
        image: ``[H, W, 3]`` uint8 BGR, the photo in the pixels the manifest's coordinates refer to.
        faces: manifest faces (``box`` ``[x1, y1, x2, y2]`` or ``None``, ``landmarks`` ``[[x, y] * 5]``,
            ``score`` or ``None``).
        selected: indices of the selected faces (drawn green and thicker; the others orange).
        max_side: the thumbnail's longer side (never enlarged).

    Returns:
        ``[h, w, 3]`` uint8 BGR with ``max(h, w) <= max_side``.
    """
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    thumb = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) \
        if scale < 1.0 else image.copy()
    chosen = set(int(i) for i in selected)
    for index, face in enumerate(faces):
        color = _SELECTED if index in chosen else _OTHER
        thick = 2 if index in chosen else 1
        box = face.get("box")
        if isinstance(box, Sequence) and len(box) == 4:
            x1, y1, x2, y2 = (int(round(float(v) * scale)) for v in box)
            cv2.rectangle(thumb, (x1, y1), (x2, y2), color, thick, cv2.LINE_8)
            label = str(index) if _number(face.get("score")) is None else f"{index}:{float(face['score']):.2f}"
            cv2.putText(thumb, label, (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, color, 1, cv2.LINE_AA)
        for point, c in zip(face.get("landmarks") or (), _LANDMARK_COLORS):
            try:
                x, y = int(round(float(point[0]) * scale)), int(round(float(point[1]) * scale))
            except (TypeError, ValueError, IndexError):
                continue
            cv2.circle(thumb, (x, y), 2 if thick > 1 else 1, c, -1, cv2.LINE_8)
    return thumb


# ------------------------------------------------------------------------------ HTML pieces


def _text(value: Any) -> str:
    """HTML-escaped text; lone surrogates (file names that are not UTF-8) shown as escapes."""
    s = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(s, quote=True)


def _url(rel: str) -> str:
    """A relative URL for a POSIX relative path (percent-encoded; names that are not UTF-8 keep
    their bytes)."""
    return urllib.parse.quote(os.fsencode(rel), safe="/")


def _file_url(path: Path) -> str:
    return "file://" + urllib.parse.quote(os.fsencode(str(path.resolve())), safe="/")


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if value == 0 or 0.01 <= abs(value) < 10000:
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value:.2g}"


def svg_histogram(hist: Histogram) -> str:
    """An inline ``<svg>`` bar chart of ``hist``: light bars every value, dark bars the selected
    faces; the end bins also hold the values beyond them."""
    width, height, left, bottom, top = 330, 150, 34, 20, 30
    plot_w, plot_h = width - left - 6, height - bottom - top
    bins = len(hist.all)
    peak = max(hist.all) or 1
    bar_w = plot_w / bins
    parts = [f'<svg class="hist" data-measure="{hist.spec.key}" data-n="{hist.n}" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" role="img">',
             f'<title>{_text(hist.spec.title)}</title>',
             f'<text x="4" y="12" class="t">{_text(hist.spec.title)}</text>',
             f'<text x="4" y="24" class="t muted">n={hist.n}, mean {_fmt(hist.mean)}, min {_fmt(hist.lo)}, '
             f'max {_fmt(hist.hi)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" class="ax"/>',
             f'<text x="{left - 3}" y="{top + 8}" class="y">{peak}</text>']
    for i, (a, s) in enumerate(zip(hist.all, hist.selected)):
        x = left + i * bar_w
        for count, cls in ((a, "all"), (s, "sel")):
            if count:
                bh = max(1.0, plot_h * count / peak)
                parts.append(f'<rect class="{cls}" x="{x + 0.5:.1f}" y="{top + plot_h - bh:.1f}" '
                             f'width="{max(bar_w - 1, 1):.1f}" height="{bh:.1f}"><title>'
                             f'[{_fmt(hist.spec.edges[i])}, {_fmt(hist.spec.edges[i + 1])}): {a}'
                             f'{f" ({s} selected)" if s else ""}</title></rect>')
    for i in sorted({0, bins // 2, bins}):
        x = left + i * bar_w
        anchor = "start" if i == 0 else "end" if i == bins else "middle"
        parts.append(f'<text x="{x:.1f}" y="{height - 5}" class="x" text-anchor="{anchor}">'
                     f'{_fmt(hist.spec.edges[i])}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:16px 0 6px}table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;
border-bottom:1px solid #e4e4e4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:6px}.grid figure{margin:0;width:120px;font-size:11px;overflow:hidden}
.grid figure.wide{width:264px}.grid img{display:block;max-width:100%;background:#ddd}
figcaption{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.crops img{width:72px;height:72px;border:2px solid transparent}.crops img.outlier{border-color:#d22}
.crops img.given{border-color:#27c}.missing{width:100%;height:120px;overflow:hidden;background:#eee;color:#777;display:flex;
align-items:center;justify-content:center;text-align:center;font-size:11px}
.hists{display:flex;flex-wrap:wrap;gap:10px}svg.hist{background:#fff;border:1px solid #ddd}
svg .all{fill:#9cc3e6}svg .sel{fill:#2a6fb0}svg .ax{stroke:#888}svg text{font-size:10px;fill:#333}
svg .y{text-anchor:end}svg .muted{fill:#777}.muted{color:#777}.bad{color:#b00}nav{margin:8px 0}nav a{margin-right:10px}
details pre{font-size:12px;background:#fff;border:1px solid #ddd;padding:6px;overflow:auto}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, loaded = 0, failed = [];
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { loaded++; } else { failed.push(imgs[i].getAttribute('src')); }
  }
  var b = document.body;
  b.setAttribute('data-images-total', String(imgs.length));
  b.setAttribute('data-images-loaded', String(loaded));
  b.setAttribute('data-images-failed', String(failed.length));
  if (failed.length) {
    var p = document.getElementById('broken');
    p.textContent = failed.length + ' image(s) could not be loaded: ' + failed.slice(0, 5).join(', ');
    p.hidden = false;
  }
  b.setAttribute('data-ready', '1');
});
"""


def _page(title: str, body: str, *, home: str) -> str:
    nav = f'<nav><a href="{home}">report</a></nav>' if home else ""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{_text(title)}</title>'
            f'<meta name="viewport" content="width=device-width"><style>{_CSS}</style>'
            f'<script>{_SCRIPT}</script></head>\n<body>{nav}<p id="broken" class="bad" hidden></p>\n{body}\n'
            f'</body></html>\n')


# ------------------------------------------------------------------------------ paging


@dataclass
class _PageInfo:
    number: int
    first: str
    last: str
    items: int


class _Pager:
    """Writes items (HTML fragments) into pages ``<folder>/<prefix>-NNNN.html`` of ``size``
    items, holding one page at a time; a page is written once it is known whether a next one exists."""

    def __init__(self, folder: Path, prefix: str, title: str, size: int, *, wrap: tuple[str, str]) -> None:
        self.folder, self.prefix, self.title, self.size, self.wrap = folder, prefix, title, size, wrap
        self.items: list[tuple[str, str]] = []
        self.pages: list[_PageInfo] = []

    @staticmethod
    def name(prefix: str, number: int) -> str:
        return f"{prefix}-{number:04d}.html"

    def add(self, label: str, fragment: str) -> None:
        if len(self.items) == self.size:
            self._write(has_next=True)
        self.items.append((label, fragment))

    def finish(self) -> list[_PageInfo]:
        if self.items:
            self._write(has_next=False)
        return self.pages

    def _write(self, *, has_next: bool) -> None:
        number = len(self.pages) + 1
        links = []
        if number > 1:
            links.append(f'<a href="{self.name(self.prefix, number - 1)}">&larr; page {number - 1}</a>')
        if has_next:
            links.append(f'<a href="{self.name(self.prefix, number + 1)}">page {number + 1} &rarr;</a>')
        nav = f'<nav>{"".join(links)}</nav>'
        body = (f"<h1>{_text(self.title)}, page {number}</h1>{nav}{self.wrap[0]}"
                + "\n".join(f for _, f in self.items) + f"{self.wrap[1]}{nav}")
        atomic_write_text(self.folder / self.name(self.prefix, number),
                          _page(f"{self.title}, page {number}", body, home=f"../{REPORT_NAME}"))
        self.pages.append(_PageInfo(number, self.items[0][0], self.items[-1][0], len(self.items)))
        self.items = []


# ------------------------------------------------------------------------------ the builder


def _identity(record: Mapping[str, Any]) -> str:
    name = record.get("identity")
    if isinstance(name, str) and name:
        return name
    return identity_of(record["src"]) or NO_FOLDER


def _kinds(record: Mapping[str, Any]) -> list[str]:
    kinds = [record.get("status")] if record.get("status") in ("no_face", "error", "filtered") else []
    if record.get("identity_outlier") is True:
        kinds.append("identity_outlier")
    return kinds


def _reason(record: Mapping[str, Any], kind: str) -> str:
    if kind == "error":
        return str(record.get("error") or "error")
    if kind == "filtered":
        return str(record.get("filtered") or "filtered")
    if kind == "no_face":
        n = len(record.get("faces") or ())
        return "no face detected" if not n else f"no face selected ({n} detection{'s' if n > 1 else ''})"
    d = _number(record.get("identity_distance"))
    return f"distance {d:.3f} to the centre of {_identity(record)}" if d is not None else "identity outlier"


class _Unsorted(Exception):
    """The manifest is not one record per photo in sorted order (not compacted)."""


class _Builder:
    def __init__(self, dst: Path, config: ReportConfig, work: Path) -> None:
        self.dst, self.config, self.work = dst, config, work
        self.settings: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        for name, attr in ((JOB_NAME, "settings"), (SUMMARY_NAME, "summary")):
            try:
                data = json.loads((dst / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                setattr(self, attr, data.get("settings", {}) if name == JOB_NAME else data)
        src = config.src or self.settings.get("src")
        self.src = Path(src) if src else None
        self.ext = str(self.settings.get("ext") or "jpg")
        self.statuses: Counter = Counter()
        self.counts: Counter = Counter()
        self.hists = {spec.key: Histogram(spec) for spec in MEASURES}
        self.samples = Reservoir(config.sample, seed=f"{config.seed}:sample")
        self.problems = {k: Reservoir(config.problems, seed=f"{config.seed}:{k}") for k in PROBLEM_KINDS}
        self.lists = {k: _Pager(work, k, f"{k} photos", config.list_page_size,
                                wrap=("<table><tr><th>photo</th><th>reason</th><th>faces</th></tr>", "</table>"))
                      for k in PROBLEM_KINDS}
        self.identities = _Pager(work, "identities", "identities", config.page_size, wrap=("", ""))
        self.shard_keys: dict[str, array] = {}
        self._current: str | None = None
        self._group: dict[str, Any] = {}
        self._loose: dict[str, Any] | None = None  # photos directly in src: not consecutive

    # ---- crops
    def crop_url(self, output: str, *, depth: int) -> str | None:
        """URL of a crop thumbnail from a page ``depth`` folders below ``dst``."""
        up = "../" * depth
        shard, sep, key = output.partition("#")
        if not sep:
            return up + _url(output)
        try:
            sample = int(key.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            return None
        self.shard_keys.setdefault(shard, array("q")).append(sample)
        return f"{up}{FILES_NAME}/crops/{_url(PurePosixPath(shard).stem)}/{_url(key)}.{self.ext}"

    def extract_shard_crops(self) -> None:
        """Copy the shown crops out of the WebDataset shards (one sequential read per shard)."""
        for shard, samples in sorted(self.shard_keys.items()):
            wanted = set(samples)
            out = self.work / "crops" / PurePosixPath(shard).stem
            out.mkdir(parents=True, exist_ok=True)
            try:
                with tarfile.open(self.dst / shard, "r|") as tar:
                    for member in tar:
                        key, _, suffix = member.name.partition(".")
                        if suffix != self.ext or not member.isfile():
                            continue
                        try:
                            hit = int(key.rsplit("-", 1)[1]) in wanted
                        except (IndexError, ValueError):
                            hit = False
                        if hit and (f := tar.extractfile(member)) is not None:
                            atomic_write_bytes(out / member.name, f.read())
            except (OSError, tarfile.TarError) as e:
                log.warning("report: cannot read crops from %s: %s", self.dst / shard, e)

    # ---- the stream
    def add(self, record: dict[str, Any]) -> None:
        status = str(record.get("status"))
        self.statuses[status] += 1
        faces = record.get("faces") or []
        selected = set(i for i in record.get("selected") or () if isinstance(i, int))
        outputs = record.get("outputs") or []
        self.counts["faces"] += len(faces)
        self.counts["crops"] += len(outputs)
        if record.get("landmarks") in ("given", "detected"):
            self.counts[f"landmarks {record['landmarks']}"] += 1
        if record.get("identity_outlier") is True:
            self.counts["identity_outlier"] += 1
        for index, face in enumerate(faces):
            if isinstance(face, Mapping):
                for key, value in face_measures(face).items():
                    if key in self.hists and self.hists[key].spec.per_face:
                        self.hists[key].add(value, selected=index in selected)
        if status in ("ok", "no_face", "filtered"):
            self.hists["faces"].add(len(faces))
        if (d := _number(record.get("identity_distance"))) is not None:
            self.hists["identity_distance"].add(d, selected=bool(record.get("identity_outlier")))
        kinds = _kinds(record)
        for kind in kinds:
            self.problems[kind].add(self._compact(record, kind))
            self.lists[kind].add(record["src"], self._list_row(record, kind))
        if outputs and status == "ok":
            self.samples.add({"src": record["src"], "output": outputs[0], "identity": _identity(record)})
        self._add_to_identity(record, outputs, status, "identity_outlier" in kinds)

    @staticmethod
    def _compact(record: Mapping[str, Any], kind: str) -> dict[str, Any]:
        return {"src": record["src"], "kind": kind, "reason": _reason(record, kind),
                "faces": record.get("faces") or [], "selected": record.get("selected") or [],
                "outputs": record.get("outputs") or []}

    def _list_row(self, record: Mapping[str, Any], kind: str) -> str:
        link = _text(record["src"])
        if self.src is not None:
            link = f'<a href="{_file_url(self.src / record["src"])}">{link}</a>'
        return (f"<tr><td>{link}</td><td>{_text(_reason(record, kind))}</td>"
                f'<td class="n">{len(record.get("faces") or ())}</td></tr>')

    def _add_to_identity(self, record: Mapping[str, Any], outputs: Sequence[str], status: str, outlier: bool) -> None:
        name = _identity(record)
        if name == NO_FOLDER:
            if self._loose is None:
                self._loose = self._new_group(NO_FOLDER)
            group = self._loose
        else:
            if name != self._current:
                self._flush_group()
                self._current, self._group = name, self._new_group(name)
            group = self._group
        group["photos"] += 1
        group["statuses"][status] += 1
        limit = self.config.per_identity
        for output in outputs:
            pool = group["outliers"] if outlier else group["crops"]
            if len(pool) < limit:
                title = record["src"]
                if (d := _number(record.get("identity_distance"))) is not None:
                    title += f" (distance {d:.3f})"
                cls = "outlier" if outlier else "given" if record.get("landmarks") == "given" else ""
                pool.append((output, title, cls))
            else:
                group["more"] += 1

    @staticmethod
    def _new_group(name: str) -> dict[str, Any]:
        return {"name": name, "photos": 0, "statuses": Counter(), "crops": [], "outliers": [], "more": 0}

    def _flush_group(self, group: dict[str, Any] | None = None) -> None:
        group = group if group is not None else (self._group if self._current is not None else None)
        if not group:
            return
        shown = (group["outliers"] + group["crops"])[: self.config.per_identity]
        hidden = group["more"] + len(group["outliers"]) + len(group["crops"]) - len(shown)
        imgs = []
        for output, title, cls in shown:
            url = self.crop_url(output, depth=1)
            if url is not None:
                imgs.append(f'<a href="{url}"><img src="{url}" class="{cls}" title="{_text(title)}" '
                            f'alt="{_text(title)}"></a>')
        counts = ", ".join(f"{n} {s}" for s, n in sorted(group["statuses"].items()))
        more = f' <span class="muted">+{hidden} more crops</span>' if hidden else ""
        fragment = (f'<section class="identity" data-identity="{_text(group["name"])}" data-photos="{group["photos"]}">'
                    f'<h3>{_text(group["name"])} <span class="muted">{group["photos"]} photos: {_text(counts)}'
                    f'</span>{more}</h3><div class="grid crops">{"".join(imgs)}</div></section>')
        self.identities.add(group["name"], fragment)
        self.counts["identities"] += 1
        if group is self._group:
            self._current, self._group = None, {}

    def finish_stream(self) -> None:
        self._flush_group()
        if self._loose is not None:
            self._flush_group(self._loose)

    # ---- problem thumbnails
    def problem_figure(self, item: Mapping[str, Any], index: int) -> str:
        caption = (f'<figcaption title="{_text(item["src"])}">{_text(item["src"])}</figcaption>'
                   f'<figcaption class="muted" title="{_text(item["reason"])}">{_text(item["reason"])}</figcaption>')
        thumb, why = None, ""
        if item["kind"] == "error":  # the job could not read it: nothing to draw, and never re-read
            why = "the job could not read it"  # (a FIFO would block, a huge file would be read again)
        elif self.src is None:
            why = "source folder unknown"
        else:
            path = self.src / item["src"]
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):
                    raise ValueError("not a regular file")
                image = read_image(path, max_pixels=self.settings.get("max_pixels", DEFAULT_MAX_PIXELS) or None,
                                   exif_orientation=bool(self.settings.get("exif_orientation", True)))
                thumb = draw_detections(image, item["faces"], item["selected"], max_side=self.config.thumb_side)
            except (OSError, ValueError) as e:
                why = str(e)
        if thumb is None:
            return (f'<figure class="wide"><div class="missing" title="{_text(why)}">photo not shown:<br>'
                    f'{_text(why[:80])}</div>{caption}</figure>')
        ok, buf = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, 85])
        rel = f"thumbs/{item['kind']}-{index:04d}.jpg"
        atomic_write_bytes(self.work / rel, buf.tobytes())
        url = f"{FILES_NAME}/{rel}"
        crop = ""
        if item["kind"] == "identity_outlier" and item["outputs"]:
            crop_url = self.crop_url(item["outputs"][0], depth=0)
            if crop_url:
                crop = f'<img src="{crop_url}" alt="crop" style="width:72px">'
        return (f'<figure class="wide"><a href="{_file_url(self.src / item["src"])}"><img src="{url}" '
                f'alt="{_text(item["src"])}"></a>{crop}{caption}</figure>')


def _counts_html(b: _Builder) -> str:
    total = sum(b.statuses.values())
    rows = []
    for status in list(STATUS_ORDER) + sorted(set(b.statuses) - set(STATUS_ORDER)):
        n = b.statuses.get(status, 0)
        pct = f"{100 * n / total:.1f}%" if total else "-"
        rows.append(f'<tr data-status="{_text(status)}"><th>{_text(status)}</th><td class="n">{n}</td>'
                    f'<td class="n">{pct}</td></tr>')
    rows.append(f'<tr data-status="total"><th>photos</th><td class="n">{total}</td><td></td></tr>')
    extra = [("identity_outlier", "identity outliers"), ("landmarks given", "landmarks given"),
             ("landmarks detected", "landmarks detected"), ("faces", "faces detected"), ("crops", "crops written"),
             ("identities", "identities")]
    for key, label in extra:
        if key in b.counts or key in ("faces", "crops", "identities"):
            rows.append(f'<tr data-count="{_text(key)}"><th>{label}</th><td class="n">{b.counts.get(key, 0)}</td>'
                        f"<td></td></tr>")
    return f'<table id="counts">{"".join(rows)}</table>'


def _problems_html(b: _Builder, pages: Mapping[str, list[_PageInfo]]) -> str:
    parts = []
    for kind in PROBLEM_KINDS:
        sample = b.problems[kind]
        if not sample.seen:
            continue
        items = sorted(sample.items, key=lambda item: item["src"])
        figures = [b.problem_figure(item, i) for i, item in enumerate(items)]
        links = " ".join(f'<a href="{FILES_NAME}/{_Pager.name(kind, p.number)}">{p.number}</a>' for p in pages[kind])
        shown = f"a random sample of {len(items)}" if len(items) < sample.seen else f"all {len(items)}"
        parts.append(f'<section id="problem-{kind}" data-count="{sample.seen}"><h3>{kind}: {sample.seen} photos '
                     f'<span class="muted">({shown}; full list, pages: {links})</span></h3>'
                     f'<div class="grid">{"".join(figures)}</div></section>')
    if not parts:
        return "<p>No problem photos.</p>"
    return ('<p class="muted">Detections drawn: selected face green, other faces orange; landmarks: left eye red, '
            "right eye blue, nose green, mouth corners magenta / yellow.</p>" + "".join(parts))


def _identities_html(b: _Builder, pages: Sequence[_PageInfo]) -> str:
    if not pages:
        return "<p>No identities.</p>"
    rows = "".join(f'<tr><td><a href="{FILES_NAME}/{_Pager.name("identities", p.number)}">page {p.number}</a></td>'
                   f"<td>{_text(p.first)} &hellip; {_text(p.last)}</td><td class=\"n\">{p.items}</td></tr>"
                   for p in pages)
    return (f'<p>{b.counts["identities"]} identities (top-level folders), {b.config.page_size} per page; crops of '
            'identity outliers first, framed red; given landmarks framed blue.</p>'
            f'<table id="identity-pages"><tr><th>page</th><th>identities</th><th>count</th></tr>{rows}</table>')


def _sample_html(b: _Builder) -> str:
    if not b.samples.items:
        return "<p>No crops.</p>"
    figures = []
    for item in sorted(b.samples.items, key=lambda item: item["src"]):
        url = b.crop_url(item["output"], depth=0)
        if url is None:
            continue
        figures.append(f'<figure><a href="{url}"><img src="{url}" alt="{_text(item["src"])}" width="112" '
                       f'height="112"></a><figcaption title="{_text(item["src"])}">{_text(item["src"])}</figcaption>'
                       "</figure>")
    return (f'<p class="muted">{len(figures)} crops drawn at random (seed {b.config.seed}) from '
            f'{b.samples.seen} ok photos.</p><div class="grid" id="sample">{"".join(figures)}</div>')


def _iter_sorted(path: Path, *, progress: bool) -> Iterator[dict[str, Any]]:
    """The records; raises :class:`_Unsorted` at the first one not after the previous."""
    previous = None
    with tqdm(desc="report", unit="photo", disable=not progress, dynamic_ncols=True) as bar:
        for record in iter_manifest(path):
            if previous is not None and record["src"] <= previous:
                raise _Unsorted(record["src"])
            previous = record["src"]
            yield record
            bar.update(1)


def _stream(dst: Path, config: ReportConfig, work: Path, manifest: Path) -> _Builder:
    (work / "thumbs").mkdir(parents=True)
    builder = _Builder(dst, config, work)
    for record in _iter_sorted(manifest, progress=config.progress):
        builder.add(record)
    builder.finish_stream()
    return builder


def build_report(dst: str | os.PathLike, config: ReportConfig | None = None) -> Path:
    """Write ``dst/report.html`` (and ``dst/report_files/``) from ``dst/manifest.jsonl``.

    Returns the path of ``report.html``.

    Raises:
        ReportError: ``dst`` holds no manifest.
    """
    config = config or ReportConfig()
    dst = Path(dst)
    manifest = dst / MANIFEST_NAME
    if not manifest.is_file():
        raise ReportError(f"no manifest at {manifest}: is {dst} the --dst of an align job?")
    t0 = time.perf_counter()
    for stale in dst.glob(f".{FILES_NAME}{TEMP_MARKER}*"):  # left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    work = temp_path(dst / FILES_NAME)
    sorted_copy = temp_path(dst / MANIFEST_NAME)
    try:
        try:
            builder = _stream(dst, config, work, manifest)
        except _Unsorted:  # not compacted (a run in progress, or killed): start again on a sorted copy
            shutil.rmtree(work)
            shutil.copyfile(manifest, sorted_copy)
            compact_manifest(sorted_copy)
            builder = _stream(dst, config, work, sorted_copy)
        list_pages = {kind: builder.lists[kind].finish() for kind in PROBLEM_KINDS}
        identity_pages = builder.identities.finish()
        problems = _problems_html(builder, list_pages)
        sample = _sample_html(builder)
        identities = _identities_html(builder, identity_pages)
        builder.extract_shard_crops()
        hists = "".join(svg_histogram(h) for h in builder.hists.values() if h.n)
        settings = json.dumps(builder.settings, indent=1, ensure_ascii=False, default=str)
        src_line = _text(builder.src) if builder.src is not None else "unknown (no job.json)"
        body = (f"<h1>faceprep report: {_text(dst.resolve().name)}</h1>"
                f'<p class="muted">source {src_line}; output format {_text(builder.settings.get("format", "folder"))}; '
                f"built {time.strftime('%Y-%m-%d %H:%M:%S')} from {MANIFEST_NAME} in "
                f"{time.perf_counter() - t0:.1f} s.</p>"
                f"<h2>Counts</h2>{_counts_html(builder)}"
                f"<details><summary>job settings</summary><pre>{_text(settings)}</pre></details>"
                f'<h2>Quality</h2><p class="muted">Light bars: every candidate face (per photo for faces per '
                f"photo and identity distance); dark bars: the selected faces (outliers for identity distance). "
                f'The end bins include the values beyond them.</p><div class="hists">{hists or "No faces."}</div>'
                f"<h2>Problem photos</h2>{problems}"
                f"<h2>Identities</h2>{identities}"
                f"<h2>Sample</h2>{sample}")
        final = dst / FILES_NAME
        old = temp_path(final) if final.exists() else None
        if old is not None:
            os.replace(final, old)
        os.replace(work, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        sorted_copy.unlink(missing_ok=True)
    return atomic_write_text(dst / REPORT_NAME, _page(f"faceprep report: {dst.resolve().name}", body, home=""))
