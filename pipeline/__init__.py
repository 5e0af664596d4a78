"""Face preprocessing around the RetinaFace detector.

Modules (import what you need; this package imports nothing heavy on its own):

* :mod:`pipeline.align`: ArcFace five-point similarity alignment (insightface-compatible
  ``estimate_norm`` / ``norm_crop``, batched :func:`~pipeline.align.align_faces`).
* :mod:`pipeline.select`: which detected faces to keep (largest, central, score, all).
* :mod:`pipeline.images`: robust image decoding (:func:`~pipeline.images.read_image`,
  :func:`~pipeline.images.decode_image`, :class:`~pipeline.images.ImageReadError`).
* :mod:`pipeline.stage`: :class:`~pipeline.stage.FaceAligner`, the detect-select-align stage for
  lists of images, Ray Data ``map_batches`` and torch datasets.
"""
