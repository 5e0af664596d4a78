"""Building the report (see :mod:`pipeline.report`): :class:`ReportConfig`, one streaming pass over
the manifest (:class:`_Builder`: counters, histograms, reservoir samples, paged lists, one identity
at a time), and :func:`build_report`, which puts the pieces together and swaps them into place."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from common.fsio import TEMP_MARKER, atomic_write_text, temp_path
from pipeline.manifest import compact_manifest, iter_records
from pipeline.records import (
    DONE_STATUSES,
    JOB_NAME,
    MANIFEST_NAME,
    REPORT_FILES_NAME,
    REPORT_NAME,
    STATUS_OK,
    SUMMARY_NAME,
    PhotoRecord,
)
from pipeline.report.render import (
    Pager,
    counts_html,
    escape,
    file_url,
    identities_html,
    identity_section,
    list_row,
    page,
    problems_html,
    sample_html,
    svg_histogram,
)
from pipeline.report.shards import CropLinks
from pipeline.report.stats import (
    MEASURES,
    NO_FOLDER,
    OUTLIER,
    PROBLEM_KINDS,
    Histogram,
    Reservoir,
    face_measures,
    identity_name,
    number,
    problem_kinds,
    problem_reason,
)
from pipeline.report.thumbs import ProblemThumbs

__all__ = ["ReportConfig", "ReportError", "build_report"]


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




class _Unsorted(Exception):
    """The manifest is not one record per photo in sorted order (not compacted)."""


class _Builder:
    """The one pass over the records: counts, histograms, samples, the problem lists and the
    contact sheet (written page by page)."""

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
        self.crops = CropLinks(dst, work, str(self.settings.get("ext") or "jpg"))
        self.thumbs = ProblemThumbs(src=self.src, settings=self.settings, work=work, thumb_side=config.thumb_side,
                                    crops=self.crops)
        self.statuses: Counter = Counter()
        self.counts: Counter = Counter()
        self.hists = {spec.key: Histogram(spec) for spec in MEASURES}
        self.samples = Reservoir(config.sample, seed=f"{config.seed}:sample")
        self.problems = {k: Reservoir(config.problems, seed=f"{config.seed}:{k}") for k in PROBLEM_KINDS}
        self.lists = {k: Pager(work, k, f"{k} photos", config.list_page_size,
                               wrap=("<table><tr><th>photo</th><th>reason</th><th>faces</th></tr>", "</table>"))
                      for k in PROBLEM_KINDS}
        self.identities = Pager(work, "identities", "identities", config.page_size, wrap=("", ""))
        self._current: str | None = None
        self._group: dict[str, Any] = {}
        self._loose: dict[str, Any] | None = None  # photos directly in src: not consecutive

    def add(self, record: PhotoRecord) -> None:
        self.statuses[record.status] += 1
        selected = set(record.selected)
        self.counts["faces"] += len(record.faces)
        self.counts["crops"] += len(record.outputs)
        if record.landmarks in ("given", "detected"):
            self.counts[f"landmarks {record.landmarks}"] += 1
        if record.identity_outlier is True:
            self.counts[OUTLIER] += 1
        for index, face in enumerate(record.faces):
            for key, value in face_measures(face).items():
                if key in self.hists and self.hists[key].spec.per_face:
                    self.hists[key].add(value, selected=index in selected)
        if record.status in DONE_STATUSES:
            self.hists["faces"].add(len(record.faces))
        if (d := number(record.identity_distance)) is not None:
            self.hists["identity_distance"].add(d, selected=bool(record.identity_outlier))
        kinds = problem_kinds(record)
        for kind in kinds:
            reason = problem_reason(record, kind)
            self.problems[kind].add((record, reason))
            href = None if self.src is None else file_url(self.src / record.src)
            self.lists[kind].add(record.src, list_row(record.src, reason, len(record.faces), href=href))
        if record.outputs and record.status == STATUS_OK:
            self.samples.add(record)
        self._add_to_identity(record, OUTLIER in kinds)

    def _add_to_identity(self, record: PhotoRecord, outlier: bool) -> None:
        name = identity_name(record)
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
        group["statuses"][record.status] += 1
        limit = self.config.per_identity
        for output in record.outputs:
            pool = group["outliers"] if outlier else group["crops"]
            if len(pool) < limit:
                title = record.src
                if (d := number(record.identity_distance)) is not None:
                    title += f" (distance {d:.3f})"
                cls = "outlier" if outlier else "given" if record.landmarks == "given" else ""
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
        crops = [(self.crops.url(output, depth=1), title, cls) for output, title, cls in shown]
        self.identities.add(group["name"], identity_section(group["name"], group["photos"], group["statuses"],
                                                            crops, hidden))
        self.counts["identities"] += 1
        if group is self._group:
            self._current, self._group = None, {}

    def finish_stream(self) -> None:
        self._flush_group()
        if self._loose is not None:
            self._flush_group(self._loose)

    def problem_sections(self) -> list[tuple[str, int, list[str]]]:
        """Per kind with photos: ``(kind, photos, figures of the sample)`` (thumbnails drawn now)."""
        sections = []
        for kind in PROBLEM_KINDS:
            sample = self.problems[kind]
            if sample.seen:
                items = sorted(sample.items, key=lambda item: item[0].src)
                figures = [self.thumbs.figure(record, kind, reason, i) for i, (record, reason) in enumerate(items)]
                sections.append((kind, sample.seen, figures))
        return sections

    def sample_crops(self) -> list[tuple[str | None, str]]:
        """``(url, src)`` of the sampled crops, sorted by ``src``."""
        return [(self.crops.url(r.outputs[0], depth=0), r.src) for r in sorted(self.samples.items, key=lambda r: r.src)]


def _iter_sorted(path: Path, *, progress: bool) -> Iterator[PhotoRecord]:
    """The records; raises :class:`_Unsorted` at the first one not after the previous."""
    previous = None
    with tqdm(desc="report", unit="photo", disable=not progress, dynamic_ncols=True) as bar:
        for record in iter_records(path):
            if previous is not None and record.src <= previous:
                raise _Unsorted(record.src)
            previous = record.src
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
    for stale in dst.glob(f".{REPORT_FILES_NAME}{TEMP_MARKER}*"):  # left by a killed build
        shutil.rmtree(stale, ignore_errors=True)
    work = temp_path(dst / REPORT_FILES_NAME)
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
        problems = problems_html(builder.problem_sections(), list_pages)
        sample = sample_html(builder.sample_crops(), seen=builder.samples.seen, seed=config.seed)
        identities = identities_html(builder.counts["identities"], config.page_size, identity_pages)
        builder.crops.extract()
        hists = "".join(svg_histogram(h) for h in builder.hists.values() if h.n)
        settings = json.dumps(builder.settings, indent=1, ensure_ascii=False, default=str)
        src_line = escape(builder.src) if builder.src is not None else "unknown (no job.json)"
        body = (f"<h1>faceprep report: {escape(dst.resolve().name)}</h1>"
                f'<p class="muted">source {src_line}; '
                f'output format {escape(builder.settings.get("format", "folder"))}; '
                f"built {time.strftime('%Y-%m-%d %H:%M:%S')} from {MANIFEST_NAME} in "
                f"{time.perf_counter() - t0:.1f} s.</p>"
                f"<h2>Counts</h2>{counts_html(builder.statuses, builder.counts)}"
                f"<details><summary>job settings</summary><pre>{escape(settings)}</pre></details>"
                f'<h2>Quality</h2><p class="muted">Light bars: every candidate face (per photo for faces per '
                f"photo and identity distance); dark bars: the selected faces (outliers for identity distance). "
                f'The end bins include the values beyond them.</p><div class="hists">{hists or "No faces."}</div>'
                f"<h2>Problem photos</h2>{problems}"
                f"<h2>Identities</h2>{identities}"
                f"<h2>Sample</h2>{sample}")
        final = dst / REPORT_FILES_NAME
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
    return atomic_write_text(dst / REPORT_NAME, page(f"faceprep report: {dst.resolve().name}", body, home=""))
