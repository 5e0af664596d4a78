#!/usr/bin/env python
"""WIDER FACE validation AP of the shipped detector configurations, beside the published figures.

    python benchmarks/bench_widerface_val.py --images WIDER_val/images \\
        --weights ../shared/assets/weights/retinaface_mobilenet0.25_biubug6.pth \\
        --configs torch-fp32-original,openvino-bf16-original [--every 8] [--time-limit 420] \\
        [--box-format float,reference-int]

For each configuration (:data:`CONFIGS`) the detector runs end to end (read, resize, network,
decode, NMS, write) over the images through the evaluation job's own code
(:func:`detector.evaluation.job.detect_function`, :func:`detector.evaluation.predict.predict_submission`),
and the submission folder is scored by the project's evaluator
(:func:`detector.evaluation.widerface.evaluate_folder`, the official protocol). It prints easy /
medium / hard AP, images per second and the published figures beside them, and writes JSON.

Resumable, per configuration and per image: each configuration keeps its predictions and its
detection time under ``OUT/<subset>/<config>/``; a run detects only the images that have no
prediction file yet, so several short runs (``--time-limit`` seconds each, or ``--events`` slices)
build the table. A configuration is scored once all images of the subset have predictions
(``--score-partial`` scores what is there). ``--fresh`` starts a configuration again.

Box convention (``--box-format``, comma separated; default ``float``): predictions are always
saved as detected (``float``, exact), and each requested convention is scored from them.
``reference-int`` scores the boxes as biubug6's ``test_widerface.py`` writes them (x1, y1, x2, y2
truncated to integers, :func:`detector.evaluation.predict.reference_int_predictions`; exactly what
``predict_submission(..., box_format="reference-int")`` writes), the convention of the published
MobileNet-0.25 figures; table rows scored that way carry ``[reference-int]``.

Subset: ``--every N`` keeps every N-th image of each event (sorted names, the first one included);
``full`` is ``--every 1``. Results of different subsets are kept apart (``OUT/every8/...``).

Data: the 3,226 validation images are not in the repository. A public copy with the official
names is in the history of ``Yusepp/YOLOv8-Face``::

    git clone https://github.com/Yusepp/YOLOv8-Face && cd YOLOv8-Face
    git archive 4ed272dfa4bb6a6de95496d8c9c90bb3af8e3c5d WIDER_val | tar -x   # WIDER_val/images/<event>/

The ground truth (``wider_*_val.mat``) is ``../shared/assets/widerface/ground_truth`` (``--gt``).
See docs/widerface.md for the measured table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detector.evaluation.predict import (  # noqa: E402
    BOX_FORMATS,
    iter_image_files,
    predict_submission,
    reference_int_predictions,
    select_images,
)
from detector.evaluation.submission import SETTINGS, load_ground_truth, read_submission  # noqa: E402
from detector.evaluation.widerface import WiderFaceEvaluator  # noqa: E402

__all__ = ["BenchConfig", "CONFIGS", "PUBLISHED", "main", "record_key", "score_predictions"]

#: published WIDER val AP (%), easy / medium / hard
PUBLISHED: dict[str, tuple[str, tuple[float, float, float]]] = {
    "biubug6": ("biubug6 MobileNet-0.25, original size (its README)", (90.70, 88.16, 73.82)),
    "scrfd": ("SCRFD-500M-KPS, VGA (insightface's table)", (90.57, 88.12, 68.51)),
    "yunet": ("YuNet (its README)", (89.2, 88.3, 81.1)),
}


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """One row of the table.

    Attributes:
        family: ``"ours"`` (``--weights``, RetinaFace) or ``"scrfd"`` (``--scrfd-weights``).
        runtime, precision, resize: as :class:`detector.spec.DetectorSpec` takes them
            (``"auto"``: the shipped default, resolved on this machine and recorded).
        nms_threshold: NMS IoU (0.4 is biubug6's evaluation; insightface's SCRFD test config uses 0.45).
        top_k, keep_top_k: candidates kept before NMS and detections after it (``None``: all;
            biubug6's ``test_widerface.py`` of its published table has both lines commented out).
        tta: flip + the paper's five scales merged by box voting (:mod:`detector.evaluation.tta`).
        published: key of :data:`PUBLISHED` shown beside it.
    """

    family: str
    runtime: str
    precision: str
    resize: str
    nms_threshold: float = 0.4
    top_k: int | None = 5000
    keep_top_k: int | None = 750
    tta: bool = False
    published: str | None = None
    note: str = ""


CONFIGS: dict[str, BenchConfig] = {
    "torch-fp32-original": BenchConfig(family="ours", runtime="torch", precision="fp32", resize="original",
                                       published="biubug6", note="the reference path"),
    "torch-fp32-original-unlimited": BenchConfig(
        family="ours", runtime="torch", precision="fp32", resize="original", top_k=None, keep_top_k=None,
        published="biubug6", note="biubug6 test_widerface.py of the published table: no top-k, no keep-top-k"),
    "onnxruntime-fp32-original": BenchConfig(family="ours", runtime="onnxruntime", precision="fp32",
                                             resize="original", published="biubug6"),
    "openvino-fp32-original": BenchConfig(family="ours", runtime="openvino", precision="fp32", resize="original",
                                          published="biubug6"),
    "default-original": BenchConfig(family="ours", runtime="auto", precision="auto", resize="original",
                                    published="biubug6", note="default CPU runtime / precision"),
    "default-original-unlimited": BenchConfig(
        family="ours", runtime="auto", precision="auto", resize="original", top_k=None, keep_top_k=None,
        published="biubug6", note="default CPU runtime / precision, no top-k, no keep-top-k"),
    "torch-fp32-cap640": BenchConfig(family="ours", runtime="torch", precision="fp32", resize="cap:640"),
    "default-cap640": BenchConfig(family="ours", runtime="auto", precision="auto", resize="cap:640",
                                  note="the align job's defaults"),
    "scrfd500m-640": BenchConfig(family="scrfd", runtime="onnxruntime", precision="fp32", resize="long:640",
                                 nms_threshold=0.45, published="scrfd",
                                 note="insightface's evaluation: 640x640 letterbox, score 0.02, NMS 0.45"),
    "default-tta": BenchConfig(family="ours", runtime="auto", precision="auto", resize="original", tta=True,
                               note="flip + short sides 500..1700, box voting"),
}


#: ``top_k`` / ``keep_top_k`` standing for "all": more than the anchors of any WIDER val image
_UNLIMITED = 1_000_000


def _spec(cfg: BenchConfig, args: argparse.Namespace):
    from detector.api import PostprocessConfig
    from detector.spec import DetectorSpec

    if cfg.family == "scrfd":
        weights = args.scrfd_weights
        if weights is None:
            from tests.shared import asset

            weights = asset("weights/peers/scrfd_500m_bnkps.onnx")
        # insightface's test_cfg: every score >= 0.02 before and after NMS (nms_pre = max_per_img = -1)
        post = PostprocessConfig(conf_threshold=0.02, nms_threshold=cfg.nms_threshold, top_k=100_000,
                                 keep_top_k=100_000)
    else:
        weights = args.weights
        post = PostprocessConfig(conf_threshold=0.02, nms_threshold=cfg.nms_threshold,
                                 top_k=_UNLIMITED if cfg.top_k is None else cfg.top_k,
                                 keep_top_k=_UNLIMITED if cfg.keep_top_k is None else cfg.keep_top_k)
    return DetectorSpec(weights=None if weights is None else str(weights), runtime=cfg.runtime,
                        precision=cfg.precision, threads=args.threads, resize=cfg.resize,
                        postprocess=post).resolved()


def _identity(spec: Any) -> dict[str, Any]:
    """What decides this configuration's predictions (compared when resuming)."""
    ident = spec.fingerprint()
    if spec.family == "retinaface" and spec.runtime == "openvino" and spec.precision == "bf16":
        from detector.config import get_preset
        from detector.onnx_runtime import OnnxRetinaFace

        ident["bf16_keep_f32"] = list(OnnxRetinaFace.bf16_keep_f32(get_preset(spec.preset or "mobilenet0.25")))
    return ident


def _load_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def result_path(root: Path, box_format: str) -> Path:
    """Where a configuration's record scored in ``box_format`` is kept."""
    return root / ("result.json" if box_format == "float" else f"result-{box_format}.json")


def record_key(name: str, box_format: str) -> str:
    """The table's key (and row label) of configuration ``name`` scored in ``box_format``."""
    return name if box_format == "float" else f"{name} [{box_format}]"


def score_predictions(pred_dir: Path, gt: Any, box_format: str) -> Any:
    """The evaluator's result on the float submission ``pred_dir``, its lines taken as they are
    (``"float"``) or as the reference writes them (``"reference-int"``)."""
    predictions = read_submission(pred_dir, progress=False)
    if box_format == "reference-int":
        predictions = {k: reference_int_predictions(v) for k, v in predictions.items()}
    evaluator = WiderFaceEvaluator(ground_truth=gt)
    evaluator.process_submission(predictions)
    return evaluator.compute()


def run_config(name: str, args: argparse.Namespace, subset: list[str], todo_filter: set[str] | None,
               gt: Any, deadline: float) -> list[dict[str, Any]] | None:
    """Detect the missing images of ``subset`` (those in ``todo_filter`` if given) until
    ``deadline``; once complete, score them in each of ``args.box_formats``. Returns the result
    records, or ``None`` while incomplete."""
    from detector.evaluation.job import DetectorRunConfig, detect_function

    cfg = CONFIGS[name]
    root = args.out / args.subset_tag / name
    if args.fresh and root.exists():
        shutil.rmtree(root)
    pred_dir = root / "predictions"
    state_path = root / "state.json"
    spec = _spec(cfg, args)
    ident = _identity(spec)
    state = _load_json(state_path) or {"config": name, "identity": ident, "detected": 0, "detect_seconds": 0.0,
                                       "runs": []}
    if state["identity"] != ident:
        raise SystemExit(f"{root}: its predictions were made by {state['identity']}, not {ident}; "
                         "pass --fresh to start this configuration again")

    def done(key: str) -> bool:
        return (pred_dir / f"{key}.txt").is_file()

    todo = [k for k in subset if not done(k) and (todo_filter is None or k in todo_filter)]
    if todo and time.perf_counter() < deadline:
        t0 = time.perf_counter()
        detector = spec.build()
        build_s = time.perf_counter() - t0
        run = DetectorRunConfig(images_dir=args.images, detector=spec, batch_size=args.batch_size, tta=cfg.tta)
        detect = detect_function(detector, run)
        n, seconds = 0, 0.0
        print(f"[{name}] {spec.describe()}: {len(todo)} images to detect (built in {build_s:.1f} s)", flush=True)
        for start in range(0, len(todo), args.chunk):
            if time.perf_counter() >= deadline:
                break
            chunk = todo[start:start + args.chunk]
            t = time.perf_counter()
            predict_submission(args.images, pred_dir, detect, batch_size=args.batch_size, progress=False, keys=chunk)
            dt = time.perf_counter() - t
            n, seconds = n + len(chunk), seconds + dt
            state["detected"] += len(chunk)
            state["detect_seconds"] += dt
            _write_json(state_path, state)
            print(f"[{name}] {sum(map(done, subset))}/{len(subset)} images, {len(chunk) / dt:.2f} img/s", flush=True)
        state["runs"].append({"images": n, "seconds": round(seconds, 3), "build_seconds": round(build_s, 3),
                              "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        _write_json(state_path, state)
    missing = sum(not done(k) for k in subset)
    if missing and not args.score_partial:
        print(f"[{name}] {missing} of {len(subset)} images still to detect: run again to continue")
        return None
    records = []
    for box_format in args.box_formats:
        print(f"[{name}] scoring with boxes {box_format}: {_FORMAT_NOTE[box_format]}", flush=True)
        result = score_predictions(pred_dir, gt, box_format)
        record: dict[str, Any] = {
            "config": name, **asdict(cfg), "identity": ident, "box_format": box_format,
            "ap": {s: float(result[s]) for s in SETTINGS}, "evaluation": result.to_dict(),
            "images": result.images_evaluated, "complete_subset": missing == 0,
            "detect_seconds": round(state["detect_seconds"], 3),
            "images_per_second": state["detected"] / state["detect_seconds"] if state["detect_seconds"] else None,
            "runs": state["runs"],
        }
        _write_json(result_path(root, box_format), record)
        records.append(record)
    return records


_FORMAT_NOTE = {
    "float": "x y w h as detected (exact)",
    "reference-int": "biubug6 test_widerface.py: x, y = int(x1), int(y1); w, h = int(x2) - int(x1), "
                     "int(y2) - int(y1); score str(float32)",
}


def format_table(records: dict[str, dict[str, Any]], *, full: bool = True) -> str:
    """The table: AP in %, images/s, and (``full``: the whole validation set) the published figures
    and the difference to them; AP over a subset is not comparable with them."""
    lines = [f"{'configuration':46s} {'runtime/precision':22s} {'resize':9s} {'images':>6s} "
             f"{'easy':>6s} {'medium':>6s} {'hard':>6s} {'img/s':>6s}  published (easy/medium/hard; diff)"]
    for name, r in records.items():
        ident = r["identity"]
        ap = [100 * r["ap"][s] for s in SETTINGS]
        ips = r["images_per_second"]
        pub = ""
        if r.get("published") and full:
            label, ref = PUBLISHED[r["published"]]
            pub = (f"{ref[0]:.2f}/{ref[1]:.2f}/{ref[2]:.2f} {label}; "
                   + "/".join(f"{a - p:+.2f}" for a, p in zip(ap, ref)))
        lines.append(f"{name:46s} {ident['runtime'] + ' ' + ident['precision']:22s} {ident['resize']:9s} "
                     f"{r['images']:6d} {ap[0]:6.2f} {ap[1]:6.2f} {ap[2]:6.2f} "
                     f"{(f'{ips:6.2f}' if ips else '     -')}  {pub}")
    label, ref = PUBLISHED["yunet"]
    if not full:
        return "\n".join(lines + ["(a subset: the published full-set figures are not comparable)"])
    lines.append(f"{'(YuNet, not run)':46s} {'':22s} {'':9s} {'':6s} {ref[0]:6.2f} {ref[1]:6.2f} {ref[2]:6.2f} "
                 f"{'':6s}  {label}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="WIDER val images DIR/<event>/<image>.jpg")
    p.add_argument("--gt", type=Path, metavar="DIR",
                   help="folder with the wider_*_val.mat files (default ../shared/assets/widerface/ground_truth)")
    p.add_argument("--configs", default="torch-fp32-original,default-original",
                   help=f"comma-separated, from: {', '.join(CONFIGS)} (default %(default)s)")
    p.add_argument("--weights", metavar="FILE|NAME",
                   help="our RetinaFace weights (default: mobilenet0.25, found as every command finds it)")
    p.add_argument("--scrfd-weights", type=Path, metavar="FILE",
                   help="SCRFD-500M ONNX (default ../shared/assets/weights/peers/scrfd_500m_bnkps.onnx)")
    p.add_argument("--box-format", default="float", metavar="FORMATS",
                   help=f"comma-separated conventions to score the predictions in, from {', '.join(BOX_FORMATS)} "
                        "(default %(default)s; reference-int: as biubug6's test_widerface.py writes them)")
    p.add_argument("--every", type=int, default=1, help="every N-th image of each event (default: all)")
    p.add_argument("--events", help="this run detects only these events (names or numbers, comma separated)")
    p.add_argument("--time-limit", type=float, metavar="S",
                   help="start no new chunk of images after S seconds (the rest waits for the next run)")
    p.add_argument("--chunk", type=int, default=64, help="images between saves of the state (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=4, help="same-size images per forward pass (default %(default)s)")
    p.add_argument("--threads", type=int, help="runtime threads (default: the runtime's)")
    p.add_argument("--out", type=Path, default=Path("runs/bench_widerface_val"), help="default %(default)s")
    p.add_argument("--json", type=Path, help="table JSON (default OUT/<subset>/table.json)")
    p.add_argument("--fresh", action="store_true", help="discard the requested configurations' saved predictions")
    p.add_argument("--score-partial", action="store_true", help="score configurations that are not complete yet")
    return p


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = build_parser().parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        raise SystemExit(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    args.box_formats = [f.strip() for f in args.box_format.split(",") if f.strip()]
    if not args.box_formats or set(args.box_formats) - set(BOX_FORMATS):
        raise SystemExit(f"--box-format {args.box_format!r}: choose from {', '.join(BOX_FORMATS)}")
    if args.gt is None:
        from tests.shared import asset

        args.gt = asset("widerface/ground_truth")
    gt = load_ground_truth(args.gt)
    keys = [key for key, _ in iter_image_files(args.images)]
    if not keys:
        raise SystemExit(f"no images under {args.images}/<event>/")
    subset = select_images(keys, every=args.every)
    args.subset_tag = "full" if args.every == 1 else f"every{args.every}"
    events = None if not args.events else {e.strip() for e in args.events.split(",") if e.strip()}
    todo_filter = None if events is None else set(select_images(subset, events=events))
    deadline = start + args.time_limit if args.time_limit else float("inf")
    print(f"subset {args.subset_tag}: {len(subset)} of {len(keys)} images under {args.images} "
          f"({gt.num_images} in the ground truth)")

    for name in names:
        run_config(name, args, subset, todo_filter, gt, deadline)
    # the table holds every configuration of this subset that has a result, run now or before
    records = {}
    for name in CONFIGS:
        for box_format in BOX_FORMATS:
            rec = _load_json(result_path(args.out / args.subset_tag / name, box_format))
            if rec is not None:
                records[record_key(name, box_format)] = rec
    print(format_table(records, full=args.subset_tag == "full" and len(subset) == gt.num_images))
    table = {"subset": args.subset_tag, "every": args.every, "images": len(subset), "images_dir": str(args.images),
             "published": {k: {"label": v[0], "easy": v[1][0], "medium": v[1][1], "hard": v[1][2]}
                           for k, v in PUBLISHED.items()},
             "configs": records}
    json_path = args.json or args.out / args.subset_tag / "table.json"
    _write_json(json_path, table)
    print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
