"""Detector speed: our pipeline vs the reference biubug6 detect.py steps on a 640x480 photo.

Prints, single-threaded: end-to-end latency (ours and the reference timed alternately, round by round) (preprocess + forward + postprocess), forward alone and
postprocess alone, for ours and for the reference pipeline (reproduced here step by step: numpy
preprocessing, unfused eager model, PriorBox python loop per image, decode, numpy threshold/sort,
``py_cpu_nms``); then batch throughput at batch 1/8/32 on CPU (all threads), and on CUDA when present.

    python benchmarks/bench_detector.py [--weights W] [--repeats 30]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector import Detector, load_model  # noqa: E402
from detector.box_coder import BoxCoder  # noqa: E402
from tests.shared import MOBILENET_WEIGHTS, asset  # noqa: E402


def median_ms(fn, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def interleaved_ms(ours, reference, repeats: int, warmup: int = 5) -> tuple[float, float, float]:
    """Time two callables alternately (so both see the same machine load); returns both medians in
    ms and the median of the per-round ratios ours / reference."""
    for _ in range(warmup):
        ours()
        reference()
    a, b = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        ours()
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        reference()
        b.append(time.perf_counter() - t)
    ratios = [x / y for x, y in zip(a, b)]
    return statistics.median(a) * 1000, statistics.median(b) * 1000, statistics.median(ratios)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=None, help="default: the shared biubug6 MobileNet-0.25")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    weights = args.weights or asset(MOBILENET_WEIGHTS)

    photo = cv2.imread(str(asset("images/group_insightface_t1.jpg")))
    img = cv2.resize(photo, (640, 480), interpolation=cv2.INTER_AREA)
    n = args.repeats

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    det = Detector.from_weights(weights, device="cpu")
    ref = ReferencePipeline(weights)
    with torch.inference_mode():
        batch, scales, sizes = det.preprocess([img])
        out = det.forward(batch, sizes)
        ours_e2e, ref_e2e, paired = interleaved_ms(lambda: det.detect([img]), lambda: ref(img), n)
        ours_fwd = median_ms(lambda: det.forward(batch, sizes), n)
        ours_post = median_ms(lambda: det.postprocess(out, (480, 640), scales), n)
        ours_pre = median_ms(lambda: det.preprocess([img]), n)
        x = ref.preprocess(img)
        rout = ref.net(x)
        ref_fwd = median_ms(lambda: ref.net(x), n)
        ref_post = median_ms(lambda: ref.postprocess(rout, 480, 640), n)
    faces_ours = int((det.detect([img])[0].scores > 0.5).sum())
    faces_ref = int((ref(img)[:, 4] > 0.5).sum())

    print("640x480, 1 thread, median of", n, "after warm-up (ms)")
    print(f"{'':14s}{'end-to-end':>12s}{'preprocess':>12s}{'forward':>10s}{'postproc':>10s}")
    print(f"{'ours':14s}{ours_e2e:12.2f}{ours_pre:12.2f}{ours_fwd:10.2f}{ours_post:10.2f}")
    print(f"{'reference':14s}{ref_e2e:12.2f}{'':12s}{ref_fwd:10.2f}{ref_post:10.2f}")
    print(f"ratio ours/reference end-to-end: {ours_e2e / ref_e2e:.3f} (ratio of medians); median of paired "
          f"ratios {paired:.3f}   (faces >= 0.5: ours {faces_ours}, reference {faces_ref})")

    torch.set_num_threads(threads)
    print(f"\nCPU batch throughput ({threads} threads), 640x480 images")
    for bs in (1, 8, 32):
        imgs = [img] * bs
        ms = median_ms(lambda: det.detect(imgs), max(3, n // max(1, bs // 4)), warmup=2)
        print(f"  batch {bs:3d}: {bs / ms * 1000:8.1f} img/s  ({ms:8.1f} ms/batch)")

    if torch.cuda.is_available():
        for fp16 in (False, True):
            gdet = Detector.from_weights(weights, device="cuda", fp16=fp16)
            print(f"\nCUDA ({torch.cuda.get_device_name()}), fp16={fp16}")
            for bs in (1, 8, 32):
                imgs = [img] * bs

                def run():
                    gdet.detect(imgs)
                    torch.cuda.synchronize()

                ms = median_ms(run, 20, warmup=5)
                print(f"  batch {bs:3d}: {bs / ms * 1000:8.1f} img/s  ({ms:8.2f} ms/batch)")


if __name__ == "__main__":
    main()
