"""The status words of ``index build``, in one place: what the stages write into a batch's
``status`` and ``stage`` columns, and what the ``files`` and ``failures`` tables store.

A file travels through the stages as rows with a :data:`ROW_*` status and leaves them as one
``files`` row with a :data:`STATUS_*` status (the committer decides which); a failure names the
stage it happened at (:data:`STAGES`).
"""

from __future__ import annotations

__all__ = ["ROW_FACE", "ROW_FAILED", "ROW_NO_FACE", "ROW_OK", "STAGES", "STAGE_DECODE",
           "STAGE_DETECT", "STAGE_EMBED", "STAGE_READ", "STATUS_FAILED", "STATUS_INDEXED",
           "STATUS_NO_FACE", "STATUS_REMOVED"]

# -- files.status ----------------------------------------------------------------------------

#: ``files.status``: the file had at least one face (its faces are in ``faces``).
STATUS_INDEXED = "indexed"
#: ``files.status``: the file decoded but no face was found.
STATUS_NO_FACE = "no_face"
#: ``files.status``: the file failed at decode, detect or embed (reason in ``failures``).
STATUS_FAILED = "failed"
#: ``files.status``: the path is gone (deleted since it was indexed); its content's faces are
#: no longer shown unless another live path has the same content.
STATUS_REMOVED = "removed"

# -- the stages' row status ------------------------------------------------------------------

#: read and decoded, not detected yet (after ``read_decode``)
ROW_OK = "ok"
#: one face of a file (after ``DetectAlign``)
ROW_FACE = "face"
#: the one row of a file without faces
ROW_NO_FACE = STATUS_NO_FACE
#: the one row of a file that failed (``stage`` and ``reason`` say where and why)
ROW_FAILED = STATUS_FAILED

# -- failures.stage --------------------------------------------------------------------------

STAGE_READ = "read"
STAGE_DECODE = "decode"
STAGE_DETECT = "detect"
STAGE_EMBED = "embed"
#: every stage a file can fail at, in pipeline order
STAGES = (STAGE_READ, STAGE_DECODE, STAGE_DETECT, STAGE_EMBED)
