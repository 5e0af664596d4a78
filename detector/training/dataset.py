"""Face-detection training data in the retinaface_gt_v1.1 ``label.txt`` format.

The format (WIDER FACE training labels with the RetinaFace landmark annotations)::

    # 0--Parade/0_Parade_marchingband_1_765.jpg
    x y w h  l0x l0y f0  l1x l1y f1  l2x l2y f2  l3x l3y f3  l4x l4y f4  quality
    ...

One ``#`` header per image (path relative to ``images/`` beside the label file), then one line of
exactly 20 numbers per face: the box as top-left corner plus size in pixels, five landmarks
(left eye, right eye, nose, left mouth corner, right mouth corner; "left" = image left) each with
a visibility flag, and one quality value. A face without landmark annotation has all ten landmark
coordinates set to ``-1``. An image header followed by no face lines is an image without faces.

Every malformed line is reported with its file and line number (all of them at once, in one
:class:`LabelFormatError`), so a broken label file is fixed in one pass.

Samples are addressed by ``(epoch, index)`` keys (see :class:`SampleKey`): the augmentation of a
sample draws from a random generator seeded with ``(seed, epoch, index)`` and nothing else, so a
sample is the same whichever DataLoader worker, rank or resumed run produces it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from detector.training.augment import AugmentConfig, AugmentedSample, TrainAugmentation

__all__ = [
    "FIELDS_PER_FACE",
    "LabelFormatError",
    "LabeledImage",
    "SampleKey",
    "TrainingBatch",
    "TrainingSample",
    "WiderFaceTrainDataset",
    "StepSampler",
    "collate_training_samples",
    "parse_label_file",
    "sample_generator",
]

FIELDS_PER_FACE = 20
"""Numbers on one face line: box (4) + 5 landmarks x (x, y, flag) (15) + quality (1)."""

_NO_LANDMARK = -1.0


class LabelFormatError(ValueError):
    """A label file has malformed lines; ``problems`` lists ``(line_number, message)``, 1-based."""

    def __init__(self, path: Path, problems: Sequence[tuple[int, str]]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        shown = "\n".join(f"  {self.path}:{line}: {message}" for line, message in self.problems[:50])
        more = len(self.problems) - 50
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{len(self.problems)} malformed line(s) in {self.path}:\n{shown}{tail}")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class LabeledImage:
    """Ground truth of one image, in original-image pixels.

    Attributes:
        path: the image file.
        boxes: ``float32 [N, 4]`` x1, y1, x2, y2.
        landmarks: ``float32 [N, 5, 2]``; rows of faces without landmarks are zero.
        has_landmarks: ``bool [N]``.
        quality: ``float32 [N]``, the last value of each face line (kept, not used in training).
        line: 1-based line number of the image's ``#`` header in the label file.
    """

    path: Path
    boxes: np.ndarray
    landmarks: np.ndarray
    has_landmarks: np.ndarray
    quality: np.ndarray
    line: int

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def parse_label_file(
    labels: str | Path, *, images_dir: str | Path | None = None, check_images: bool = True
) -> list[LabeledImage]:
    """Parse a retinaface_gt_v1.1 ``label.txt``.

    Args:
        labels: the label file.
        images_dir: folder the ``#`` paths are relative to; default ``images/`` beside the file.
        check_images: report headers whose image file does not exist as malformed lines.

    Raises:
        FileNotFoundError: the label file does not exist.
        LabelFormatError: at least one malformed line (all of them are listed).
    """
    labels = Path(labels)
    root = Path(images_dir) if images_dir is not None else labels.parent / "images"
    problems: list[tuple[int, str]] = []
    images: list[LabeledImage] = []

    header: tuple[int, Path] | None = None
    faces: list[list[float]] = []

    def finish() -> None:
        if header is None:
            return
        header_line, path = header
        table = np.asarray(faces, dtype=np.float64).reshape(-1, FIELDS_PER_FACE)
        boxes = np.concatenate([table[:, 0:2], table[:, 0:2] + table[:, 2:4]], axis=1)
        points = table[:, 4:19].reshape(-1, 5, 3)[:, :, :2]
        has_landmarks = ~np.all(points == _NO_LANDMARK, axis=(1, 2))
        landmarks = np.where(has_landmarks[:, None, None], points, 0.0)
        images.append(
            LabeledImage(
                path=path,
                boxes=boxes.astype(np.float32),
                landmarks=landmarks.astype(np.float32),
                has_landmarks=has_landmarks,
                quality=table[:, 19].astype(np.float32),
                line=header_line,
            )
        )

    with labels.open("r", encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.strip()
            if not text:
                continue
            if text.startswith("#"):
                finish()
                faces = []
                relative = text[1:].strip()
                if not relative:
                    problems.append((number, "image header without a path"))
                    header = None
                    continue
                path = root / relative
                if check_images and not path.is_file():
                    problems.append((number, f"image file not found: {path}"))
                header = (number, path)
                continue
            if header is None:
                problems.append((number, "face line before any '# <image path>' header"))
                continue
            values = _parse_face_line(text, number, problems)
            if values is not None:
                faces.append(values)
    finish()
    if problems:
        raise LabelFormatError(labels, problems)
    return images


def _parse_face_line(text: str, number: int, problems: list[tuple[int, str]]) -> list[float] | None:
    tokens = text.split()
    if len(tokens) != FIELDS_PER_FACE:
        problems.append(
            (number, f"expected {FIELDS_PER_FACE} numbers (x y w h, 5 x (lx ly flag), quality), "
                     f"got {len(tokens)}")
        )
        return None
    try:
        values = [float(token) for token in tokens]
    except ValueError as error:
        problems.append((number, f"not a number: {error}"))
        return None
    if not all(math.isfinite(value) for value in values):
        problems.append((number, "non-finite value"))
        return None
    if values[2] <= 0 or values[3] <= 0:
        problems.append((number, f"box width and height must be positive, got w={values[2]} h={values[3]}"))
        return None
    coords = [values[4 + 3 * k + c] for k in range(5) for c in range(2)]
    missing = [coord == _NO_LANDMARK for coord in coords]
    if any(missing) and not all(missing):
        problems.append((number, "partial landmarks: either all ten coordinates are -1 or none is"))
        return None
    return values


class SampleKey(NamedTuple):
    """Address of one augmented sample: the same key always gives the same sample."""

    epoch: int
    index: int


def sample_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one sample, a function of ``(seed, epoch, index)`` only."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class TrainingSample:
    """One augmented training image and its targets, in pixels of the network input.

    Attributes:
        image: ``float32 [3, S, S]`` BGR minus the mean.
        boxes: ``float32 [N, 4]`` x1, y1, x2, y2.
        landmarks: ``float32 [N, 5, 2]`` (zeros where ``has_landmarks`` is false).
        has_landmarks: ``bool [N]``.
        key: the sample's ``(epoch, index)``.
    """

    image: torch.Tensor
    boxes: torch.Tensor
    landmarks: torch.Tensor
    has_landmarks: torch.Tensor
    key: SampleKey


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class TrainingBatch:
    """A collated batch; targets stay per image because face counts differ.

    Attributes:
        images: ``float32 [B, 3, S, S]``.
        boxes: ``B`` tensors ``float32 [N_i, 4]``.
        landmarks: ``B`` tensors ``float32 [N_i, 5, 2]``.
        has_landmarks: ``B`` tensors ``bool [N_i]``.
        keys: the samples' keys.
    """

    images: torch.Tensor
    boxes: tuple[torch.Tensor, ...]
    landmarks: tuple[torch.Tensor, ...]
    has_landmarks: tuple[torch.Tensor, ...]
    keys: tuple[SampleKey, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> TrainingBatch:
        def move(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return tuple(t.to(device, non_blocking=non_blocking) for t in tensors)

        return TrainingBatch(
            images=self.images.to(device, non_blocking=non_blocking),
            boxes=move(self.boxes),
            landmarks=move(self.landmarks),
            has_landmarks=move(self.has_landmarks),
            keys=self.keys,
        )

    def pin_memory(self) -> TrainingBatch:
        """Called by ``DataLoader(pin_memory=True)``."""
        return TrainingBatch(
            images=self.images.pin_memory(),
            boxes=tuple(t.pin_memory() for t in self.boxes),
            landmarks=tuple(t.pin_memory() for t in self.landmarks),
            has_landmarks=tuple(t.pin_memory() for t in self.has_landmarks),
            keys=self.keys,
        )


def collate_training_samples(samples: Sequence[TrainingSample]) -> TrainingBatch:
    """Stack images; keep per-image targets as tuples."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    return TrainingBatch(
        images=torch.stack([s.image for s in samples]),
        boxes=tuple(s.boxes for s in samples),
        landmarks=tuple(s.landmarks for s in samples),
        has_landmarks=tuple(s.has_landmarks for s in samples),
        keys=tuple(s.key for s in samples),
    )


class WiderFaceTrainDataset(Dataset[TrainingSample]):
    """Augmented samples of a retinaface_gt_v1.1 label file.

    Index with a :class:`SampleKey` ``(epoch, index)``; a plain ``int`` means epoch 0.
    Decoded images are cached in memory when ``cache_images`` is true (small sets only).
    """

    def __init__(
        self,
        *,
        labels: str | Path,
        augment: AugmentConfig,
        seed: int,
        images_dir: str | Path | None = None,
        cache_images: bool = False,
    ) -> None:
        self.labels_path = Path(labels)
        self.images = parse_label_file(self.labels_path, images_dir=images_dir)
        if not self.images:
            raise ValueError(f"{self.labels_path} lists no images")
        self.augment_config = augment
        self.augmentation = TrainAugmentation(augment)
        self.seed = int(seed)
        self.cache_images = cache_images
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_faces(self) -> int:
        return sum(len(image) for image in self.images)

    def read_image(self, index: int) -> np.ndarray:
        """The original image ``uint8 [H, W, 3]`` BGR."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        labeled = self.images[index]
        image = cv2.imread(str(labeled.path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"cannot decode image {labeled.path} (label line {labeled.line})")
        if self.cache_images:
            self._cache[index] = image
        return image

    def augmented(self, key: SampleKey) -> AugmentedSample:
        """The augmented sample as numpy arrays (for inspection and tests)."""
        epoch, index = key
        if not 0 <= index < len(self.images):
            raise IndexError(f"sample index {index} out of range [0, {len(self.images)})")
        labeled = self.images[index]
        rng = sample_generator(self.seed, epoch, index)
        return self.augmentation(
            self.read_image(index),
            boxes=labeled.boxes,
            landmarks=labeled.landmarks,
            has_landmarks=labeled.has_landmarks,
            rng=rng,
        )

    def __getitem__(self, key: SampleKey | tuple[int, int] | int) -> TrainingSample:
        if isinstance(key, (int, np.integer)):
            key = SampleKey(0, int(key))
        key = SampleKey(int(key[0]), int(key[1]))
        sample = self.augmented(key)
        return TrainingSample(
            image=torch.from_numpy(sample.image),
            boxes=torch.from_numpy(sample.boxes),
            landmarks=torch.from_numpy(sample.landmarks),
            has_landmarks=torch.from_numpy(sample.has_landmarks),
            key=key,
        )


class StepSampler(Sampler[SampleKey]):
    """Yields the :class:`SampleKey` s of training steps ``[start_step, end_step)`` for one rank.

    Steps are grouped in epochs of :meth:`steps_per_epoch` batches. The sample order of epoch
    ``e`` is a permutation drawn from a ``torch.Generator`` seeded with ``(seed, e)`` (or
    ``0..n-1`` without shuffling), padded by wrapping around to a multiple of
    ``num_replicas * batch_size`` so every rank runs the same number of full batches (as DDP
    needs). Step ``s`` of rank ``r`` is chunk ``(s mod steps_per_epoch) * num_replicas + r`` of
    epoch ``s // steps_per_epoch``. Since that is a function of the step alone, a run resumed at
    step ``s`` continues with exactly the samples the uninterrupted run would have seen, and a
    single DataLoader serves the whole run (no worker restart per epoch).
    """

    def __init__(
        self,
        *,
        dataset_size: int,
        batch_size: int,
        seed: int,
        start_step: int,
        end_step: int,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if dataset_size <= 0:
            raise ValueError("dataset_size must be positive")
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        if not 0 <= start_step <= end_step:
            raise ValueError(f"need 0 <= start_step ({start_step}) <= end_step ({end_step})")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.end_step = end_step
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank

    @staticmethod
    def steps_per_epoch_for(*, dataset_size: int, batch_size: int, num_replicas: int) -> int:
        """Batches each rank runs per epoch: every sample seen at least once across ranks."""
        return max(1, math.ceil(dataset_size / (batch_size * num_replicas)))

    @property
    def steps_per_epoch(self) -> int:
        return self.steps_per_epoch_for(
            dataset_size=self.dataset_size, batch_size=self.batch_size, num_replicas=self.num_replicas
        )

    def epoch_order(self, epoch: int) -> list[int]:
        """All ranks' sample indices of ``epoch``, padded to whole batches."""
        if self.shuffle:
            epoch_seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(epoch_seed)
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        total = self.steps_per_epoch * self.batch_size * self.num_replicas
        return [order[i % self.dataset_size] for i in range(total)]

    def __iter__(self) -> Iterator[SampleKey]:
        cached_epoch, order = -1, []
        for step in range(self.start_step, self.end_step):
            epoch, position = divmod(step, self.steps_per_epoch)
            if epoch != cached_epoch:
                cached_epoch, order = epoch, self.epoch_order(epoch)
            begin = (position * self.num_replicas + self.rank) * self.batch_size
            for index in order[begin : begin + self.batch_size]:
                yield SampleKey(epoch, index)

    def __len__(self) -> int:
        return (self.end_step - self.start_step) * self.batch_size
