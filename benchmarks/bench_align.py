"""Alignment speed: ``pipeline.align.align_faces`` (batched) vs insightface's ``norm_crop`` loop.

Aligns the same N faces (plausible five-point sets on a real photo) with both, interleaving the
rounds so machine load hits both alike, and prints median times, the per-face cost and the ratio
ours / insightface (acceptance: <= 1.2). Also prints the two parts separately: similarity
estimation (vectorised numpy vs skimage per face) and warping (one ``cv2.warpAffine`` per face in
both). insightface's per-call skimage ``FutureWarning`` is silenced for both, which favours
insightface.

    python benchmarks/bench_align.py [--faces 1000] [--size 112] [--repeats 7] [--image REL] [--check]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.align import ARCFACE_TEMPLATE, CropSpec, align_faces, estimate_norm_batch, warp_crops  # noqa: E402
from tests.shared import asset  # noqa: E402

ACCEPT_RATIO = 1.2


def plausible_landmarks(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """``[n, 5, 2]`` template copies at 24-400 px, rolled +-45 degrees, 3% point noise."""
    base = (ARCFACE_TEMPLATE.astype(np.float64) - [56.0, 66.0]) / 112.0
    size = np.exp(rng.uniform(np.log(24.0), np.log(400.0), n))
    angle = rng.uniform(-np.pi / 4, np.pi / 4, n)
    pts = base[None] + rng.normal(0.0, 0.03, (n, 5, 2))
    c, s = np.cos(angle) * size, np.sin(angle) * size
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)  # [n, 2, 2]
    centre = np.stack([rng.uniform(0, width, n), rng.uniform(0, height, n)], -1)
    return pts @ np.swapaxes(rot, 1, 2) + centre[:, None, :]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=1000)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--image", default="images/group_insightface_t1.jpg",
                   help="photo under the shared assets folder")
    p.add_argument("--check", action="store_true", help=f"exit 1 if the ratio exceeds {ACCEPT_RATIO}")
    args = p.parse_args(argv)

    from insightface.utils import face_align

    warnings.simplefilter("ignore", FutureWarning)  # skimage 0.26 deprecates estimate()
    img = cv2.imread(str(asset(args.image)), cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f"cannot read {args.image}")
    rng = np.random.default_rng(0)
    lms = plausible_landmarks(rng, args.faces, img.shape[1], img.shape[0])
    size = args.size
    spec = CropSpec.create(size)

    def ours():
        align_faces(img, lms, size)

    def reference():
        for lm in lms:
            face_align.norm_crop(img, lm, size)

    def ours_estimate():
        estimate_norm_batch(lms, size)

    def reference_estimate():
        for lm in lms:
            face_align.estimate_norm(lm, size)

    mats = estimate_norm_batch(lms, size)

    def warp_only():
        warp_crops(img, mats, spec)

    # correctness guard: the benchmark compares equal work
    ref_crops = np.stack([face_align.norm_crop(img, lm, size) for lm in lms[:50]])
    assert np.array_equal(align_faces(img, lms[:50], size).crops, ref_crops)

    for fn in (ours, reference, ours_estimate, reference_estimate, warp_only):
        fn()  # warm-up
    results: dict[str, list[float]] = {k: [] for k in
                                       ("ours", "reference", "ours_estimate", "reference_estimate", "warp_only")}
    for _ in range(args.repeats):
        results["reference"].append(timed(reference))
        results["ours"].append(timed(ours))
        results["reference_estimate"].append(timed(reference_estimate))
        results["ours_estimate"].append(timed(ours_estimate))
        results["warp_only"].append(timed(warp_only))
    med = {k: statistics.median(v) for k, v in results.items()}
    n = args.faces
    print(f"bench_align: {n} faces, {size}x{size} crops, photo {img.shape[1]}x{img.shape[0]}, "
          f"{args.repeats} interleaved rounds (median), cv2 threads {cv2.getNumThreads()}")
    rows = [
        ("insightface norm_crop x N", med["reference"]),
        ("ours align_faces (batched)", med["ours"]),
        ("insightface estimate_norm x N", med["reference_estimate"]),
        ("ours estimate_norm_batch", med["ours_estimate"]),
        ("cv2.warpAffine x N (shared part)", med["warp_only"]),
    ]
    for name, t in rows:
        print(f"  {name:34s} {t * 1e3:9.2f} ms  {t / n * 1e6:8.2f} us/face")
    ratio = med["ours"] / med["reference"]
    est_speedup = med["reference_estimate"] / med["ours_estimate"]
    print(f"  ratio ours / insightface: {ratio:.3f} (acceptance <= {ACCEPT_RATIO}); "
          f"estimation speed-up {est_speedup:.0f}x; "
          f"best rounds: ours {min(results['ours']) * 1e3:.2f} ms, "
          f"insightface {min(results['reference']) * 1e3:.2f} ms")
    if args.check and ratio > ACCEPT_RATIO:
        print("FAIL: ratio above acceptance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
