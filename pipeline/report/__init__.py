"""The align job's visual report: ``dst/report.html``, a static page built from the manifest alone.

No server and no external URL: HTML, inline CSS, inline SVG histograms and a few lines of inline
JavaScript (it only marks on ``<body>`` whether every image loaded). Open it from the file system.

What it shows (each part only when the manifest has the fields it needs, so manifests of older
runs, without ``quality`` or ``--recognizer`` fields, still give a report):

* counts per status (``ok``, ``no_face``, ``error``, ``filtered``), identity outliers, given and
  detected landmarks, faces and crops;
* histograms of score, box size, inter-ocular distance, yaw / pitch / roll, sharpness, brightness
  (all candidate faces, the selected ones darker), faces per photo and identity distance. Box size
  and eye distance come from ``quality`` when present, else from the box and landmarks;
* the problem photos (``no_face``, ``error``, ``filtered``, ``identity_outlier``): a seeded random
  sample of each, as thumbnails of the source photo with the detections drawn (boxes, the five
  landmarks, the selected face in green, the others in orange), and the complete list as paged
  tables (``report_files/<kind>-NNNN.html``);
* a contact sheet per identity (top-level folder): thumbnails of its crops, outliers first and
  framed in red, paged (``report_files/identities-NNNN.html``, ``page_size`` identities a page);
* a seeded random sample grid of crops.

Crop thumbnails are the crop files themselves for the ``folder`` and ``recordio`` formats
(referenced by relative path, nothing copied); for ``webdataset`` the shown crops are copied out
of the shards into ``report_files/crops/``. Problem thumbnails are small JPEGs in
``report_files/thumbs/`` drawn from the source photos (``src`` from ``dst/job.json``; a photo
that cannot be read is shown as text).

Scale: the manifest is streamed once. Memory holds counters, histogram bins, the seeded
reservoir samples, one page of HTML per paged list and the current identity's thumbnails (at
most ``per_identity``), never every record. A finished job's manifest is compacted (one record
per photo, sorted), so an identity's records are consecutive; any other manifest is first
compacted into a temporary copy. Everything is built in a temporary folder, swapped in as
``report_files/``, and ``report.html`` is written last, atomically.

One module per concern: :mod:`.stats` (measures, histograms, samples, problem kinds),
:mod:`.render` (HTML), :mod:`.thumbs` (drawn problem thumbnails), :mod:`.shards` (crops inside
WebDataset shards), :mod:`.build` (the streaming pass and :func:`build_report`).
"""

from pipeline.records import REPORT_FILES_NAME as FILES_NAME
from pipeline.records import REPORT_NAME
from pipeline.report.build import ReportConfig, ReportError, build_report
from pipeline.report.render import svg_histogram
from pipeline.report.stats import MEASURES, PROBLEM_KINDS, Histogram, MeasureSpec, Reservoir, face_measures
from pipeline.report.thumbs import draw_detections

__all__ = [
    "FILES_NAME", "MEASURES", "PROBLEM_KINDS", "REPORT_NAME", "Histogram", "MeasureSpec", "ReportConfig",
    "ReportError", "Reservoir", "build_report", "draw_detections", "face_measures", "svg_histogram",
]
