#!/usr/bin/env python
"""Where one actor's time goes: FaceAligner.run per photo, in this process, split by what runs.

    python benchmarks/profile_aligner.py [--src DIR] [--set resize=cap:320 refine_size=160 ...]
                                         [--warm 17] [--reps 3] [--json F]

Runs :class:`pipeline.stage.FaceAligner` the way a CPU actor of the align job does (encoded files,
JPEG drafts, OpenVINO bf16 on one thread, one photo per call) over the photos of ``--src`` (default
the 62 deepface photos): ``--warm`` passes first (OpenVINO compiles a static model for a shape seen
16 times, as in a long run), then ``--reps`` passes under cProfile. Prints the milliseconds per photo
and their split: the detector's inference, JPEG decoding, resizing, window warps, and the rest
(Python, postprocess, quality, alignment). ``--set`` changes :class:`pipeline.config.AlignConfig`
fields (``none`` for ``None``). Start it with nothing else running: it is a timing.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.shared import MOBILENET_WEIGHTS, asset  # noqa: E402  (the one locator of ../shared)

PARTS = {"infer": ("infer",), "decode": ("imdecode",), "resize": ("resize", "pyrDown"), "warp": ("warpAffine",)}
"""Split of the time: C functions whose own time counts for each part (the rest is "other")."""


def parse_setting(text: str) -> tuple[str, object]:
    """``name=value`` -> (name, value): ints stay ints, ``none`` is ``None``, the rest strings."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--set takes name=value, got {text!r}")
    if value.lower() == "none":
        return name, None
    try:
        return name, int(value)
    except ValueError:
        try:
            return name, float(value)
        except ValueError:
            return name, value


def split(stats: pstats.Stats, photos: int, elapsed_s: float) -> dict[str, float]:
    """Milliseconds per photo: ``total`` and each part of :data:`PARTS`, and ``other``."""
    out = {"total": 1000.0 * elapsed_s / photos}
    for part, names in PARTS.items():
        own = sum(tt for (_, _, fn), (_, _, tt, _, _) in stats.stats.items() if any(n in fn for n in names))
        out[part] = 1000.0 * own / photos
    out["other"] = out["total"] - sum(out[p] for p in PARTS)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, help="folder of photos (default: the deepface photos of ../shared)")
    p.add_argument("--set", dest="settings", nargs="*", type=parse_setting, default=[],
                   help="AlignConfig fields, name=value (e.g. resize=cap:320 refine_size=160)")
    p.add_argument("--warm", type=int, default=17, help="passes before the profiled ones")
    p.add_argument("--reps", type=int, default=3, help="profiled passes")
    p.add_argument("--json", type=Path, help="write the split here")
    args = p.parse_args(argv)

    import cv2

    from detector.spec import DetectorSpec
    from pipeline.config import AlignConfig
    from pipeline.stage import FaceAligner, PhotoInput

    cv2.setNumThreads(1)
    src = args.src or asset("verification/deepface")
    files = sorted(f for f in src.rglob("*") if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not files:
        p.error(f"--src {src}: no photos")
    spec = DetectorSpec(weights=str(asset(MOBILENET_WEIGHTS)), runtime="openvino", precision="bf16", threads=1)
    config = AlignConfig(**dict(args.settings))
    aligner = FaceAligner(detector=spec.build, config=config, draft=True)
    photos = [PhotoInput(data=f.read_bytes(), source=str(f)) for f in files]
    for _ in range(args.warm):
        for x in photos:
            aligner.run([x])
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    for _ in range(args.reps):
        for x in photos:
            aligner.run([x])
    profile.disable()
    elapsed = time.perf_counter() - t0
    result = split(pstats.Stats(profile), len(photos) * max(args.reps, 1), elapsed)
    print(f"{len(photos)} photos x {args.reps}, {dict(args.settings) or 'AlignConfig()'}: "
          + "  ".join(f"{k} {v:.2f}" for k, v in result.items()) + " ms/photo")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"photos": len(photos), "reps": args.reps, "settings": dict(args.settings),
                                         "ms_per_photo": result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
