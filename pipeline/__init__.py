"""Face preprocessing around the RetinaFace detector.

Modules (import what you need; this package imports nothing heavy on its own):

* :mod:`pipeline.align`: ArcFace five-point similarity alignment (insightface-compatible
  ``estimate_norm`` / ``norm_crop``, batched :func:`~pipeline.align.align_faces`).
* :mod:`pipeline.select`: which detected faces to keep (largest, central, score, all).
* :mod:`pipeline.images`: robust image decoding (:func:`~pipeline.images.read_image`,
  :func:`~pipeline.images.decode_image`, :class:`~pipeline.images.ImageReadError`).
* :mod:`pipeline.stage`: :class:`~pipeline.stage.FaceAligner`, the detect-select-align stage for
  lists of images, Ray Data ``map_batches`` and torch datasets.
* :mod:`pipeline.job`: the Ray Data batch align job behind ``faceprep align`` (:mod:`pipeline.job.cli`)
  (:func:`~pipeline.job.run_align_job`).
* :mod:`pipeline.writers`: atomic output files, the folder-tree layout and the resumable JSONL
  manifest.
* :mod:`pipeline.recordio`: MXNet RecordIO (``train.rec`` / ``train.idx`` / ``property``) writer and
  reader, as insightface's arcface_torch reads them, without mxnet.
* :mod:`pipeline.demo`: a small demo photo tree from photos that installed packages ship.
* :mod:`pipeline.verification`: 1:1 verification (IJB-C layout or a pairs CSV): alignment sources,
  recognisers, template aggregation, ROC / TAR@FAR.
"""
