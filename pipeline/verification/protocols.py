"""Readers for verification protocols: the IJB-B/C layout of insightface's evaluation, LFW's
``pairs.txt`` and a pairs CSV.

Both produce one :class:`VerificationProtocol`: images (with the protocol's 5 landmarks and faceness
score where it has them), the template and media each face belongs to, and labelled template pairs.
A simple pairs CSV is the degenerate case where every photo is its own template with one media.

Readers only parse: they never open the photos, so a missing photo is found (and counted or refused)
by the evaluation, not here. Malformed meta lines raise :class:`ProtocolError` naming file and line.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: IJB-C layout of insightface's ``eval_ijbc.py``: ``<root>/meta/<target>_*.txt`` and ``<root>/loose_crop/``.
IJB_TARGETS = ("ijbc", "ijbb")
LOOSE_CROP_DIR = "loose_crop"


class ProtocolError(ValueError):
    """A protocol file is malformed or inconsistent; names the file and (1-based) line."""

    def __init__(self, path: Path | str, line: int | None, message: str, content: str | None = None):
        self.path = Path(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else f"{self.path}"
        text = f"{where}: {message}"
        if content is not None:
            shown = content.rstrip("\r\n")
            text += f"\n    {shown[:200]!r}"
        super().__init__(text)


@dataclass(frozen=True, eq=False, kw_only=True)
class VerificationProtocol:
    """Images, faces (image, template, media) and labelled template pairs of one protocol.

    ``landmarks``/``face_scores`` are per image (``[n_images, 5, 2]`` in photo pixels, ``[n_images]``),
    or ``None`` when the protocol does not provide them (pairs CSV).
    """

    name: str
    source: Path
    image_root: Path
    images: tuple[str, ...]
    face_image: np.ndarray
    face_template: np.ndarray
    face_media: np.ndarray
    pairs: np.ndarray
    labels: np.ndarray
    landmarks: np.ndarray | None = None
    face_scores: np.ndarray | None = None
    template_names: dict[int, str] = field(default_factory=dict)
    folds: np.ndarray | None = None
    """``[P]`` int fold of each pair when the protocol is scored by k-fold accuracy (LFW), else ``None``."""

    def __post_init__(self) -> None:
        n_faces = self.face_image.shape[0]
        if self.face_template.shape != (n_faces,) or self.face_media.shape != (n_faces,):
            raise ValueError("face_image, face_template and face_media must have one entry per face")
        if self.pairs.ndim != 2 or self.pairs.shape[1] != 2 or self.labels.shape != (self.pairs.shape[0],):
            raise ValueError("pairs must be [P, 2] with one label per pair")
        if self.landmarks is not None and self.landmarks.shape != (len(self.images), 5, 2):
            raise ValueError(f"landmarks must be [{len(self.images)}, 5, 2], got {self.landmarks.shape}")
        if self.face_scores is not None and self.face_scores.shape != (len(self.images),):
            raise ValueError(f"face_scores must be [{len(self.images)}], got {self.face_scores.shape}")
        if self.folds is not None and self.folds.shape != self.labels.shape:
            raise ValueError(f"folds must be [{self.labels.shape[0]}], got {self.folds.shape}")

    @property
    def has_landmarks(self) -> bool:
        return self.landmarks is not None

    def image_path(self, index: int) -> Path:
        return self.image_root / self.images[index]

    def template_label(self, template: int) -> str:
        return self.template_names.get(int(template), str(int(template)))

    def summary(self) -> dict:
        positives = int(self.labels.sum())
        return {
            "kind": self.name,
            "source": str(self.source),
            "images": len(self.images),
            "faces": int(self.face_image.shape[0]),
            "templates": int(np.unique(self.face_template).size),
            "pairs": int(self.pairs.shape[0]),
            "positives": positives,
            "negatives": int(self.pairs.shape[0]) - positives,
            "landmarks": self.has_landmarks,
            "folds": None if self.folds is None else int(np.unique(self.folds).size),
        }


# --------------------------------------------------------------------------------------------------- utils


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers."""
    if not path.is_file():
        raise FileNotFoundError(f"protocol file not found: {path}")
    with path.open("r", encoding="utf-8", newline="") as fh:
        for number, raw in enumerate(fh, start=1):
            if raw.strip():
                yield number, raw


def _parse_int(path: Path, number: int, raw: str, token: str, what: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise ProtocolError(path, number, f"{what} must be an integer, got {token!r}", raw) from None


def _read_int_table(path: Path, columns: tuple[str, ...]) -> np.ndarray:
    """An all-integer whitespace table -> ``[R, C]`` int64 (blank lines skipped).

    Uses numpy's C parser; on any parse error, rescans line by line to name the offending line.
    """
    if not path.is_file():
        raise FileNotFoundError(f"protocol file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": checked below
            table = np.loadtxt(path, dtype=np.int64, comments=None, ndmin=2, encoding="utf-8")
    except ValueError:
        table = None
    if table is not None and table.size and table.shape[1] == len(columns):
        return table
    rows = []
    for number, raw in _lines(path):
        tokens = raw.split()
        if len(tokens) != len(columns):
            raise ProtocolError(
                path, number, f"expected {len(columns)} fields ({' '.join(columns)}), got {len(tokens)}", raw
            )
        rows.append([_parse_int(path, number, raw, tok, name) for tok, name in zip(tokens, columns)])
    if not rows:
        raise ProtocolError(path, None, "file has no data lines")
    # The fast path failed for a reason the line scan did not catch (e.g. an int64 overflow).
    raise ProtocolError(path, None, "could not be parsed as an integer table")


def _line_number_of_row(path: Path, row: int) -> int:
    for index, (number, _) in enumerate(_lines(path)):
        if index == row:
            return number
    raise IndexError(row)


def _row_text(path: Path, row: int) -> str:
    for index, (_, raw) in enumerate(_lines(path)):
        if index == row:
            return raw
    raise IndexError(row)


# ------------------------------------------------------------------------------------------------- IJB-B/C


def ijb_meta_paths(root: Path, target: str = "ijbc") -> dict[str, Path]:
    target = target.lower()
    if target not in IJB_TARGETS:
        raise ValueError(f"target must be one of {IJB_TARGETS}, got {target!r}")
    meta = Path(root) / "meta"
    return {
        "tid_mid": meta / f"{target}_face_tid_mid.txt",
        "pairs": meta / f"{target}_template_pair_label.txt",
        "landmarks": meta / f"{target}_name_5pts_score.txt",
    }


def _read_tid_mid(path: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[int]]:
    names: list[str] = []
    templates: list[int] = []
    medias: list[int] = []
    line_numbers: list[int] = []
    for number, raw in _lines(path):
        tokens = raw.split()
        if len(tokens) != 3:
            raise ProtocolError(path, number, f"expected 3 fields (image template_id media_id), got {len(tokens)}", raw)
        names.append(tokens[0])
        templates.append(_parse_int(path, number, raw, tokens[1], "template id"))
        medias.append(_parse_int(path, number, raw, tokens[2], "media id"))
        line_numbers.append(number)
    if not names:
        raise ProtocolError(path, None, "file has no data lines")
    return names, np.asarray(templates, np.int64), np.asarray(medias, np.int64), line_numbers


def _read_5pts(path: Path) -> dict[str, tuple[np.ndarray, float, int]]:
    """image name -> (landmarks [5, 2], faceness score, line number)."""
    entries: dict[str, tuple[np.ndarray, float, int]] = {}
    for number, raw in _lines(path):
        tokens = raw.split()
        if len(tokens) != 12:
            raise ProtocolError(
                path, number, f"expected 12 fields (image, 10 landmark values, faceness score), got {len(tokens)}", raw
            )
        try:
            values = np.asarray([float(t) for t in tokens[1:]], dtype=np.float64)
        except ValueError:
            bad = next(t for t in tokens[1:] if not _is_float(t))
            raise ProtocolError(path, number, f"landmark/score value {bad!r} is not a number", raw) from None
        if not np.all(np.isfinite(values)):
            raise ProtocolError(path, number, "landmark/score values must be finite", raw)
        landmarks = values[:10].reshape(5, 2).astype(np.float32)
        score = float(values[10])
        name = tokens[0]
        if name in entries:
            previous = entries[name]
            if not (np.array_equal(previous[0], landmarks) and previous[1] == score):
                raise ProtocolError(
                    path, number, f"image {name!r} already listed with different values on line {previous[2]}", raw
                )
            continue
        entries[name] = (landmarks, score, number)
    if not entries:
        raise ProtocolError(path, None, "file has no data lines")
    return entries


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_ijb(root: Path | str, *, target: str = "ijbc") -> VerificationProtocol:
    """Read insightface's IJB-B/C layout under ``root`` (``meta/`` and ``loose_crop/``).

    ``<target>_face_tid_mid.txt`` lists faces (image, template id, media id);
    ``<target>_name_5pts_score.txt`` gives each image's 5 landmarks (x1 y1 ... x5 y5, loose-crop pixels)
    and faceness score; ``<target>_template_pair_label.txt`` lists (template 1, template 2, label).
    insightface pairs the first two files by line position; here they are joined by image name,
    which is the same for the official files and catches a reordered or truncated landmark file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"IJB protocol folder not found: {root}")
    paths = ijb_meta_paths(root, target)
    names, templates, medias, tid_lines = _read_tid_mid(paths["tid_mid"])
    points = _read_5pts(paths["landmarks"])

    image_index: dict[str, int] = {}
    face_image = np.empty(len(names), dtype=np.int64)
    for face, name in enumerate(names):
        if name not in image_index:
            if name not in points:
                raise ProtocolError(
                    paths["tid_mid"], tid_lines[face],
                    f"image {name!r} has no landmarks in {paths['landmarks'].name}",
                )
            image_index[name] = len(image_index)
        face_image[face] = image_index[name]
    images = tuple(image_index)
    landmarks = np.stack([points[name][0] for name in images])
    scores = np.asarray([points[name][1] for name in images], dtype=np.float32)

    table = _read_int_table(paths["pairs"], ("template_1", "template_2", "label"))
    pairs = table[:, :2].copy()
    label_values = table[:, 2]
    bad_label = np.flatnonzero((label_values != 0) & (label_values != 1))
    if bad_label.size:
        row = int(bad_label[0])
        raise ProtocolError(
            paths["pairs"], _line_number_of_row(paths["pairs"], row),
            f"label must be 0 or 1, got {int(label_values[row])}", _row_text(paths["pairs"], row),
        )
    known = np.unique(templates)
    unknown = np.flatnonzero(~(np.isin(pairs[:, 0], known) & np.isin(pairs[:, 1], known)))
    if unknown.size:
        row = int(unknown[0])
        missing = [int(t) for t in pairs[row] if not np.isin(t, known)]
        raise ProtocolError(
            paths["pairs"], _line_number_of_row(paths["pairs"], row),
            f"template {missing[0]} is not in {paths['tid_mid'].name} ({unknown.size} such pairs)",
            _row_text(paths["pairs"], row),
        )
    return VerificationProtocol(
        name=target.lower(),
        source=root,
        image_root=root / LOOSE_CROP_DIR,
        images=images,
        face_image=face_image,
        face_template=templates,
        face_media=medias,
        pairs=pairs,
        labels=label_values.astype(bool),
        landmarks=landmarks,
        face_scores=scores,
    )


# ------------------------------------------------------------------------------------------------ pairs CSV

PAIRS_CSV_COLUMNS = ("file_x", "file_y", "Decision")
_DECISIONS = {"yes": True, "no": False}


def read_pairs_csv(path: Path | str, *, root: Path | str | None = None) -> VerificationProtocol:
    """Read a ``file_x,file_y,Decision`` CSV (Decision ``Yes``/``No``); photos are relative to ``root``.

    ``root`` defaults to the CSV's folder. Every distinct photo becomes one template with one media.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pairs CSV not found: {path}")
    root = Path(root) if root is not None else path.parent
    file_index: dict[str, int] = {}
    pairs: list[tuple[int, int]] = []
    labels: list[bool] = []
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ProtocolError(path, 1, "empty file; expected a header " + ",".join(PAIRS_CSV_COLUMNS))
        header = [h.strip() for h in header]
        missing = [c for c in PAIRS_CSV_COLUMNS if c not in header]
        if missing:
            raise ProtocolError(path, 1, f"header lacks column(s) {missing}; expected {','.join(PAIRS_CSV_COLUMNS)}",
                                ",".join(header))
        cols = [header.index(c) for c in PAIRS_CSV_COLUMNS]
        for row in reader:
            number = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            text = ",".join(row)
            if len(row) != len(header):
                raise ProtocolError(path, number, f"expected {len(header)} fields, got {len(row)}", text)
            file_x, file_y, decision = (row[c].strip() for c in cols)
            if not file_x or not file_y:
                raise ProtocolError(path, number, "empty file name", text)
            label = _DECISIONS.get(decision.lower())
            if label is None:
                raise ProtocolError(path, number, f"Decision must be Yes or No, got {decision!r}", text)
            for name in (file_x, file_y):
                file_index.setdefault(name, len(file_index))
            pairs.append((file_index[file_x], file_index[file_y]))
            labels.append(label)
    if not pairs:
        raise ProtocolError(path, None, "no pairs")
    return _photo_templates("pairs_csv", path, root, file_index, pairs, labels)


def _photo_templates(name: str, source: Path, image_root: Path, file_index: dict[str, int],
                     pairs: list[tuple[int, int]], labels: list[bool],
                     folds: list[int] | None = None) -> VerificationProtocol:
    """A protocol where every photo (``file_index``: name -> index, in insertion order) is its own
    template with one media, as the pairs CSV and LFW are."""
    images = tuple(file_index)
    ids = np.arange(len(images), dtype=np.int64)
    return VerificationProtocol(
        name=name,
        source=source,
        image_root=image_root,
        images=images,
        face_image=ids.copy(),
        face_template=ids.copy(),
        face_media=ids.copy(),
        pairs=np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
        labels=np.asarray(labels, dtype=bool),
        template_names=dict(enumerate(images)),
        folds=None if folds is None else np.asarray(folds, dtype=np.int64),
    )


# ------------------------------------------------------------------------------------------------------ LFW

#: Image folders of the LFW releases, in the order they are looked for under ``--lfw DIR``.
LFW_IMAGE_DIRS = ("images_deepfunneled", "lfw-deepfunneled", "lfw_deepfunneled", "lfw_funneled", "lfw-funneled", "lfw")


def lfw_image_name(person: str, number: int) -> str:
    """``Name/Name_NNNN.jpg``: LFW's layout (1-based image numbers, zero-padded to 4)."""
    return f"{person}/{person}_{number:04d}.jpg"


def _lfw_image_root(root: Path) -> Path:
    for name in LFW_IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    return root


def read_lfw(root: Path | str, *, pairs: Path | str | None = None,
             images: Path | str | None = None) -> VerificationProtocol:
    """LFW's standard 1:1 protocol ("View 2"): ``pairs.txt`` and the image folder.

    ``pairs.txt`` starts with ``<folds> <n>``; then each fold holds ``n`` same-person lines
    ``name i j`` followed by ``n`` different-person lines ``name1 i name2 j`` (image numbers 1-based).
    Every distinct photo is one template; pair ``p`` belongs to fold ``p // (2 n)``. ``images``
    defaults to the first of :data:`LFW_IMAGE_DIRS` found under ``root``, else ``root`` itself.
    Any line that breaks this layout raises :class:`ProtocolError` naming the line.
    """
    root = Path(root)
    pairs_path = Path(pairs) if pairs is not None else root / "pairs.txt"
    if not pairs_path.is_file():
        raise FileNotFoundError(f"LFW pairs file not found: {pairs_path} (expected pairs.txt under {root})")
    image_root = Path(images) if images is not None else _lfw_image_root(root)
    lines = iter(_lines(pairs_path))
    first = next(lines, None)
    if first is None:
        raise ProtocolError(pairs_path, None, "empty file; expected a first line '<folds> <pairs per class>'")
    number, raw = first
    head = raw.split()
    if len(head) != 2:
        raise ProtocolError(pairs_path, number, "first line must be '<folds> <pairs per class>'", raw)
    n_folds = _parse_int(pairs_path, number, raw, head[0], "number of folds")
    per_class = _parse_int(pairs_path, number, raw, head[1], "pairs per class")
    if n_folds < 2 or per_class < 1:
        raise ProtocolError(pairs_path, number,
                            f"need >= 2 folds and >= 1 pair per class, got {n_folds} {per_class}", raw)
    file_index: dict[str, int] = {}
    pair_list: list[tuple[int, int]] = []
    labels: list[bool] = []
    folds: list[int] = []

    def image(person: str, token: str, number: int, raw: str) -> int:
        k = _parse_int(pairs_path, number, raw, token, "image number")
        if k < 1:
            raise ProtocolError(pairs_path, number, f"image numbers are 1-based, got {k}", raw)
        return file_index.setdefault(lfw_image_name(person, k), len(file_index))

    expected = n_folds * 2 * per_class
    for index, (number, raw) in enumerate(lines):
        if index >= expected:
            raise ProtocolError(pairs_path, number, f"more pair lines than {n_folds} folds x 2 x {per_class}", raw)
        same = index % (2 * per_class) < per_class
        tokens = raw.split()
        if same:
            if len(tokens) != 3:
                raise ProtocolError(pairs_path, number, f"expected a same-person line 'name i j' "
                                    f"(fold {index // (2 * per_class) + 1}, line {index % (2 * per_class) + 1}), "
                                    f"got {len(tokens)} fields", raw)
            a, b = image(tokens[0], tokens[1], number, raw), image(tokens[0], tokens[2], number, raw)
        else:
            if len(tokens) != 4:
                raise ProtocolError(pairs_path, number, f"expected a different-person line 'name1 i name2 j' "
                                    f"(fold {index // (2 * per_class) + 1}, line {index % (2 * per_class) + 1}), "
                                    f"got {len(tokens)} fields", raw)
            a, b = image(tokens[0], tokens[1], number, raw), image(tokens[2], tokens[3], number, raw)
        pair_list.append((a, b))
        labels.append(same)
        folds.append(index // (2 * per_class))
    if len(pair_list) != expected:
        raise ProtocolError(pairs_path, None,
                            f"{len(pair_list)} pair lines, expected {n_folds} folds x 2 x {per_class} = {expected}")
    return _photo_templates("lfw", pairs_path, image_root, file_index, pair_list, labels, folds)
