"""vmtl.data: annotation readers/writers and the deterministic synthetic multi-task video generator.

- :mod:`vmtl.data.annotations`: typed records and readers for every task kind's annotation files
  (``read_annotations``, ``read_split``, ``read_manifest``, ...), errors as ``FILE:LINE: problem``.
- :mod:`vmtl.data.synth`: ``generate(out_dir, SynthConfig(...))`` writes seven datasets (one per task,
  disjoint videos) plus ``manifest.json``; ``vmtl data synth`` is its command line.
- :mod:`vmtl.data.images`, :mod:`vmtl.data.render`: image sources, rendering and h264 encoding.
- :mod:`vmtl.data.clips`: ``load_clipset`` decodes one task's split (cached) with its targets, for
  training, evaluation and export's checks.

numpy only at import time (PyAV is imported when a video is encoded or decoded).
"""

from vmtl.data.annotations import (
    AnnotationError,
    FrameBox,
    GtSegment,
    LabelRecord,
    LocalizeRecord,
    RegressRecord,
    TagRecord,
    TrackRecord,
    read_annotations,
    read_labels,
    read_manifest,
    read_split,
)
from vmtl.data.synth import MOTION_LABELS, SEGMENT_LABELS, TASKS, SynthConfig, generate

__all__ = [
    "MOTION_LABELS",
    "SEGMENT_LABELS",
    "TASKS",
    "AnnotationError",
    "FrameBox",
    "GtSegment",
    "LabelRecord",
    "LocalizeRecord",
    "RegressRecord",
    "SynthConfig",
    "TagRecord",
    "TrackRecord",
    "generate",
    "read_annotations",
    "read_labels",
    "read_manifest",
    "read_split",
]
