"""Where the report finds a crop (see :mod:`pipeline.report`): a crop file is referenced where it
lies; a WebDataset sample (``shards/shard-NNNNNN.tar#KEY``) is copied out of its shard into
``report_files/crops/`` (only the shown ones, one sequential read per shard)."""

from __future__ import annotations

import logging
import tarfile
from array import array
from pathlib import Path, PurePosixPath

from common.fsio import atomic_write_bytes
from pipeline.records import REPORT_FILES_NAME
from pipeline.report.render import url_of

__all__ = ["CropLinks"]

log = logging.getLogger(__name__)


def _sample_number(key: str) -> int | None:
    """The sample number of a shard key ``NNNNNN-MMMMMM`` (``None``: not such a key)."""
    try:
        return int(key.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


class CropLinks:
    """URLs of the crops shown, and the WebDataset samples among them to extract.

    Args:
        dst: the job's output folder.
        work: the folder being built (it becomes ``dst/report_files``).
        ext: the crops' file extension (``jpg`` or ``png``).
    """

    def __init__(self, dst: Path, work: Path, ext: str) -> None:
        self.dst, self.work, self.ext = dst, work, ext
        self.shard_keys: dict[str, array] = {}

    def url(self, output: str, *, depth: int) -> str | None:
        """URL of a crop thumbnail from a page ``depth`` folders below ``dst`` (``None``: an output
        that names no sample); a shard sample is remembered for :meth:`extract`."""
        up = "../" * depth
        shard, sep, key = output.partition("#")
        if not sep:
            return up + url_of(output)
        sample = _sample_number(key)
        if sample is None:
            return None
        self.shard_keys.setdefault(shard, array("q")).append(sample)
        return f"{up}{REPORT_FILES_NAME}/crops/{url_of(PurePosixPath(shard).stem)}/{url_of(key)}.{self.ext}"

    def extract(self) -> None:
        """Copy the remembered samples out of their shards (a shard that cannot be read is logged)."""
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
                        if _sample_number(key) in wanted and (f := tar.extractfile(member)) is not None:
                            atomic_write_bytes(out / member.name, f.read())
            except (OSError, tarfile.TarError) as e:
                log.warning("report: cannot read crops from %s: %s", self.dst / shard, e)
