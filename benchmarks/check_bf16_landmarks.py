#!/usr/bin/env python
"""Landmark drift of OpenVINO bf16 against torch fp32 on in-the-wild faces, before / after.

    python benchmarks/check_bf16_landmarks.py [--sets deepface,lfw,wider] [--sizes cap:640,long:640,original] \\
        [--wider-images DIR] [--out runs/check_bf16_landmarks]
    python benchmarks/check_bf16_landmarks.py --aligner [--votes 0.6] --lfw-every 14 --wider-every 16 \\
        --wider-images WIDER_val/images --out runs/check_bf16_aligner

The reference is the torch fp32 detector (the biubug6 MobileNet-0.25 checkpoint). Every face it finds
with score >= 0.8 is matched to the bf16 detection of highest IoU (>= 0.5; else it counts as missed);
the error of a face is the mean of its five landmark point distances in % of the reference box width.
Variants (``--variants``, default ``before`` and ``after``):

* ``before``: the f32 patterns shipped before issue 23 (stem and depthwise convolutions only),
* ``after``: :meth:`detector.onnx_runtime.OnnxRetinaFace.bf16_keep_f32` as it is now,
* ``stage1`` (stem + stage1 + the later depthwise convolutions), ``trunk`` (``^/body/``), ``plain`` (no
  pattern: everything in bf16), or any ``name=regex;regex`` given on the command line.

Photo sets: ``deepface`` (../shared/assets/verification/deepface, every photo), ``lfw`` (deep-funneled
LFW, every ``--lfw-every``-th image of the sorted list, 1,101 images by default), ``wider`` (WIDER
FACE val, every ``--wider-every``-th image of each event; ``--wider-images``). Sizes are detector
resize policies; an image that one policy leaves at the same size as an earlier one is not counted
twice. Prints median / p95 / p99 / max per set for faces >= 64 px wide (the acceptance bound of issue 23:
p99 <= 0.75 %, max <= 1.5 %) and for all faces, and writes JSON.

``--aligner`` (the job's detection sizes): instead of fixed sizes, every photo goes through
:class:`pipeline.stage.FaceAligner` with the default :class:`~pipeline.config.AlignConfig` (coarse
``cap:640``, refinement, retry), once on torch fp32 and once on the default OpenVINO bf16, without
voting and with ``vote_iou`` at each of ``--votes``; the final landmarks of the same faces are compared
(deepface / LFW: the selected central face; WIDER: ``select="all"``). Rows ``bf16[+vT] vs fp32[+vT]``
are the acceptance comparison; rows ``... vs full`` compare each run with torch fp32 detecting the whole
photo at its original size (no voting, no refinement). ``--speed`` then times ``detect`` at 640x480 with
voting off and on. docs/widerface.md, "The bf16 landmark tail", has the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.shared import MOBILENET_WEIGHTS, asset  # noqa: E402  (the one locator of ../shared)

#: the f32 patterns of MobileNet-0.25 under bf16 before issue 23: stem + depthwise convolutions
BEFORE = (r"^/body/stage\d/stage\d\.\d+/stage\d\.\d+\.0/",)
#: measured alternatives (docs/widerface.md): the stride-8 trunk + later depthwise convs; the whole trunk
STAGE1 = (r"^/body/stage1/", r"^/body/stage[23]/stage\d\.\d+/stage\d\.\d+\.0/")
TRUNK = (r"^/body/",)
MIN_SCORE = 0.8
MIN_WIDTH = 64.0


def photo_sets(names: list[str], *, lfw_every: int, wider_every: int,
               wider_images: Path | None) -> dict[str, list[Path]]:
    sets: dict[str, list[Path]] = {}
    for name in names:
        if name == "deepface":
            sets[name] = sorted(asset("verification/deepface").glob("*.jpg"))
        elif name == "lfw":
            sets[name] = sorted(asset("verification/lfw/images_deepfunneled").glob("*/*.jpg"))[::lfw_every]
        elif name == "wider":
            if wider_images is None:
                raise SystemExit("--sets wider needs --wider-images DIR (WIDER_val/images)")
            from detector.evaluation.predict import iter_image_files

            by_event: dict[str, list[Path]] = {}
            for key, path in iter_image_files(wider_images):
                by_event.setdefault(key.split("/")[0], []).append(path)
            sets[name] = [p for paths in by_event.values() for p in paths[::wider_every]]
        else:
            raise SystemExit(f"unknown photo set {name!r} (deepface, lfw, wider)")
    return sets


def read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:  # deepface's img47.jpg is a WebP file
        from PIL import Image

        img = cv2.cvtColor(np.asarray(Image.open(path).convert("RGB")), cv2.COLOR_RGB2BGR)
    return img


def rows(det) -> np.ndarray:
    """``[N, 15]``: box, score, ... as float64 (box 0:4, score 4, landmarks 5:15)."""
    d = det.numpy()
    return np.concatenate([d.boxes.reshape(-1, 4), d.scores.reshape(-1, 1), d.landmarks.reshape(-1, 10)],
                          axis=1).astype(np.float64)


def drift(ref: np.ndarray, got: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Errors (% of the reference box width) and widths of the reference faces (score >= 0.8)
    matched in ``got`` (IoU >= 0.5), and the number missed."""
    ref = ref[ref[:, 4] >= MIN_SCORE]
    if not len(ref):
        return np.zeros(0), np.zeros(0), 0
    from detector.evaluation.widerface import bbox_overlaps_plus_one

    if not len(got):
        return np.zeros(0), np.zeros(0), len(ref)
    iou = bbox_overlaps_plus_one(ref[:, :4], got[:, :4])
    best = iou.argmax(axis=1)
    ok = iou[np.arange(len(ref)), best] >= 0.5
    r, g = ref[ok], got[best[ok]]
    width = r[:, 2] - r[:, 0]
    dist = np.linalg.norm((g[:, 5:] - r[:, 5:]).reshape(-1, 5, 2), axis=2).mean(axis=1)
    return 100 * dist / width, width, int((~ok).sum())


def stats(err: np.ndarray) -> dict[str, float]:
    if not err.size:
        return {"faces": 0}
    return {"faces": int(err.size), "median": float(np.median(err)), "p95": float(np.percentile(err, 95)),
            "p99": float(np.percentile(err, 99)), "max": float(err.max())}


def measure(paths: list[Path], sizes: list[str], reference, detectors: dict) -> dict[str, dict[str, list]]:
    """Per variant: ``errors``, ``widths`` (one entry per matched reference face), ``missed``, ``where``."""
    from detector.config import ResizePolicy

    out = {v: {"errors": [], "widths": [], "missed": 0, "where": []} for v in detectors}
    for path in paths:
        img = read(path)
        seen = set()
        for size in sizes:
            policy = ResizePolicy.parse(size)
            s = policy.scale(*img.shape[:2])
            hw = (round(img.shape[0] * s), round(img.shape[1] * s))
            if hw in seen:  # this policy leaves the image as an earlier one did
                continue
            seen.add(hw)
            ref = rows(reference.detect([img], resize=policy)[0])
            for v, det in detectors.items():
                e, w, m = drift(ref, rows(det.detect([img], resize=policy)[0]))
                out[v]["errors"].extend(e.tolist())
                out[v]["widths"].extend(w.tolist())
                out[v]["missed"] += m
                out[v]["where"].extend([path.name, size] for _ in e)
    return out


def aligned_rows(faces) -> np.ndarray:
    """``[M, 15]`` rows (box, score, landmarks) of a list of :class:`pipeline.stage.AlignedFace`."""
    if not faces:
        return np.zeros((0, 15))
    return np.stack([np.concatenate([np.asarray(f.box, np.float64).reshape(4), [float(f.score)],
                                     np.asarray(f.landmarks, np.float64).reshape(10)]) for f in faces])


def measure_aligner(paths: list[Path], set_name: str, votes: list[float], reference, bf16) -> dict[str, dict]:
    """Through :class:`pipeline.stage.FaceAligner` with the default :class:`AlignConfig` (central face;
    ``select="all"`` on WIDER), torch fp32 against OpenVINO bf16, with ``vote_iou=None`` and with voting
    at each IoU of ``votes`` (the default, 0.6, is ``+v0.6``). Comparisons (``got vs reference``):
    ``bf16[+vT]`` against ``fp32[+vT]`` (same settings), and every run against ``full``: torch fp32
    detecting the whole photo at its original size (no voting, no refinement), the landmarks the
    coarse-to-fine path approximates."""
    from pipeline.config import AlignConfig
    from pipeline.stage import FaceAligner

    select = "all" if set_name == "wider" else "central"
    configs = {"": AlignConfig(select=select, vote_iou=None)}  # the default AlignConfig votes at 0.6
    configs.update({f"+v{t:g}": AlignConfig(select=select, vote_iou=t) for t in votes})
    runs = {}
    for suffix, cfg in configs.items():
        runs["fp32" + suffix] = FaceAligner(detector=reference, config=cfg)
        runs["bf16" + suffix] = FaceAligner(detector=bf16, config=cfg)
    pairs = [(f"bf16{x}", f"fp32{x}") for x in configs] + [(name, "full") for name in runs]
    out = {f"{g} vs {r}": {"errors": [], "widths": [], "missed": 0, "where": []} for g, r in pairs}
    for path in paths:
        img = read(path)
        got = {name: aligned_rows(a.align([img])[0]) for name, a in runs.items()}
        full = rows(reference.detect([img], resize="original")[0])
        got["full"] = full[full[:, 4] >= MIN_SCORE]
        for g, r in pairs:  # against full: the run's faces found in the full-size detection
            e, w, m = drift(got[g], got[r]) if r == "full" else drift(got[r], got[g])
            key = out[f"{g} vs {r}"]
            key["errors"].extend(e.tolist())
            key["widths"].extend(w.tolist())
            key["missed"] += m
            key["where"].extend([path.name, "aligner"] for _ in e)
    return out


def speed(onnx: Path, variants: dict[str, tuple[str, ...]], rounds: int) -> dict[str, float]:
    """Median ms of one ``detect`` call per variant (and OpenVINO fp32) on a 640x480 photo, one thread,
    score 0.5, the variants interleaved round by round (20 calls each per round, after 5 untimed)."""
    from detector.onnx_runtime import OnnxRetinaFace

    img = cv2.resize(read(asset("images/group_insightface_t1.jpg")), (640, 480), interpolation=cv2.INTER_AREA)
    detectors = {name: OnnxRetinaFace.from_onnx(onnx, runtime="openvino", precision="bf16", threads=1,
                                                bf16_keep_f32=keep) for name, keep in variants.items()}
    detectors["openvino fp32"] = OnnxRetinaFace.from_onnx(onnx, runtime="openvino", precision="fp32", threads=1)
    return interleaved_ms({name: (lambda det=det: det.detect([img], conf_threshold=0.5))
                           for name, det in detectors.items()}, rounds)


def interleaved_ms(calls: dict[str, Callable[[], object]], rounds: int, *, warm: int = 5,
                   per_round: int = 20) -> dict[str, float]:
    """Median ms of each call: ``warm`` untimed calls each, then ``rounds`` rounds of ``per_round``
    timed calls of every one in turn (interleaved, so that the machine's drift hits all alike)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        for _ in range(warm):
            call()
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(per_round):
                t = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def speed_vote(onnx: Path, votes: list[float], rounds: int) -> dict[str, float]:
    """Median ms of one ``detect`` call of OpenVINO bf16 (the default patterns) at 640x480, one thread,
    at the aligner's threshold (0.8), without and with voting at each IoU, interleaved as :func:`speed`."""
    from detector.onnx_runtime import OnnxRetinaFace

    img = cv2.resize(read(asset("images/group_insightface_t1.jpg")), (640, 480), interpolation=cv2.INTER_AREA)
    det = OnnxRetinaFace.from_onnx(onnx, runtime="openvino", precision="bf16", threads=1)
    options = {"no vote": None, **{f"vote {t:g}": t for t in votes}}
    return interleaved_ms({name: (lambda t_iou=t_iou: det.detect([img], conf_threshold=0.8, vote_iou=t_iou))
                           for name, t_iou in options.items()}, rounds)


def table(results: dict[str, dict], variants: list[str]) -> tuple[str, dict]:
    vw = max(14, *(len(v) for v in variants))
    lines = [f"{'set':9s} {'faces':7s} {'variant':{vw}s} {'n':>6s} {'median':>7s} {'p95':>7s} {'p99':>7s} "
             f"{'max':>7s} {'missed':>6s}"]
    summary: dict = {}
    for set_name in [*results, "all"]:
        keys = list(results) if set_name == "all" else [set_name]
        for scope, min_w in ((">=64px", MIN_WIDTH), ("all", 0.0)):
            for v in variants:
                e = np.array([x for k in keys for x in results[k]["measured"][v]["errors"]])
                w = np.array([x for k in keys for x in results[k]["measured"][v]["widths"]])
                st = stats(e[w >= min_w] if e.size else e)
                st["missed"] = sum(results[k]["measured"][v]["missed"] for k in keys)
                summary.setdefault(set_name, {}).setdefault(scope, {})[v] = st
                if st["faces"]:
                    lines.append(f"{set_name:9s} {scope:7s} {v:{vw}s} {st['faces']:6d} {st['median']:7.3f} "
                                 f"{st['p95']:7.3f} {st['p99']:7.3f} {st['max']:7.3f} {st['missed']:6d}")
    return "\n".join(lines), summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="deepface,lfw,wider", help="photo sets measured by this run")
    p.add_argument("--sizes", default="cap:640,long:640,original")
    p.add_argument("--variants", default="before,after",
                   help="before, after, stage1, trunk, plain, or name=regex;regex (comma separated)")
    p.add_argument("--lfw-every", type=int, default=7)
    p.add_argument("--wider-every", type=int, default=8)
    p.add_argument("--wider-images", type=Path)
    p.add_argument("--weights", type=Path, default=None, help="default: the shared biubug6 checkpoint")
    p.add_argument("--worst", type=int, default=0, help="also list the N worst faces >= 64 px per variant")
    p.add_argument("--out", type=Path, default=Path("runs/check_bf16_landmarks"),
                   help="one <set>.json per photo set (kept: later runs add sets; the table covers them all)")
    p.add_argument("--fresh", action="store_true", help="measure the requested sets again")
    p.add_argument("--aligner", action="store_true",
                   help="measure through FaceAligner at the job's detection sizes (default AlignConfig: cap:640, "
                        "refinement, retry), torch fp32 vs the default OpenVINO bf16; --sizes and --variants unused")
    p.add_argument("--votes", default="0.6", help="--aligner: also with vote_iou at these IoUs (comma separated)")
    p.add_argument("--speed", type=int, default=0, metavar="ROUNDS",
                   help="also time each variant at 640x480, one thread (ROUNDS x 20 calls, interleaved)")
    args = p.parse_args(argv)

    from detector.config import get_preset
    from detector.export import onnx_for_weights
    from detector.onnx_runtime import OnnxRetinaFace
    from detector.spec import DetectorSpec

    weights = args.weights or asset(MOBILENET_WEIGHTS)
    variants: dict[str, tuple[str, ...]] = {}
    for v in (s.strip() for s in args.variants.split(",") if s.strip()):
        if v == "before":
            variants[v] = BEFORE
        elif v == "after":
            variants[v] = OnnxRetinaFace.bf16_keep_f32(get_preset("mobilenet0.25"))
        elif v == "plain":
            variants[v] = ()
        elif v == "stage1":
            variants[v] = STAGE1
        elif v == "trunk":
            variants[v] = TRUNK
        elif "=" in v:
            name, _, pats = v.partition("=")
            variants[name] = tuple(pats.split(";"))
        else:
            raise SystemExit(f"unknown variant {v!r}")
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    setup = {"sizes": sizes, "variants": {v: list(k) for v, k in variants.items()}, "min_score": MIN_SCORE,
             "lfw_every": args.lfw_every, "wider_every": args.wider_every}
    votes = [float(t) for t in args.votes.split(",") if t.strip()]
    if args.aligner:
        suffixes = ["", *(f"+v{t:g}" for t in votes)]
        pairs = [f"bf16{x} vs fp32{x}" for x in suffixes] + [f"{p} vs full" for x in suffixes for p in
                                                            (f"fp32{x}", f"bf16{x}")]
        setup = {"mode": "aligner", "votes": votes, "variants": pairs, "min_score": MIN_SCORE,
                 "lfw_every": args.lfw_every, "wider_every": args.wider_every}
        variants = {v: () for v in pairs}
    wanted = [s.strip() for s in args.sets.split(",") if s.strip()]
    todo = [s for s in wanted if args.fresh or not (args.out / f"{s}.json").is_file()]
    if todo:
        sets = photo_sets(todo, lfw_every=args.lfw_every, wider_every=args.wider_every,
                          wider_images=args.wider_images)
        reference = DetectorSpec(weights=str(weights), runtime="torch", precision="fp32").build()
        onnx = onnx_for_weights(weights)
        if args.aligner:
            bf16 = DetectorSpec(weights=str(onnx), runtime="openvino", precision="bf16").build()
        else:
            detectors = {name: OnnxRetinaFace.from_onnx(onnx, runtime="openvino", precision="bf16",
                                                        bf16_keep_f32=keep) for name, keep in variants.items()}
        for set_name, paths in sets.items():
            t0 = time.perf_counter()
            if args.aligner:
                measured = measure_aligner(paths, set_name, votes, reference, bf16)
            else:
                measured = measure(paths, sizes, reference, detectors)
            record = {**setup, "set": set_name, "photos": len(paths), "seconds": round(time.perf_counter() - t0, 1),
                      "measured": measured}
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{set_name}.json").write_text(json.dumps(record) + "\n")
            print(f"{set_name}: {len(paths)} photos measured in {record['seconds']:.0f} s", flush=True)
    if args.speed and args.aligner:
        ms = speed_vote(onnx_for_weights(weights), votes, args.speed)
        (args.out / "speed.json").parent.mkdir(parents=True, exist_ok=True)
        (args.out / "speed.json").write_text(json.dumps({"variants": setup["variants"], "ms": ms}) + "\n")
    elif args.speed:
        ms = speed(onnx_for_weights(weights), variants, args.speed)
        (args.out / "speed.json").parent.mkdir(parents=True, exist_ok=True)
        (args.out / "speed.json").write_text(json.dumps({"variants": setup["variants"], "ms": ms}) + "\n")
    results = {}
    for path in sorted(args.out.glob("*.json")):
        if path.name in ("table.json", "speed.json"):
            continue
        record = json.loads(path.read_text())
        if {k: record.get(k) for k in setup} != setup:
            diff = sorted(k for k in setup if record.get(k) != setup[k])
            print(f"(skipping {path}: measured with other settings: {diff})")
            continue
        results[record["set"]] = record
    if not results:
        raise SystemExit(f"nothing measured under {args.out}")
    text, summary = table(results, list(variants))
    where = "through FaceAligner (default AlignConfig)" if args.aligner else f"sizes {', '.join(sizes)}"
    print(f"\nlandmark drift of OpenVINO bf16 vs torch fp32, % of the box width (faces with score >= {MIN_SCORE}, "
          f"{where}; the mean of the five point distances)")
    print(text)
    for v in variants:
        if not args.aligner:
            print(f"  {v}: f32 patterns {list(variants[v])}")
    if args.worst:
        for v in variants:
            rows_ = [(e, w, *where, s) for s, r in results.items() for e, w, where in
                     zip(r["measured"][v]["errors"], r["measured"][v]["widths"], r["measured"][v]["where"])
                     if w >= MIN_WIDTH]
            print(f"\nworst faces >= {MIN_WIDTH:.0f} px, {v}:")
            for e, w, name, size, set_name in sorted(rows_, reverse=True)[:args.worst]:
                print(f"  {e:6.3f}%  width {w:6.1f}  {size:9s} {set_name}/{name}")
    out = {**setup, "photos": {s: r["photos"] for s, r in results.items()}, "table": summary}
    speed_path = args.out / "speed.json"
    if speed_path.is_file():
        timed = json.loads(speed_path.read_text())
        if timed["variants"] == setup["variants"]:
            out["ms_640x480_one_thread"] = timed["ms"]
            print("one 640x480 photo, one thread, median ms: "
                  + ", ".join(f"{name} {ms:.2f}" for name, ms in timed["ms"].items()))
    (args.out / "table.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out / 'table.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
