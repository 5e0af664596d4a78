"""The report's HTML (see :mod:`pipeline.report`): escaping, the inline SVG histogram, the page
frame (CSS, the image-check script), paged lists, and the main page's sections. Pure strings: the
only files written are the pages of :class:`Pager`."""

from __future__ import annotations

import html
import math
import os
import urllib.parse
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.fsio import atomic_write_text
from pipeline.records import REPORT_FILES_NAME, REPORT_NAME, STATUSES
from pipeline.report.stats import Histogram

__all__ = [
    "PageInfo", "Pager", "counts_html", "escape", "file_url", "identities_html", "identity_section", "list_row",
    "page", "problems_html", "sample_html", "svg_histogram", "url_of",
]

STATUS_ORDER = ("ok", "no_face", "error", "filtered")
"""The statuses in the counts table's order (any other status follows, sorted)."""
assert set(STATUS_ORDER) == set(STATUSES)




def escape(value: Any) -> str:
    """HTML-escaped text; lone surrogates (file names that are not UTF-8) shown as escapes."""
    s = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return html.escape(s, quote=True)


def url_of(rel: str) -> str:
    """A relative URL for a POSIX relative path (percent-encoded; names that are not UTF-8 keep
    their bytes)."""
    return urllib.parse.quote(os.fsencode(rel), safe="/")


def file_url(path: Path) -> str:
    return "file://" + urllib.parse.quote(os.fsencode(str(path.resolve())), safe="/")


def fmt(value: float) -> str:
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
             f'<title>{escape(hist.spec.title)}</title>',
             f'<text x="4" y="12" class="t">{escape(hist.spec.title)}</text>',
             f'<text x="4" y="24" class="t muted">n={hist.n}, mean {fmt(hist.mean)}, min {fmt(hist.lo)}, '
             f'max {fmt(hist.hi)}</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" class="ax"/>',
             f'<text x="{left - 3}" y="{top + 8}" class="y">{peak}</text>']
    for i, (a, s) in enumerate(zip(hist.all, hist.selected)):
        x = left + i * bar_w
        for count, cls in ((a, "all"), (s, "sel")):
            if count:
                bh = max(1.0, plot_h * count / peak)
                parts.append(f'<rect class="{cls}" x="{x + 0.5:.1f}" y="{top + plot_h - bh:.1f}" '
                             f'width="{max(bar_w - 1, 1):.1f}" height="{bh:.1f}"><title>'
                             f'[{fmt(hist.spec.edges[i])}, {fmt(hist.spec.edges[i + 1])}): {a}'
                             f'{f" ({s} selected)" if s else ""}</title></rect>')
    for i in sorted({0, bins // 2, bins}):
        x = left + i * bar_w
        anchor = "start" if i == 0 else "end" if i == bins else "middle"
        parts.append(f'<text x="{x:.1f}" y="{height - 5}" class="x" text-anchor="{anchor}">'
                     f'{fmt(hist.spec.edges[i])}</text>')
    parts.append("</svg>")
    return "".join(parts)


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:16px 0 6px}table{border-collapse:collapse}td,th{padding:2px 10px;text-align:left;
border-bottom:1px solid #e4e4e4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:6px}.grid figure{margin:0;width:120px;font-size:11px;overflow:hidden}
.grid figure.wide{width:264px}.grid img{display:block;max-width:100%;background:#ddd}
figcaption{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.crops img{width:72px;height:72px;border:2px solid transparent}.crops img.outlier{border-color:#d22}
.crops img.given{border-color:#27c}
.missing{width:100%;height:120px;overflow:hidden;background:#eee;color:#777;display:flex;
align-items:center;justify-content:center;text-align:center;font-size:11px}
.hists{display:flex;flex-wrap:wrap;gap:10px}svg.hist{background:#fff;border:1px solid #ddd}
svg .all{fill:#9cc3e6}svg .sel{fill:#2a6fb0}svg .ax{stroke:#888}svg text{font-size:10px;fill:#333}
svg .y{text-anchor:end}svg .muted{fill:#777}.muted{color:#777}.bad{color:#b00}nav{margin:8px 0}nav a{margin-right:10px}
details pre{font-size:12px;background:#fff;border:1px solid #ddd;padding:6px;overflow:auto}
"""

SCRIPT = """
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


def page(title: str, body: str, *, home: str) -> str:
    """A complete HTML page (``home``: the link back to the report, ``""`` on the report itself)."""
    nav = f'<nav><a href="{home}">report</a></nav>' if home else ""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width"><style>{CSS}</style>'
            f'<script>{SCRIPT}</script></head>\n<body>{nav}<p id="broken" class="bad" hidden></p>\n{body}\n'
            f'</body></html>\n')


# ------------------------------------------------------------------------------ paging


@dataclass
class PageInfo:
    number: int
    first: str
    last: str
    items: int


class Pager:
    """Writes items (HTML fragments) into pages ``<folder>/<prefix>-NNNN.html`` of ``size``
    items, holding one page at a time; a page is written once it is known whether a next one exists."""

    def __init__(self, folder: Path, prefix: str, title: str, size: int, *, wrap: tuple[str, str]) -> None:
        self.folder, self.prefix, self.title, self.size, self.wrap = folder, prefix, title, size, wrap
        self.items: list[tuple[str, str]] = []
        self.pages: list[PageInfo] = []

    @staticmethod
    def name(prefix: str, number: int) -> str:
        return f"{prefix}-{number:04d}.html"

    def add(self, label: str, fragment: str) -> None:
        if len(self.items) == self.size:
            self._write(has_next=True)
        self.items.append((label, fragment))

    def finish(self) -> list[PageInfo]:
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
        body = (f"<h1>{escape(self.title)}, page {number}</h1>{nav}{self.wrap[0]}"
                + "\n".join(f for _, f in self.items) + f"{self.wrap[1]}{nav}")
        atomic_write_text(self.folder / self.name(self.prefix, number),
                          page(f"{self.title}, page {number}", body, home=f"../{REPORT_NAME}"))
        self.pages.append(PageInfo(number, self.items[0][0], self.items[-1][0], len(self.items)))
        self.items = []




# ------------------------------------------------------------------------------ the main page's sections


def counts_html(statuses: Counter, counts: Counter) -> str:
    """The counts table: photos per status, then ``counts`` (outliers, landmarks, faces, crops, identities)."""
    total = sum(statuses.values())
    rows = []
    for status in list(STATUS_ORDER) + sorted(set(statuses) - set(STATUS_ORDER)):
        n = statuses.get(status, 0)
        pct = f"{100 * n / total:.1f}%" if total else "-"
        rows.append(f'<tr data-status="{escape(status)}"><th>{escape(status)}</th><td class="n">{n}</td>'
                    f'<td class="n">{pct}</td></tr>')
    rows.append(f'<tr data-status="total"><th>photos</th><td class="n">{total}</td><td></td></tr>')
    extra = [("identity_outlier", "identity outliers"), ("landmarks given", "landmarks given"),
             ("landmarks detected", "landmarks detected"), ("faces", "faces detected"), ("crops", "crops written"),
             ("identities", "identities")]
    for key, label in extra:
        if key in counts or key in ("faces", "crops", "identities"):
            rows.append(f'<tr data-count="{escape(key)}"><th>{label}</th><td class="n">{counts.get(key, 0)}</td>'
                        f"<td></td></tr>")
    return f'<table id="counts">{"".join(rows)}</table>'


def problems_html(sections: Sequence[tuple[str, int, Sequence[str]]], pages: Mapping[str, Sequence[PageInfo]]) -> str:
    """The problem photos: per kind ``(kind, photos of that kind, figures of the shown sample)``,
    with links to the kind's list ``pages``."""
    parts = []
    for kind, seen, figures in sections:
        links = " ".join(f'<a href="{REPORT_FILES_NAME}/{Pager.name(kind, p.number)}">{p.number}</a>'
                         for p in pages[kind])
        shown = f"a random sample of {len(figures)}" if len(figures) < seen else f"all {len(figures)}"
        parts.append(f'<section id="problem-{kind}" data-count="{seen}"><h3>{kind}: {seen} photos '
                     f'<span class="muted">({shown}; full list, pages: {links})</span></h3>'
                     f'<div class="grid">{"".join(figures)}</div></section>')
    if not parts:
        return "<p>No problem photos.</p>"
    return ('<p class="muted">Detections drawn: selected face green, other faces orange; landmarks: left eye red, '
            "right eye blue, nose green, mouth corners magenta / yellow.</p>" + "".join(parts))


def list_row(src: str, reason: str, faces: int, *, href: str | None = None) -> str:
    """One row of a problem list (the photo linked to ``href`` when known)."""
    link = escape(src) if href is None else f'<a href="{href}">{escape(src)}</a>'
    return f'<tr><td>{link}</td><td>{escape(reason)}</td><td class="n">{faces}</td></tr>'


def identity_section(name: str, photos: int, statuses: Counter, crops: Sequence[tuple[str | None, str, str]],
                     hidden: int) -> str:
    """One identity of the contact sheet: ``crops`` are ``(url, title, css class)`` (``None`` url:
    not shown), ``hidden`` the crops left out."""
    imgs = [f'<a href="{url}"><img src="{url}" class="{cls}" title="{escape(title)}" alt="{escape(title)}"></a>'
            for url, title, cls in crops if url is not None]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    more = f' <span class="muted">+{hidden} more crops</span>' if hidden else ""
    return (f'<section class="identity" data-identity="{escape(name)}" data-photos="{photos}">'
            f'<h3>{escape(name)} <span class="muted">{photos} photos: {escape(counts)}'
            f'</span>{more}</h3><div class="grid crops">{"".join(imgs)}</div></section>')


def identities_html(identities: int, page_size: int, pages: Sequence[PageInfo]) -> str:
    """The links to the contact-sheet pages."""
    if not pages:
        return "<p>No identities.</p>"
    rows = "".join(f'<tr><td><a href="{REPORT_FILES_NAME}/{Pager.name("identities", p.number)}">page {p.number}</a>'
                   f"</td><td>{escape(p.first)} &hellip; {escape(p.last)}</td><td class=\"n\">{p.items}</td></tr>"
                   for p in pages)
    return (f'<p>{identities} identities (top-level folders), {page_size} per page; crops of '
            'identity outliers first, framed red; given landmarks framed blue.</p>'
            f'<table id="identity-pages"><tr><th>page</th><th>identities</th><th>count</th></tr>{rows}</table>')


def sample_html(crops: Sequence[tuple[str | None, str]], *, seen: int, seed: int) -> str:
    """The random sample grid: ``crops`` are ``(url, src)`` sorted by ``src`` (``None`` url: not
    shown), drawn from ``seen`` ok photos."""
    if not crops:
        return "<p>No crops.</p>"
    figures = [f'<figure><a href="{url}"><img src="{url}" alt="{escape(src)}" width="112" '
               f'height="112"></a><figcaption title="{escape(src)}">{escape(src)}</figcaption></figure>'
               for url, src in crops if url is not None]
    return (f'<p class="muted">{len(figures)} crops drawn at random (seed {seed}) from '
            f'{seen} ok photos.</p><div class="grid" id="sample">{"".join(figures)}</div>')
