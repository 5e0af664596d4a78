"""Listing and resume: what is under ``src``, what ``dst`` already holds, and whether it may be
resumed (same settings, one job at a time).

Resume contract: an input is done when its latest manifest record has status ``ok``, ``no_face``
or ``filtered`` (:data:`pipeline.records.DONE_STATUSES`) and every output it lists exists. Outputs
are in place before their record is appended, so a kill at any moment leaves either a trusted
record with complete outputs, or no record (the input is redone; its outputs are atomically
replaced). ``error`` records are retried.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.images import IMAGE_EXTENSIONS
from pipeline.job.config import AlignJobConfig, JobConfigError
from pipeline.manifest import iter_records, outputs_complete
from pipeline.records import JOB_NAME, STATUSES

__all__ = ["check_fingerprint", "check_paths", "done_inputs", "exclusive", "final_counts", "list_inputs"]

log = logging.getLogger(__name__)


def list_inputs(src: Path, *, exclude: Path | None = None,
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
    """Sorted POSIX relative paths of the image files under ``src`` (by extension, any case).

    Hidden names (``.*``, e.g. macOS ``._x.jpg`` forks) are skipped, as is ``exclude`` (the
    output folder when it lies inside ``src``). Symlinks to files are listed (a dangling one
    gets an ``error`` record); symlinked folders are not followed.
    """
    exts = {e.lower() for e in extensions}
    src = Path(src)
    excluded = exclude.resolve() if exclude is not None else None
    out: list[str] = []

    def unreadable(err: OSError) -> None:
        log.warning("cannot list %s: %s (skipped)", err.filename, err.strerror)

    for folder, dirs, files in os.walk(src, onerror=unreadable):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (excluded is None or (here / d).resolve() != excluded))
        rel_dir = here.relative_to(src)
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in exts:
                continue
            out.append((PurePosixPath(*rel_dir.parts) / name).as_posix())
    out.sort()
    return out


def done_inputs(manifest: Path, dst: Path) -> set[str]:
    """Inputs whose latest record is done (``ok``, ``no_face``, ``filtered``) with every listed
    output present."""
    done: set[str] = set()
    for record in iter_records(manifest):
        if record.done and outputs_complete(dst, record):
            done.add(record.src)
        else:
            done.discard(record.src)
    return done


def final_counts(manifest: Path, keep: set[str]) -> Counter:
    """Records per status among the inputs ``keep`` (latest record of each)."""
    latest: dict[str, str] = {}
    for record in iter_records(manifest):
        if record.src in keep:
            latest[record.src] = record.status
    counts: Counter = Counter({s: 0 for s in STATUSES})
    counts.update(latest.values())
    return counts


def check_paths(config: AlignJobConfig) -> None:
    """``src`` is a readable folder, ``dst`` is not ``src`` nor inside it the wrong way round."""
    src, dst = config.src.resolve(), config.dst.resolve()
    if not src.is_dir():
        hint = " (run with --demo to build a sample tree there)" if not src.exists() else ""
        raise JobConfigError(f"source folder {config.src} does not exist or is not a folder{hint}")
    if not os.access(src, os.R_OK | os.X_OK):
        raise JobConfigError(f"source folder {config.src} is not readable (permission denied)")
    if src == dst:
        raise JobConfigError("--src and --dst must differ")
    if src.is_relative_to(dst):
        raise JobConfigError(f"--dst {config.dst} contains --src {config.src}")


def check_fingerprint(config: AlignJobConfig, fingerprint: dict[str, Any]) -> None:
    """Refuse to resume a ``dst`` made with other settings (unless ``overwrite``)."""
    path = config.dst / JOB_NAME
    if config.overwrite or not path.exists():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
    except (OSError, ValueError):
        return
    changed = sorted(k for k in fingerprint if k in previous and previous[k] != fingerprint[k])
    if changed:
        details = ", ".join(f"{k}: {previous[k]!r} -> {fingerprint[k]!r}" for k in changed)
        raise JobConfigError(
            f"{config.dst} was made with different settings ({details}); resuming would mix "
            "outputs. Use another --dst, the same settings, or --overwrite to redo everything."
        )


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (one job per ``dst`` on this machine)."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobConfigError(f"another align job is writing to {path.parent}") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
