"""Detector speed on one thread: ours in every runtime and precision against the reference and the peers.

End-to-end latency of one ``detect`` call on one 640x480 BGR uint8 image (a real group photo,
``images/group_insightface_t1.jpg``, resized with INTER_AREA; the call includes each detector's
preprocessing, forward pass and postprocessing), everything on one thread, for:

``ours-torch-fp32``, ``ours-onnxruntime-fp32``, ``ours-openvino-fp32``, ``ours-openvino-bf16``
    our RetinaFace MobileNet-0.25 built with ``DetectorSpec(weights, runtime=..., precision=...,
    threads=1, resize="original")`` (the 640x480 image as it is).
``reference-biubug6``
    the reference ``detect.py`` steps reproduced here: numpy preprocessing, the unfused eager
    model, the PriorBox python loop per image, decode, numpy threshold/sort, ``py_cpu_nms``.
``insightface-scrfd500m``
    SCRFD-500M (``peers/scrfd_500m_bnkps.onnx``) through insightface's own
    ``insightface.model_zoo.scrfd.SCRFD`` on onnxruntime (its session opened with one intra-op and
    one inter-op thread), ``prepare(ctx_id=-1, input_size=(640, 640))``,
    ``detect(img, input_size=(640, 640))`` (letterboxed into 640x640).
``ours-scrfd500m``
    the same file through our SCRFD family: ``DetectorSpec(family="scrfd", runtime="onnxruntime",
    resize="long:640", threads=1)`` (insightface's preprocessing, decoding done by us).
``yunet-opencv``
    ``cv2.FaceDetectorYN.create(peers/yunet_n_dynamic.onnx, "", (640, 480))`` with
    ``cv2.setNumThreads(1)`` (``--yunet 640`` for ``yunet_n_640_640.onnx``).

Thresholds (printed and written to the JSON): ours keep scores > 0.5 (``--ours-conf``), the score
threshold insightface's SCRFD uses, top 5000 before NMS at IoU 0.4, 750 after; the reference keeps
its detect.py setting, scores > 0.02 (``--ours-conf 0.02`` runs ours the same way: ~1.5 ms more of
NMS on this photo); SCRFD (both) keeps scores >= 0.5, NMS at 0.4; YuNet its own default, scores >=
0.9, NMS at 0.3, top 5000. ``cv2``, torch
(our postprocessing), onnxruntime and OpenVINO all run one thread.

Timing: ``--rounds`` rounds; each round warms every detector up (``--warmup`` calls, at least 20
in the first round: OpenVINO then runs its fixed-shape model for the repeated size), then runs
``--iters`` iterations, each of which times every detector once (the order rotates from round to
round), so that all of them see the same machine load. Reported: the median over all timed calls
(and each round's median in the JSON); the ratios fastest-ours / insightface SCRFD and
fastest-ours / YuNet (``fastest ours``: the fastest of our RetinaFace runtimes), and whether the
target "<= 0.6x both" is met.

After that (not with ``--quick``): the stage breakdown of ours (torch) and the reference, batch
throughput at batch 1/8/32 on CPU (all threads), and on CUDA when present.

    python benchmarks/bench_detector.py --rounds 5 --iters 40 --json runs/bench_detector.json
    python benchmarks/bench_detector.py --quick     # 1 round of 5 iterations, no breakdown / batches
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector import load_model  # noqa: E402
from detector.box_coder import BoxCoder  # noqa: E402
from detector.spec import DetectorSpec  # noqa: E402
from tests.shared import MOBILENET_WEIGHTS, asset  # noqa: E402

FIRST_WARMUP = 20  # calls per detector before the first timed round
TARGET_RATIO = 0.6  # fastest ours / each peer (insightface SCRFD-500M, YuNet)
SCRFD_FILE = "weights/peers/scrfd_500m_bnkps.onnx"
YUNET_FILES = {"dynamic": "weights/peers/yunet_n_dynamic.onnx", "640": "weights/peers/yunet_n_640_640.onnx"}
OURS_RUNTIMES = (("torch", "fp32"), ("onnxruntime", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"))


def median_ms(fn, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


# ------------------------------------------------------------------ the reference pipeline's steps
def reference_priors(h: int, w: int) -> torch.Tensor:
    out = []
    for step, sizes in zip((8, 16, 32), ((16, 32), (64, 128), (256, 512))):
        for i, j in itertools.product(range(math.ceil(h / step)), range(math.ceil(w / step))):
            for s in sizes:
                out += [(j + 0.5) * step / w, (i + 0.5) * step / h, s / w, s / h]
    return torch.tensor(out).view(-1, 4)


def py_cpu_nms(dets: np.ndarray, thresh: float) -> list[int]:
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


class ReferencePipeline:
    def __init__(self, weights: Path) -> None:
        self.net = load_model(weights)  # eager, BatchNorm unfused, NCHW: what detect.py runs
        self.coder = BoxCoder((0.1, 0.2))

    def preprocess(self, img_raw: np.ndarray) -> torch.Tensor:
        img = np.float32(img_raw)
        img -= (104, 117, 123)
        return torch.from_numpy(img.transpose(2, 0, 1)).unsqueeze(0)

    def postprocess(self, out, h: int, w: int) -> np.ndarray:
        cls, loc, landms = out.cls_logits, out.bbox_deltas, out.landmark_deltas
        priors = reference_priors(h, w)
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        boxes = (self.coder.decode_boxes(loc[0], priors) * scale).numpy()
        scores = torch.softmax(cls, -1)[0, :, 1].numpy()
        lm = (self.coder.decode_landmarks(landms[0], priors).reshape(-1, 10)
              * torch.tensor([w, h] * 5, dtype=torch.float32)).numpy()
        inds = np.where(scores > 0.02)[0]
        boxes, lm, scores = boxes[inds], lm[inds], scores[inds]
        order = scores.argsort()[::-1][:5000]
        boxes, lm, scores = boxes[order], lm[order], scores[order]
        dets = np.hstack((boxes, scores[:, None])).astype(np.float32, copy=False)
        keep = py_cpu_nms(dets, 0.4)
        return np.concatenate((dets[keep], lm[keep]), axis=1)[:750]

    @torch.no_grad()
    def __call__(self, img: np.ndarray) -> np.ndarray:
        out = self.net(self.preprocess(img))
        return self.postprocess(out, img.shape[0], img.shape[1])


# ------------------------------------------------------------------ the contestants
@dataclass
class Contestant:
    """One detector under test: ``run(img)`` is the timed call, ``faces(result)`` counts its faces
    with score >= 0.5 (a sanity check that it found the same people)."""

    name: str
    group: str  # "ours" (RetinaFace), "ours-scrfd", "reference", "peer"
    run: Callable[[np.ndarray], Any]
    faces: Callable[[Any], int]
    thresholds: dict[str, Any]
    input: str
    samples: list[float] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)


def _ours_faces(result: Any) -> int:
    return int((result[0].numpy().scores >= 0.5).sum())


def _postprocess_doc(cfg: Any, conf: float | None) -> dict[str, Any]:
    return {"conf_threshold": cfg.conf_threshold if conf is None else conf, "nms_threshold": cfg.nms_threshold,
            "top_k": cfg.top_k, "keep_top_k": cfg.keep_top_k}


def build_contestants(args: argparse.Namespace, weights: Path, errors: dict[str, str]) -> list[Contestant]:
    out: list[Contestant] = []

    def attempt(name: str, make: Callable[[], Contestant]) -> None:
        try:
            out.append(make())
        except Exception as exc:  # one broken runtime must not stop the others
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"  {name}: NOT built ({errors[name]})", flush=True)

    for runtime, precision in OURS_RUNTIMES:
        def make(runtime=runtime, precision=precision) -> Contestant:
            det = DetectorSpec(weights=str(weights), runtime=runtime, precision=precision, threads=1,
                               resize="original").build()
            conf = args.ours_conf
            return Contestant(f"ours-{runtime}-{precision}", "ours", lambda img: det.detect([img], conf_threshold=conf),
                              _ours_faces, _postprocess_doc(det.postprocess_config, conf), "640x480 (original)")

        attempt(f"ours-{runtime}-{precision}", make)

    def make_reference() -> Contestant:
        ref = ReferencePipeline(weights)
        return Contestant("reference-biubug6", "reference", ref, lambda r: int((r[:, 4] >= 0.5).sum()),
                          {"conf_threshold": 0.02, "nms_threshold": 0.4, "top_k": 5000, "keep_top_k": 750},
                          "640x480 (original)")

    attempt("reference-biubug6", make_reference)

    scrfd_path = str(asset(SCRFD_FILE))

    def make_insightface() -> Contestant:
        import onnxruntime as ort
        from insightface.model_zoo.scrfd import SCRFD

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(scrfd_path, options, providers=["CPUExecutionProvider"])
        model = SCRFD(model_file=scrfd_path, session=session)
        model.prepare(ctx_id=-1, input_size=(640, 640))
        threads = model.session.get_session_options().intra_op_num_threads
        if threads != 1:
            raise RuntimeError(f"insightface's session runs {threads} intra-op threads, not 1")
        return Contestant("insightface-scrfd500m", "peer", lambda img: model.detect(img, input_size=(640, 640)),
                          lambda r: int((r[0][:, 4] >= 0.5).sum()),
                          {"det_thresh": model.det_thresh, "nms_thresh": model.nms_thresh},
                          "640x640 (letterbox)")

    attempt("insightface-scrfd500m", make_insightface)

    def make_our_scrfd() -> Contestant:
        det = DetectorSpec(weights=scrfd_path, family="scrfd", runtime="onnxruntime", threads=1,
                           resize="long:640").build()
        return Contestant("ours-scrfd500m", "ours-scrfd", lambda img: det.detect([img]), _ours_faces,
                          _postprocess_doc(det.postprocess_config, None), "640x640 (letterbox, long:640)")

    attempt("ours-scrfd500m", make_our_scrfd)

    def make_yunet() -> Contestant:
        model = cv2.FaceDetectorYN.create(str(asset(YUNET_FILES[args.yunet])), "", (640, 480))
        return Contestant("yunet-opencv", "peer", model.detect,
                          lambda r: 0 if r[1] is None else int((r[1][:, 14] >= 0.5).sum()),
                          {"score_threshold": round(model.getScoreThreshold(), 3),
                           "nms_threshold": round(model.getNMSThreshold(), 3), "top_k": model.getTopK(),
                           "file": Path(YUNET_FILES[args.yunet]).name},
                          "640x480")

    attempt("yunet-opencv", make_yunet)
    return out


def time_interleaved(contestants: list[Contestant], img: np.ndarray, rounds: int, iters: int, warmup: int,
                     errors: dict[str, str]) -> list[Contestant]:
    """Round by round: warm every contestant up, then ``iters`` iterations timing each once."""
    alive = list(contestants)
    for r in range(rounds):
        order = alive[r % len(alive):] + alive[:r % len(alive)] if alive else []
        for c in list(order):
            try:
                # the first round warms up longer: OpenVINO compiles a fixed-shape model for an input
                # size met 16 times (detector.onnx_session), which a user's steady state runs on
                for _ in range(max(warmup, FIRST_WARMUP) if r == 0 else warmup):
                    c.run(img)
            except Exception as exc:
                errors[c.name] = f"detect failed: {type(exc).__name__}: {exc}"
                print(f"  {c.name}: detect failed, dropped ({errors[c.name]})", flush=True)
                order.remove(c)
                alive.remove(c)
        this_round: dict[str, list[float]] = {c.name: [] for c in order}
        for _ in range(iters):
            for c in order:
                t = time.perf_counter()
                c.run(img)
                this_round[c.name].append(time.perf_counter() - t)
        for c in order:
            c.samples += this_round[c.name]
            c.rounds.append(statistics.median(this_round[c.name]) * 1000)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{c.name} {c.rounds[-1]:.2f}" for c in alive) + " ms",
              flush=True)
    return alive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None, help="default: the shared biubug6 MobileNet-0.25")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--iters", "--repeats", dest="iters", type=int, default=40,
                        help="timed iterations per round, each timing every detector once (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per detector per round (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: 1 round of 5 iterations after 2 warm-up calls; no breakdown, no batches")
    parser.add_argument("--yunet", choices=sorted(YUNET_FILES), default="dynamic", help="YuNet file (default dynamic)")
    parser.add_argument("--ours-conf", type=float, default=0.5,
                        help="confidence threshold of our RetinaFace calls (default 0.5, SCRFD's det_thresh; "
                             "0.02 is the reference detect.py's setting)")
    parser.add_argument("--image", default="images/group_insightface_t1.jpg", help="shared asset to resize to 640x480")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.iters, args.warmup = 1, 5, 2
    weights = args.weights or asset(MOBILENET_WEIGHTS)

    photo = cv2.imread(str(asset(args.image)))
    img = cv2.resize(photo, (640, 480), interpolation=cv2.INTER_AREA)

    all_threads = torch.get_num_threads()
    cv2_threads = cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    errors: dict[str, str] = {}
    print("building the detectors ...", flush=True)
    contestants = build_contestants(args, weights, errors)
    torch.set_num_threads(1)  # whatever a builder did
    print(f"640x480, 1 thread: {args.rounds} round(s) of {args.iters} iteration(s) after {args.warmup} warm-up "
          f"call(s) each", flush=True)
    with torch.inference_mode():
        alive = time_interleaved(contestants, img, args.rounds, args.iters, args.warmup, errors)
        faces = {c.name: c.faces(c.run(img)) for c in alive}

    med = {c.name: round(statistics.median(c.samples) * 1000, 3) for c in alive}
    by_name = {c.name: c for c in alive}
    print(f"\nend-to-end, 1 thread, 640x480 (median of {args.rounds} x {args.iters} calls, ms)")
    print(f"{'':24s}{'median':>9s}{'p10':>9s}{'p90':>9s}  {'faces>=.5':>9s}  input / thresholds")
    for c in alive:
        q = np.percentile(np.array(c.samples) * 1000, [10, 90])
        th = ", ".join(f"{k} {v}" for k, v in c.thresholds.items())
        print(f"{c.name:24s}{med[c.name]:9.2f}{q[0]:9.2f}{q[1]:9.2f}  {faces[c.name]:9d}  {c.input}; {th}")

    ours = [c for c in alive if c.group == "ours"]
    ratios: dict[str, Any] = {"target": TARGET_RATIO}
    if ours:
        best = min(ours, key=lambda c: med[c.name])
        ratios.update(fastest_ours=best.name, fastest_ours_ms=med[best.name])
        verdicts = []
        for key, peer in (("insightface_scrfd", "insightface-scrfd500m"), ("yunet", "yunet-opencv")):
            if peer not in by_name:
                print(f"fastest ours ({best.name}) / {peer}: n/a ({errors.get(peer, 'not run')})")
                verdicts.append(False)
                continue
            ratio = med[best.name] / med[peer]
            per_round = [round(a / b, 3) for a, b in zip(best.rounds, by_name[peer].rounds)]
            ratios[f"fastest_ours_vs_{key}"] = round(ratio, 3)
            ratios[f"fastest_ours_vs_{key}_per_round"] = per_round
            verdicts.append(ratio <= TARGET_RATIO)
            print(f"fastest ours ({best.name}, {med[best.name]:.2f} ms) / {peer} ({med[peer]:.2f} ms): {ratio:.3f}"
                  f"   (per round {min(per_round):.3f} .. {max(per_round):.3f})")
        ratios["target_met"] = all(verdicts)
        print(f"target <= {TARGET_RATIO}x both peers: {'met' if all(verdicts) else 'NOT met'}")
        if "reference-biubug6" in by_name:
            ratios["ours_torch_vs_reference"] = (round(med["ours-torch-fp32"] / med["reference-biubug6"], 3)
                                                 if "ours-torch-fp32" in med else None)
            ratios["fastest_ours_vs_reference"] = round(med[best.name] / med["reference-biubug6"], 3)
            print(f"ours torch / reference: {ratios['ours_torch_vs_reference']}; fastest ours / reference: "
                  f"{ratios['fastest_ours_vs_reference']:.3f}")
    else:
        ratios["target_met"] = False
        print("none of our RetinaFace runtimes ran: no ratio")
    if "ours-scrfd500m" in med and "insightface-scrfd500m" in med:
        ratios["ours_scrfd_vs_insightface_scrfd"] = round(med["ours-scrfd500m"] / med["insightface-scrfd500m"], 3)
        print(f"ours-scrfd500m / insightface-scrfd500m (same network, our pre/postprocessing): "
              f"{ratios['ours_scrfd_vs_insightface_scrfd']:.3f}")
    if errors:
        print("not measured: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))

    results: dict[str, Any] = {
        "image": args.image, "size": [640, 480], "threads": 1, "rounds": args.rounds, "iters": args.iters,
        "warmup": args.warmup, "quick": args.quick, "end_to_end_ms": med, "ratios": ratios,
        "round_medians_ms": {c.name: [round(x, 3) for x in c.rounds] for c in alive},
        "p10_p90_ms": {c.name: [round(float(x), 3) for x in np.percentile(np.array(c.samples) * 1000, [10, 90])]
                       for c in alive},
        "faces_at_0.5": faces, "thresholds": {c.name: c.thresholds for c in alive},
        "inputs": {c.name: c.input for c in alive}, "errors": errors,
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "load_avg": os.getloadavg(), "torch": torch.__version__, "cv2": cv2.__version__},
    }
    try:
        import openvino as ov

        results["machine"]["openvino_cpu_capabilities"] = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # not installed: nothing to say
        pass

    det = next((c for c in alive if c.name == "ours-torch-fp32"), None)
    if not args.quick and det is not None:
        det = DetectorSpec(weights=str(weights), runtime="torch", threads=1, resize="original").build()
        ref = ReferencePipeline(weights)
        n = args.iters
        with torch.inference_mode():
            batch, scales, sizes = det.preprocess([img])
            out = det.forward(batch, sizes)
            x = ref.preprocess(img)
            rout = ref.net(x)
            stages = {
                "ours-torch-fp32": {"preprocess": median_ms(lambda: det.preprocess([img]), n),
                                    "forward": median_ms(lambda: det.forward(batch, sizes), n),
                                    "postprocess": median_ms(lambda: det.postprocess(out, (480, 640), scales), n)},
                "reference-biubug6": {"preprocess": median_ms(lambda: ref.preprocess(img), n),
                                      "forward": median_ms(lambda: ref.net(x), n),
                                      "postprocess": median_ms(lambda: ref.postprocess(rout, 480, 640), n)},
            }
        results["stages_ms"] = {k: {s: round(v, 3) for s, v in d.items()} for k, d in stages.items()}
        print(f"\nstages, 1 thread, median of {n} (ms)")
        print(f"{'':20s}{'preprocess':>12s}{'forward':>10s}{'postproc':>10s}")
        for k, d in stages.items():
            print(f"{k:20s}{d['preprocess']:12.2f}{d['forward']:10.2f}{d['postprocess']:10.2f}")

        torch.set_num_threads(all_threads)
        cv2.setNumThreads(cv2_threads)
        results["cpu_batch_img_per_s"] = {}
        print(f"\nCPU batch throughput, ours torch ({all_threads} threads), 640x480 images")
        for bs in (1, 8, 32):
            imgs = [img] * bs
            ms = median_ms(lambda: det.detect(imgs), max(3, n // max(1, bs // 4)), warmup=2)
            results["cpu_batch_img_per_s"][bs] = round(bs / ms * 1000, 2)
            print(f"  batch {bs:3d}: {bs / ms * 1000:8.1f} img/s  ({ms:8.1f} ms/batch)")

    if torch.cuda.is_available():
        torch.set_num_threads(all_threads)
        results["cuda"] = {"device": torch.cuda.get_device_name()}
        for fp16 in (False, True):
            gdet = DetectorSpec(weights=str(weights), runtime="torch", device="cuda",
                                precision="fp16" if fp16 else "fp32", resize="original").build()
            print(f"\nCUDA ({torch.cuda.get_device_name()}), fp16={fp16}")
            for bs in (1, 8, 32):
                imgs = [img] * bs

                def run():
                    gdet.detect(imgs)
                    torch.cuda.synchronize()

                ms = median_ms(run, 5 if args.quick else 20, warmup=2 if args.quick else 5)
                results["cuda"][f"{'fp16' if fp16 else 'fp32'}_batch{bs}_img_per_s"] = round(bs / ms * 1000, 2)
                print(f"  batch {bs:3d}: {bs / ms * 1000:8.1f} img/s  ({ms:8.2f} ms/batch)")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
