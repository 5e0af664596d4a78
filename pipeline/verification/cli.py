"""Face verification with different alignments: how much does our RetinaFace alignment buy?

Examples::

    # deepface-style pairs CSV (file_x,file_y,Decision), MobileFaceNet ONNX (RGB, ImageNet mean/std)
    faceprep eval-verification --pairs ../shared/assets/verification/deepface/master.csv \\
        --model ../shared/assets/weights/mobilefacenet_arcface112.onnx --rgb \\
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 \\
        --weights ../shared/assets/weights/retinaface_mobilenet0.25_biubug6.pth --align detector,box --out out/deepface

    # insightface's IJB-C layout (meta/ + loose_crop/), insightface's settings: flip, face score, raw norm
    faceprep eval-verification --ijbc /data/IJBC --model w600k_r50.onnx --rgb \\
        --align provided,detector,box --flip --face-score --num-workers 8 --out out/ijbc

    # LFW's standard protocol (pairs.txt, 10-fold accuracy), and the alignment study on it
    faceprep eval-verification --lfw ../shared/assets/verification/lfw \\
        --model ../shared/assets/weights/mobilefacenet_arcface112.onnx --rgb \\
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --out out/lfw [--study]

Defaults (central face at score >= 0.8, long side 640 for the detector, flip test summed) come from
the LFW alignment study in the README. Extraction runs on one Ray actor per CPU (``--num-workers 1``:
in this process).

Writes ``OUT/report.json`` (per source: AUC, TAR at FAR 1e-6 ... 1e-1 - null where the protocol has too
few negative pairs to measure it - pairs, exclusions), ``OUT/roc.png`` and the scored pairs, and prints
a table of the gains over the baseline source (``box`` when evaluated).
``python jobs/eval_verification.py`` takes the same arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from common.ray_init import RayConnectError
from detector.api import PostprocessConfig
from detector.spec import DetectorSpec, add_detector_arguments, spec_from_args
from pipeline.config import AlignConfig
from pipeline.verification.aggregate import FLIP_FUSIONS, AggregationConfig
from pipeline.verification.crops import ALIGNMENT_SOURCES, NO_FACE_POLICIES, VERIFICATION_SELECT, parse_sources
from pipeline.verification.executor import VerificationSetupError, check_models
from pipeline.verification.metrics import DEFAULT_FARS
from pipeline.verification.protocols import IJB_TARGETS, ProtocolError, read_ijb, read_lfw, read_pairs_csv
from pipeline.verification.recognizer import OnnxRecognizerConfig, add_preprocess_arguments, preprocess_from_args
from pipeline.verification.runner import EvaluationConfig, evaluate, format_table, write_report
from pipeline.verification.study import StudyConfig, default_variants, run_study, write_study

__all__ = ["EXIT_USAGE", "build_parser", "evaluation_config_from_args", "main", "study_config_from_args"]

DEFAULTS = AlignConfig()  # the one set of defaults (pipeline.config)


def build_parser(prog: str = "faceprep eval-verification") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    proto = p.add_mutually_exclusive_group(required=True)
    proto.add_argument("--pairs", type=Path, help="pairs CSV with columns file_x,file_y,Decision (Yes/No)")
    proto.add_argument("--ijbc", type=Path, help="IJB-B/C folder with meta/ and loose_crop/ (insightface layout)")
    proto.add_argument("--lfw", type=Path,
                       help="LFW folder with the official pairs.txt and the photos (images_deepfunneled/, lfw/, ... or "
                            "the person folders themselves): reports the 10-fold accuracy too")
    p.add_argument("--root", type=Path, help="photo folder of --pairs (default: the CSV's folder) or of --lfw")
    p.add_argument("--target", default="ijbc", choices=IJB_TARGETS, help="meta file prefix for --ijbc (default ijbc)")
    p.add_argument("--model", type=Path, required=True, help="ArcFace-style ONNX recogniser (square input)")
    add_preprocess_arguments(p)
    p.add_argument("--batch-size", type=int, default=32,
                   help="recogniser batch (models with a fixed batch use theirs; default 32)")
    p.add_argument("--align", default=None,
                   help=f"comma-separated alignment sources from {','.join(ALIGNMENT_SOURCES)} "
                        "(default: provided,detector,box with protocol landmarks, else detector,box)")
    add_detector_arguments(p, resize_default=DEFAULTS.resize.to_string(), precision_default="auto")
    p.add_argument("--conf", type=float, default=DEFAULTS.min_score,
                   help=f"minimum face score (default {DEFAULTS.min_score}: the LFW study's best, as the align job)")
    p.add_argument("--nms", type=float, default=0.4, help="detector NMS IoU (default 0.4)")
    p.add_argument("--select", default=DEFAULTS.select, choices=VERIFICATION_SELECT,
                   help=f"which detected face of a photo (default {DEFAULTS.select}: the LFW study's best, as the "
                        "align job)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="flip test: fuse the mirrored crop's embedding (see --fusion); --no-flip: the crop alone "
                        "(default on: +0.10 points of LFW 10-fold accuracy in the study)")
    p.add_argument("--fusion", default="sum", choices=FLIP_FUSIONS,
                   help="--flip: sum the two embeddings (insightface) or concatenate them (default sum)")
    p.add_argument("--on-no-face", default="exclude", choices=NO_FACE_POLICIES,
                   help="detector finds no face and the protocol has no landmarks: exclude the photo (counted) or "
                        "use its centred square crop (default exclude)")
    p.add_argument("--face-score", action="store_true", help="weight image features by their faceness score")
    p.add_argument("--drop-norm", action="store_true", help="L2-normalise image features before aggregation")
    p.add_argument("--fars", default=",".join(map(repr, DEFAULT_FARS)),
                   help="FARs to report TAR at (default %(default)s)")
    p.add_argument("--baseline", default=None, help="source the gains are measured against (default box)")
    p.add_argument("--per-source-pairs", action="store_true",
                   help="score each source on all pairs it can score (default: pairs every source can score)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="Ray actors that extract embeddings (default 0: one per CPU of the Ray cluster, every core "
                        "of this machine for a local Ray); 1: in this process, no Ray")
    p.add_argument("--address", help="Ray cluster address for --num-workers > 1 (default: a local Ray)")
    p.add_argument("--chunk-size", type=int, default=16, help="photos per worker task (default 16)")
    p.add_argument("--strict", action="store_true", help="missing or unreadable photos are errors")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    study = p.add_argument_group(
        "alignment study",
        "--study runs the standard set of variants, each changing one choice of the settings above (face "
        "selection, minimum score, detector input size, runtime/precision, flip fusion, photos without a face, "
        "no alignment), on the full protocol, reading and detecting each photo once per distinct detector; "
        "writes OUT/study.json and OUT/study.md")
    study.add_argument("--study", action="store_true", help="run the alignment study instead of one evaluation")
    study.add_argument("--study-detector", action="append", default=[], metavar="LABEL=WEIGHTS[@RESIZE]",
                       help="another detector for the study, e.g. SCRFD-500M=scrfd_500m_bnkps.onnx@long:640 "
                            "(@RESIZE: its input size when it differs from --detect-resize; repeatable)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    return p


def _detector_and_align(args: argparse.Namespace) -> tuple[DetectorSpec, AlignConfig]:
    """The detector (``--weights`` ... ``--nms``) and the alignment settings (the one set of defaults
    with ``--select``, ``--conf`` and ``--detect-resize``) of the command line."""
    spec = spec_from_args(args, postprocess=PostprocessConfig(nms_threshold=args.nms))
    return spec, AlignConfig(select=args.select, min_score=args.conf, resize=args.detect_resize)


def _extra_detectors(args: argparse.Namespace, base: DetectorSpec) -> list[tuple[str, DetectorSpec, str | None]]:
    out = []
    for item in args.study_detector:
        label, sep, rest = item.partition("=")
        weights, _, resize = rest.partition("@")
        if not sep or not label.strip() or not weights.strip():
            raise SystemExit(f"--study-detector: expected LABEL=WEIGHTS[@RESIZE], got {item!r}")
        out.append((label.strip(), dataclasses.replace(base, weights=weights.strip(), family=None, runtime="auto",
                                                       precision="auto"), resize.strip() or None))
    return out


def evaluation_config_from_args(args: argparse.Namespace, *, has_landmarks: bool) -> EvaluationConfig:
    """The plain evaluation's :class:`EvaluationConfig` from the parsed command line
    (``has_landmarks``: the protocol has its own landmarks, so ``provided`` is a default source)."""
    default_sources = ("provided", "detector", "box") if has_landmarks else ("detector", "box")
    sources = parse_sources(args.align) if args.align else default_sources
    spec, align = _detector_and_align(args)
    return EvaluationConfig(
        sources=sources,
        aggregation=AggregationConfig(flip=args.flip, flip_fusion=args.fusion, face_score=args.face_score,
                                      keep_norm=not args.drop_norm),
        align=align, detector=spec, on_no_face=args.on_no_face,
        fars=tuple(float(f) for f in args.fars.split(",") if f.strip()),
        num_workers=args.num_workers, threads=args.threads, address=args.address, chunk_size=args.chunk_size,
        strict=args.strict,
        common_pairs=not args.per_source_pairs, baseline=args.baseline, progress=not args.quiet,
    )


def study_config_from_args(args: argparse.Namespace) -> StudyConfig:
    """The ``--study`` run's :class:`StudyConfig` (the standard variants around the command line's settings)."""
    if args.align or args.face_score or args.drop_norm or args.per_source_pairs or args.baseline:
        raise SystemExit("--study varies the alignment itself: drop --align, --face-score, --drop-norm, "
                         "--per-source-pairs and --baseline")
    base, align = _detector_and_align(args)
    variants = default_variants(base, align=align, extra_detectors=_extra_detectors(args, base))
    return StudyConfig(variants=variants, num_workers=args.num_workers, threads=args.threads, address=args.address,
                       chunk_size=args.chunk_size, progress=not args.quiet)


def run_study_command(args: argparse.Namespace, protocol, recognizer: OnnxRecognizerConfig,
                      config: StudyConfig) -> int:
    result = run_study(protocol, recognizer=recognizer, config=config)
    paths = write_study(result, args.out)
    print(result.markdown())
    t = result.throughput
    print(f"{t['photos']} photos in {t['wall_s']:.1f} s ({t['photos_per_s']:.1f} photos/s, {t['workers']} worker(s), "
          f"{t['detection_passes']} detector(s), {t['embeddings']} embeddings)")
    print(f"study: {paths['json']}\ntable: {paths['markdown']}")
    return 0


EXIT_USAGE = 2
"""Nothing was evaluated: bad arguments, an unreadable protocol, missing weights or model."""


def main(argv: list[str] | None = None, *, prog: str = "faceprep eval-verification") -> int:
    """The eval-verification command: parse ``argv`` (default ``sys.argv[1:]``), evaluate (or run the
    study), print the table and return 0. Bad input (an unreadable protocol, detector weights or a
    recogniser model that cannot be found) is one ``error:`` line and :data:`EXIT_USAGE`, before any
    photo is read or any worker started."""
    args = build_parser(prog).parse_args(argv)
    try:
        if args.pairs is not None:
            protocol = read_pairs_csv(args.pairs, root=args.root)
        elif args.lfw is not None:
            protocol = read_lfw(args.lfw, images=args.root)
        else:
            protocol = read_ijb(args.ijbc, target=args.target)
        recognizer = OnnxRecognizerConfig(model=args.model, batch_size=args.batch_size,
                                          preprocess=preprocess_from_args(args))
        if args.study:  # the base detector first: the standard variants resolve it
            check_models(detectors=[_detector_and_align(args)[0]], recognizer=recognizer)
            study = study_config_from_args(args)
            check_models(detectors=[v.detector for v in study.variants], recognizer=recognizer)
        else:
            config = evaluation_config_from_args(args, has_landmarks=protocol.has_landmarks)
            needs_detector = "detector" in config.sources or "box" in config.sources
            check_models(detectors=[config.detector] if needs_detector else [], recognizer=recognizer)
    except (VerificationSetupError, ProtocolError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.study:
            return run_study_command(args, protocol, recognizer, study)
        result = evaluate(protocol, recognizer=recognizer, config=config)
    except RayConnectError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    paths = write_report(result, args.out)
    print(format_table(result))
    t = result.extraction.throughput
    print(f"{t['photos']} photos in {t['wall_s']:.1f} s ({t['photos_per_s']:.1f} photos/s, {t['workers']} worker(s)); "
          f"recogniser {t['faces_per_s']:.0f} faces/s per worker")
    for name, res in result.sources.items():
        lost = {k: v for k, v in res.excluded.items() if v}
        fell = {k: v for k, v in res.fallbacks.items() if v}
        if lost or fell:
            print(f"{name}: excluded {lost or 'nothing'}; fallbacks {fell or 'none'}")
    print(f"report: {paths['report']}\nROC: {paths['roc']}")
    return 0
