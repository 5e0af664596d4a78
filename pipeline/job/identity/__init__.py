"""Identity consistency inside the align job (``--recognizer MODEL.onnx``): two Ray Data passes.

1. **Embedding pass** (:class:`FaceEmbedPredictor`, the detector actors with the recogniser loaded
   once in ``__init__``): every candidate face of every listed photo (score >= ``min_score``, box
   side >= ``min_face_size``) is aligned and embedded. The driver appends the L2-normalised
   embeddings to ``dst/.embeddings/part-NNNNNN.npy`` plus ``part-NNNNNN.jsonl`` (one line per photo:
   ``src`` and its candidate faces ``[face index, x1, y1, x2, y2]``, rows in the ``.npy`` in that
   order), a part of at most :data:`PART_ROWS` faces at a time. Both files are written atomically,
   the ``.jsonl`` last: it commits the part. A killed run keeps its committed parts and embeds
   only the photos no part holds (photos whose reading failed are retried).
2. **Centres** (driver, one identity in memory at a time): the committed parts are concatenated,
   in part order, into ``dst/embeddings.npy`` (float32 ``[rows, D]``, unit rows; written through
   a memory map) and ``dst/embeddings_index.jsonl`` (one line per row: ``row``, ``src``,
   ``face``: the face's index in the photo's detections, ``identity``). Rows only ever get
   appended: a later run with more photos keeps the row numbers of earlier records. For each
   identity (the photo's top-level folder; photos directly under ``src`` have none), the centre
   is :func:`pipeline.curation.identity.robust_centre` of its single-face photos (of all its
   faces when it has none), each photo's distance is that of its nearest face, and the
   :class:`pipeline.curation.identity.OutlierRule` gives the folder's threshold. Summary per
   identity: ``dst/identity_centres.json``.
3. **Crop pass** (:class:`IdentityCropPredictor`, the usual actors): each photo arrives with its
   candidates' rows and distances (a JSON column). ``--select identity`` keeps the candidate
   nearest to the centre (matched to the crop pass's detections by face index and box IoU;
   no known distance: the largest face); any other mode keeps its own choice. The record gets
   ``identity``, ``identity_distance`` (``1 - cos`` of the first selected face to the centre,
   ``null`` when unknown), ``identity_outlier`` (``identity_distance`` above the folder's
   threshold) and ``embedding_row`` (that face's row of ``dst/embeddings.npy``, or ``null``).

Records already done are not redone: a run that adds photos moves the centres for the new
records only (rerun with ``--overwrite`` to refresh every record).

One module per concern: :mod:`.actors` (the Ray Data actors), :mod:`.store` (the part files and
their concatenation), :mod:`.centres` (the maths), :mod:`.driver` (checks, the passes, the summary).
"""

from pipeline.job.config import recognizer_fingerprint
from pipeline.job.identity.actors import FaceEmbedPredictor, IdentityCropPredictor
from pipeline.job.identity.centres import identity_figures, score_identities
from pipeline.job.identity.driver import (
    PART_ROWS,
    actor_recognizer,
    check_recognizer,
    identity_summary,
    prepare_identities,
)
from pipeline.job.identity.store import PARTS_DIR, EmbeddingStore, IdentityTable
from pipeline.records import CENTRES_NAME, EMBEDDINGS_INDEX_NAME, EMBEDDINGS_NAME

__all__ = [
    "CENTRES_NAME", "EMBEDDINGS_INDEX_NAME", "EMBEDDINGS_NAME", "PARTS_DIR", "PART_ROWS", "EmbeddingStore",
    "FaceEmbedPredictor", "IdentityCropPredictor", "IdentityTable", "actor_recognizer", "check_recognizer",
    "identity_figures", "identity_summary", "prepare_identities", "recognizer_fingerprint", "score_identities",
]
