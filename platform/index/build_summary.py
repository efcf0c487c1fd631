"""What one ``index build`` did: :class:`BuildSummary`, its JSON form and the lines the CLI
prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["BuildSummary"]


@dataclass
class BuildSummary:
    """What one :func:`build_index` call did.

    ``files_seen`` = ``files_new`` + ``files_skipped_known`` + ``files_duplicate`` + read
    failures (files that could not even be hashed). ``files_removed``: indexed paths under a
    SOURCE folder or glob that are gone (their faces are no longer shown); ``total_faces`` and
    ``total_files`` count what is live after this call. ``failures`` counts files of this run that
    failed at any stage (they are recorded; the build still succeeds). ``images_per_second`` is
    ``files_new / seconds`` (whole call, Ray start-up included); ``pipeline_seconds`` times the
    Ray Data job alone, ``first_result_seconds`` until its first output batch (actor start-up:
    model loading dominates it), which finished ``first_result_files`` files.
    """

    files_seen: int = 0
    files_new: int = 0
    files_skipped_known: int = 0
    faces: int = 0
    failures: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    files_duplicate: int = 0
    files_ignored: int = 0
    files_no_face: int = 0
    files_with_faces: int = 0
    failures_by_stage: dict[str, int] = field(default_factory=dict)
    pipeline_seconds: float = 0.0
    first_result_seconds: float = 0.0
    first_result_files: int = 0
    commits: int = 0
    run_id: str = ""
    index_dir: str = ""
    model_id: str = ""
    total_faces: int = 0
    total_files: int = 0
    files_removed: int = 0
    plan: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Every field, times rounded to milliseconds (the CLI's ``--json``)."""
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["pipeline_seconds"] = round(self.pipeline_seconds, 3)
        out["first_result_seconds"] = round(self.first_result_seconds, 3)
        out["images_per_second"] = round(self.images_per_second, 3)
        return out

    def format(self) -> str:
        """The human summary the CLI prints."""
        stages = ", ".join(f"{k} {v}" for k, v in sorted(self.failures_by_stage.items()))
        pipeline_rate = self.files_new / self.pipeline_seconds if self.pipeline_seconds else 0.0
        lines = [
            f"files:    {self.files_seen} seen: {self.files_new} new, "
            f"{self.files_skipped_known} already indexed, {self.files_duplicate} duplicate "
            f"content" + (f", {self.files_ignored} non-image files ignored"
                          if self.files_ignored else "")
            + (f", {self.files_removed} gone since the last build (removed)"
               if self.files_removed else ""),
            f"faces:    {self.faces} added from {self.files_with_faces} files "
            f"({self.files_no_face} without a face); index now holds {self.total_faces} faces, "
            f"{self.total_files} files",
            f"failures: {self.failures}"
            + (f" ({stages}), see {self.index_dir.rstrip('/')}/failures" if self.failures else ""),
            f"time:     {self.seconds:.1f} s, {self.images_per_second:.2f} images/s"
            + (f" (pipeline {self.pipeline_seconds:.1f} s, {pipeline_rate:.2f} images/s)"
               if self.pipeline_seconds else ""),
            f"index:    {self.index_dir} (run {self.run_id}, {self.commits} commit(s), "
            f"model {self.model_id})",
        ]
        return "\n".join(lines)
