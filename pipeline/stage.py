"""The face-alignment stage, the one path from a photo to its crops: detect (coarse), refine the
kept faces' landmarks (fine), measure quality, filter, select, crop.

:class:`FaceAligner` is built once from any :class:`detector.api.FaceDetector` (or a zero-argument
factory of one, e.g. ``DetectorSpec(...).build``, so that Ray actors and DataLoader workers build
their own) and a frozen :class:`AlignConfig`. Everything that aligns faces calls it: the align
job's actors (:class:`pipeline.job.stages.FaceCropPredictor` only decodes rows and writes them),
verification, the alignment study, a training ``Dataset``.

* ``aligner.align(images)`` (or ``aligner(images)``): ``HxWx3`` uint8 images ->
  ``list[list[AlignedFace]]``, one list per image in selection order.
* ``aligner.run(photos)``: :class:`PhotoInput` (pixels, or a file's bytes decoded here as a JPEG
  draft where the detector would shrink the photo anyway, or such a draft decoded already, or
  given landmarks; :mod:`pipeline.photo`) ->
  :class:`FaceChoice` per photo: every face with its quality, which were selected, their crops,
  or why none was (``filtered``, ``error``).

Detection sizes (:class:`AlignConfig`): the coarse pass detects at ``resize`` (default
``cap:640``: large photos shrunk, small ones kept, never enlarged); a photo with no face there is
detected again at ``retry_resize``; the kept faces that the coarse pass saw smaller than
``refine_size`` pixels are detected once more in a window around them (:mod:`pipeline.refine`),
and their boxes and landmarks are taken from there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from detector.api import Detections, FaceDetector, as_bgr_uint8
from detector.config import ResizePolicy
from pipeline.align import AlignedCrops, align_faces, transform_points
from pipeline.config import AlignConfig
from pipeline.curation.quality import QualityFilter, face_quality
from pipeline.images import ImageReadError
from pipeline.photo import Photo as _Photo
from pipeline.photo import PhotoInput
from pipeline.refine import match_face, needs_refinement, refine_windows
from pipeline.select import select_faces

__all__ = ["AlignConfig", "AlignedFace", "FaceAligner", "FaceChoice", "PhotoInput"]

REFINE_CONF = 0.5
"""Score threshold of the refinement detections (matched by overlap; at 0.2 rounding decided edge-cut faces)."""
REFINE_BATCH = 16
"""Refinement windows per detector call."""


@dataclass(frozen=True, eq=False)
class AlignedFace:
    """One aligned face.

    Attributes:
        crop: ``[h, w, 3]`` uint8, channel order of the input.
        box: ``[4]`` float32 x1 y1 x2 y2 in image pixels.
        score: detector confidence.
        landmarks: ``[5, 2]`` float32 image pixels (left eye, right eye, nose, mouth left/right).
        matrix: ``[2, 3]`` float64 image -> crop (``cv2.warpAffine`` convention).
        inverse: ``[2, 3]`` float64 crop -> image.
        face_index: index of this face in the detector's score-sorted detections of the image.
    """

    crop: np.ndarray
    box: np.ndarray
    score: float
    landmarks: np.ndarray
    matrix: np.ndarray
    inverse: np.ndarray
    face_index: int

    @property
    def crop_landmarks(self) -> np.ndarray:
        """``[5, 2]`` float64 landmarks in crop pixels (near the template for a good fit)."""
        return transform_points(self.landmarks, self.matrix)


@dataclass(frozen=True, eq=False)
class FaceChoice:
    """One photo's faces after detection, refinement, quality measures, filters and selection.

    Attributes:
        shape: ``(h, w)`` of the full (upright) photo.
        boxes, scores, landmarks: ``[K, 4]``, ``[K]`` (``None`` for given landmarks) and
            ``[K, 5, 2]`` float32 in photo pixels, score-sorted; the selected faces' refined.
        quality: K :func:`pipeline.curation.face_quality` dicts.
        selected: indices of the cropped faces, in selection order.
        crops: ``[M, h, w, 3]`` uint8 crops of the selected faces (``None`` when M = 0).
        matrices: ``[M, 2, 3]`` float64 photo -> crop.
        refined: ``[K]`` bool, whose landmarks come from a refinement window.
        filtered: why no face was selected when every eligible face failed the quality filter.
        error: why the photo could not be processed ("" when it was).
        image: the decoded image the crops came from (a draft or the photo), for callers that
            need pixels of a photo without a face (e.g. a centred crop); ``None`` on error.
    """

    shape: tuple[int, int]
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    scores: np.ndarray | None = field(default_factory=lambda: np.zeros((0,), np.float32))
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 5, 2), np.float32))
    quality: list[dict] = field(default_factory=list)
    selected: list[int] = field(default_factory=list)
    crops: np.ndarray | None = None
    matrices: np.ndarray | None = None
    refined: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    filtered: str = ""
    error: str = ""
    image: np.ndarray | None = None
    _quality_crops: AlignedCrops | None = field(default=None, repr=False)
    """The 112x112 ArcFace crops of every face from ``image`` (quality measures), reused as the
    output crops when those are the same."""

    @property
    def given(self) -> bool:
        return self.scores is None

    def faces(self) -> list[AlignedFace]:
        """The selected faces as :class:`AlignedFace` (selection order)."""
        if self.crops is None:
            return []
        inverse = np.stack([cv2.invertAffineTransform(m) for m in self.matrices]) if len(self.selected) else []
        return [AlignedFace(crop=self.crops[j], box=self.boxes[i].copy(),
                            score=1.0 if self.scores is None else float(self.scores[i]),
                            landmarks=self.landmarks[i], matrix=self.matrices[j], inverse=inverse[j],
                            face_index=int(i))
                for j, i in enumerate(self.selected)]


class FaceAligner:
    """Detect, refine, select and align faces in batches of photos (see the module docstring).

    Args:
        detector: a :class:`detector.api.FaceDetector`, or a zero-argument callable returning one
            (called once, here; pass e.g. ``DetectorSpec(...).build`` so that Ray actors build
            their own model instead of unpickling one).
        config: the :class:`AlignConfig` (default: the one set of defaults).
        quality_filter: which faces may be selected (default: every rule off).
        draft: decode encoded JPEGs that the detector shrinks 2x or more as faster JPEG drafts
            (:func:`pipeline.images.draft_factor`); the crops still come from the full photo when
            a face is smaller in the draft than the crop. ``False``: always decode in full (crops
            bit-identical to ``norm_crop`` of the final landmarks).
    """

    def __init__(self, *, detector: FaceDetector | Callable[[], FaceDetector],
                 config: AlignConfig = AlignConfig(), quality_filter: QualityFilter | None = None,
                 draft: bool = True) -> None:
        if not isinstance(config, AlignConfig):
            raise TypeError(f"config must be an AlignConfig, got {type(config).__name__}")
        det = detector if isinstance(detector, FaceDetector) else detector()
        if not isinstance(det, FaceDetector):
            raise TypeError(f"detector must be a FaceDetector or a factory of one, got {type(det).__name__}")
        self._detector = det
        self._config = config
        self._filter = quality_filter or QualityFilter()
        self._draft = bool(draft)
        # The detector keeps scores strictly above its threshold; the float32 number just below
        # min_score makes that "score >= min_score" (scores are float32).
        self._conf_threshold = (
            float(np.nextafter(np.float32(config.min_score), np.float32(-np.inf)))
            if config.min_score > 0 else None
        )

    @property
    def config(self) -> AlignConfig:
        return self._config

    @property
    def detector(self) -> FaceDetector:
        return self._detector

    def __repr__(self) -> str:
        return f"FaceAligner(config={self._config!r})"

    # ------------------------------------------------------------------ list API
    def align(self, images: Sequence[np.ndarray]) -> list[list[AlignedFace]]:
        """Detect, refine, select and align.

        Args:
            images: ``HxWx3`` uint8 images in ``config.color`` order (``HxW`` / ``HxWx4`` accepted).

        Returns:
            one list of :class:`AlignedFace` per image, in selection order (possibly empty).
        """
        return [c.faces() for c in self._run_checked(images)]

    __call__ = align

    def detect_and_align(self, images: Sequence[np.ndarray]) -> list[tuple[Detections, list[AlignedFace]]]:
        """Per image, its faces with ``score >= min_score`` as :class:`Detections` (the selected
        ones refined) and its aligned faces (as :meth:`align`)."""
        out = []
        for c in self._run_checked(images):
            keep = np.flatnonzero(c.scores >= self._config.min_score) if len(c.scores) else np.zeros(0, int)
            out.append((Detections(c.boxes[keep], c.scores[keep], c.landmarks[keep]), c.faces()))
        return out

    def detect(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """The coarse detections of each image (one detector call, ``config.resize``), numpy,
        holding every face with ``score >= config.min_score`` (no retry, no refinement)."""
        prepared = [_Photo(PhotoInput(image=im), self._config, draft=False) for im in self._check(images)]
        return self._coarse(prepared, self._config.resize)

    def align_detections(self, images: Sequence[np.ndarray],
                         detections: Sequence[Detections]) -> list[list[AlignedFace]]:
        """Select and align given detections (no detector call, no refinement); see :meth:`align`."""
        if len(images) != len(detections):
            raise ValueError(f"{len(images)} images but {len(detections)} detections")
        out = []
        for image, d in zip(self._check(images), detections):
            photo = _Photo(PhotoInput(image=image), self._config, draft=False)
            d = d.numpy()
            d = Detections(d.boxes.copy(), d.scores.copy(), d.landmarks.copy())
            out.append(self._crop(photo, self._choose(photo, d, 1.0)).faces())
        return out

    def _check(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [as_bgr_uint8(im, i) for i, im in enumerate(images)]

    def _run_checked(self, images: Sequence[np.ndarray]) -> list[FaceChoice]:
        choices = self.run([PhotoInput(image=im) for im in self._check(images)])
        for c in choices:
            if c.error and self._config.on_error == "raise":
                raise RuntimeError(c.error)
        return choices

    # ------------------------------------------------------------------ the one path
    def run(self, photos: Sequence[PhotoInput]) -> list[FaceChoice]:
        """Each photo's :class:`FaceChoice`. Never raises for one bad photo: its ``error`` says
        why (an unreadable file, given landmarks outside the photo, a failed detection)."""
        cfg = self._config
        results: list[FaceChoice | None] = [None] * len(photos)
        loaded: dict[int, _Photo] = {}
        for i, p in enumerate(photos):
            try:
                loaded[i] = _Photo(p, cfg, draft=self._draft)
            except ImageReadError as e:
                results[i] = FaceChoice(shape=(0, 0), error=e.reason)
        given = {i: ph for i, ph in loaded.items() if photos[i].landmarks is not None}
        todo = {i: ph for i, ph in loaded.items() if i not in given}
        for i, ph in given.items():
            results[i] = self._guarded(ph, lambda ph=ph, i=i: self._given(ph, photos[i].landmarks))
        dets, scales, failures = self._detect_all(todo)
        for i, why in failures.items():
            results[i] = FaceChoice(shape=todo[i].shape, error=why)
        choices = {i: self._guarded(todo[i], lambda i=i: self._choose(todo[i], dets[i], scales[i]))
                   for i in dets}
        self._refine(todo, choices, scales)
        for i, c in choices.items():
            results[i] = c if c.error else self._guarded(todo[i], lambda i=i, c=c: self._crop(todo[i], c))
        return results

    @staticmethod
    def _guarded(photo: _Photo, fn: Callable[[], FaceChoice]) -> FaceChoice:
        try:
            return fn()
        except ImageReadError as e:
            return FaceChoice(shape=photo.shape, error=e.reason)
        except _PhotoError as e:
            return FaceChoice(shape=photo.shape, error=str(e))
        except Exception as e:  # one photo's failure must not fail the batch: record it
            return FaceChoice(shape=photo.shape, error=f"alignment failed: {type(e).__name__}: {e}")

    def _detect_all(self, photos: dict[int, _Photo]) -> tuple[dict[int, Detections], dict[int, float], dict[int, str]]:
        """Coarse detections in photo pixels (one detector call), retried at ``retry_resize`` for
        photos without an eligible face; the scale each photo's final detection ran at; failures."""
        cfg = self._config
        dets, failures = self._detect_guarded(photos, cfg.resize)
        scales = {i: cfg.resize.scale(*photos[i].shape) for i in dets}
        if cfg.retry_resize is not None:
            retry = {i: photos[i] for i, d in dets.items()
                     if not self._eligible(d).any() and cfg.retry_resize.scale(*photos[i].shape) > scales[i]}
            if retry:
                again, more = self._detect_guarded(retry, cfg.retry_resize)
                failures.update(more)
                for i, d in again.items():
                    dets[i] = d
                    scales[i] = cfg.retry_resize.scale(*photos[i].shape)
        return dets, scales, failures

    def _detect_guarded(self, photos: dict[int, _Photo],
                        policy: ResizePolicy) -> tuple[dict[int, Detections], dict[int, str]]:
        """One detector call for all ``photos``; if it fails, photo by photo, so that one bad
        photo only fails itself."""
        if not photos:
            return {}, {}
        try:
            return dict(zip(photos, self._coarse(list(photos.values()), policy))), {}
        except Exception:  # retried one by one below
            pass
        results, failures = {}, {}
        for i, ph in photos.items():
            try:
                results[i] = self._coarse([ph], policy)[0]
            except ImageReadError as e:
                failures[i] = e.reason
            except Exception as e:
                failures[i] = f"detection failed: {type(e).__name__}: {e}"
        return results, failures

    def _coarse(self, photos: list[_Photo], policy: ResizePolicy) -> list[Detections]:
        """Detections (numpy, photo pixels) of ``photos`` at ``policy``, each decoded as the
        draft that policy allows."""
        images, ratios = [], []
        for ph in photos:
            image, ratio = ph.at(policy.scale(*ph.shape))
            images.append(image)
            ratios.append(ratio)
        out = []
        for d, (rx, ry) in zip(self._detector.detect(images, resize=policy, conf_threshold=self._conf_threshold,
                                                     vote_iou=self._config.vote_iou), ratios):
            d = d.numpy()  # in the detected image's pixels; the copies below are this photo's own
            r = np.array([rx, ry], np.float32)
            out.append(Detections(d.boxes * np.tile(r, 2), d.scores.copy(), d.landmarks * r))
        return out

    def _eligible(self, d: Detections) -> np.ndarray:
        b = d.boxes
        side = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        return (d.scores >= self._config.min_score) & (side >= self._config.min_face_size)

    def _given(self, photo: _Photo, points: np.ndarray) -> FaceChoice:
        """Given ``[5, 2]`` points, kept in float64 (crops equal ``norm_crop``); full size."""
        from pipeline.curation.landmarks import box_from_landmarks

        points = np.asarray(points, np.float64).reshape(5, 2)
        h, w = photo.shape
        inside = (points[:, 0] >= 0) & (points[:, 0] < w) & (points[:, 1] >= 0) & (points[:, 1] < h)
        if not inside.any():
            raise _PhotoError(f"the given landmarks lie outside the {w}x{h} photo")
        image, _ = photo.at(1.0)
        lm = points[None]
        crops = align_faces(image, lm, 112)
        quality = face_quality(box_from_landmarks(lm), lm, crops.crops)
        choice = FaceChoice(shape=photo.shape, boxes=box_from_landmarks(lm), scores=None, landmarks=lm,
                            quality=quality, selected=[] if self._filter.reasons(quality[0]) else [0],
                            refined=np.zeros(1, bool))
        if not choice.selected:
            return _replace(choice, filtered="face 0: " + ", ".join(self._filter.reasons(quality[0])), image=image)
        return self._crop(photo, choice)

    def _choose(self, photo: _Photo, dets: Detections, scale: float) -> FaceChoice:
        """Quality of every face (on 112x112 crops from the detection's image), the filters and
        the selection, in photo pixels."""
        cfg = self._config
        k = len(dets.scores)
        image, (rx, ry) = photo.at(scale)
        r = np.array([rx, ry], np.float32)
        aligned = align_faces(image, dets.landmarks / r, 112) if k else None
        quality = face_quality(dets.boxes, dets.landmarks,
                               aligned.crops if k else np.zeros((0, 112, 112, 3), np.uint8))
        eligible = self._eligible(dets)
        reasons = [self._filter.reasons(q) if ok else [] for q, ok in zip(quality, eligible)]
        passing = np.array([i for i in range(k) if eligible[i] and not reasons[i]], np.int64)
        chosen = passing
        if len(passing):
            order = select_faces(dets.boxes[passing], dets.scores[passing], image_shape=photo.shape,
                                 mode=cfg.select, max_faces=cfg.max_faces)
            chosen = passing[order]
        filtered = ""
        if not len(chosen) and any(reasons):
            filtered = "; ".join(f"face {i}: {', '.join(rs)}" for i, rs in enumerate(reasons) if rs)
        return FaceChoice(shape=photo.shape, boxes=dets.boxes, scores=dets.scores, landmarks=dets.landmarks,
                          quality=quality, selected=[int(i) for i in chosen], refined=np.zeros(k, bool),
                          filtered=filtered, image=image, _quality_crops=aligned)

    def _refine(self, photos: dict[int, _Photo], choices: dict[int, FaceChoice], scales: dict[int, float]) -> None:
        """Detect the selected faces again in windows at ``refine_size`` (see :mod:`pipeline.refine`);
        a matched detection's box and landmarks replace the coarse ones, in place."""
        size = self._config.refine_size
        if not size:
            return
        jobs = []  # (photo index, face index, window)
        for i, c in choices.items():
            if c.error or not c.selected:
                continue
            sel = np.asarray(c.selected)
            b = c.boxes[sel]
            side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
            todo = needs_refinement(side, scales[i], size)
            for f, w in zip(sel[todo], refine_windows(b[todo], size)):
                jobs.append((i, int(f), w))
        for start in range(0, len(jobs), REFINE_BATCH):
            part = jobs[start:start + REFINE_BATCH]
            windows = []
            for i, _face, w in part:
                try:
                    source, ratio = photos[i].at(w.scale)
                except ImageReadError:
                    source = None
                windows.append(None if source is None else w.extract(source, ratio))
            ready = [k for k, x in enumerate(windows) if x is not None]
            if not ready:
                continue
            found = self._detector.detect([windows[k] for k in ready], resize=ResizePolicy.original(),
                                          conf_threshold=REFINE_CONF, vote_iou=self._config.vote_iou)
            for k, d in zip(ready, found):
                d = d.numpy()
                i, f, w = part[k]
                c = choices[i]
                j = match_face(w.to_window(c.boxes[f].reshape(2, 2)).reshape(4), d.boxes)
                if j < 0:
                    continue
                c.boxes[f] = w.to_photo(d.boxes[j].reshape(2, 2)).reshape(4)
                c.landmarks[f] = w.to_photo(d.landmarks[j])
                c.refined[f] = True

    def _crop(self, photo: _Photo, choice: FaceChoice) -> FaceChoice:
        """The selected faces' crops, from the draft the faces were detected in if they are at
        least crop-sized there, else from the full photo; their quality from those crops."""
        cfg = self._config
        if not choice.selected:
            return choice
        sel = np.asarray(choice.selected)
        b = choice.boxes[sel]
        side = np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        # the largest draft in which every selected face is still at least crop-sized
        scale = min(1.0, float(min(cfg.crop_shape)) / max(float(side.min()), 1.0))
        image, (rx, ry) = photo.at(1.0 if choice.given else scale)
        r = np.array([rx, ry], np.float64)
        lm = choice.landmarks[sel].astype(np.float64) / r if choice.given else choice.landmarks[sel] / r
        q = choice._quality_crops
        if (q is not None and image is choice.image and (cfg.image_size, cfg.crop) == (112, "arcface")
                and not choice.refined[sel].any()):  # the quality crops are the output crops
            aligned = AlignedCrops(crops=q.crops[sel], matrices=q.matrices[sel], inverse=q.inverse[sel], spec=q.spec)
        else:
            aligned = align_faces(image, lm, cfg.image_size, variant=cfg.crop)
        m = aligned.matrices.copy()
        m[:, :, 0] /= rx  # photo pixels -> crop
        m[:, :, 1] /= ry
        quality = list(choice.quality)
        if choice.refined[sel].any() and not choice.given:
            q_crops = (aligned.crops if (cfg.image_size, cfg.crop) == (112, "arcface")
                       else align_faces(image, lm, 112).crops)
            for j, q in zip(sel, face_quality(choice.boxes[sel], choice.landmarks[sel], q_crops)):
                quality[j] = q
        crops = aligned.crops if cfg.color == "bgr" else np.ascontiguousarray(aligned.crops[..., ::-1])
        return _replace(choice, crops=crops, matrices=m, quality=quality, image=image, _quality_crops=None)


class _PhotoError(Exception):
    """A photo that cannot be processed; the message is its ``error``."""


def _replace(choice: FaceChoice, **changes) -> FaceChoice:
    import dataclasses

    return dataclasses.replace(choice, **changes)
