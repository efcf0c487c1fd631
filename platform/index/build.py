"""``index build``: index every face of a photo collection into Parquet, with Ray Data.

    summary = build_index(["photos/", "@more.txt"], "my-index")

What a build does:

1. **List** the SOURCEs (:mod:`.sources`): folders (recursive), globs, list files, files.
2. **Recover** the index (finish or drop what an interrupted build left, see :mod:`.collection`)
   and load its ``files`` log: path -> (size, mtime, content hash, status).
3. **Skip what is known.** A file whose (path, size, mtime) is in the log is not even read
   (``rehash=True`` reads it anyway). The others are read and hashed (sha256) by Ray tasks; a
   file whose content hash is already indexed (a copy, a touched file) is recorded under its new
   path without being processed again, and files with the same content in one run are
   processed once.
4. **Process the new content** as one streaming Ray Data job::

       from_arrow(new files) -> map_batches(read_decode)            tasks
                             -> map_batches(DetectAlign, ActorPool)  MTCNN + crop + sharpness
                             -> map_batches(Embed, ActorPool)        FaceNet, big batches, GPU
                             -> iter_batches() on the driver -> commits

   A file that fails (read, decode, detect, embed) is recorded with its stage and reason and
   never fails the job; a file without faces is recorded as such, so neither is processed again.
5. **Commit** finished files every ``commit_every_files`` files or ``commit_every_seconds``
   seconds, atomically (staging + commit record + rename, :meth:`CollectionStore.commit`), so a
   build killed at any point and started again ends with the same faces as a clean build: no
   face lost, none twice (faces are keyed by ``(content_hash, face_index)``).
6. **Prune.** A path of the files log that a folder or glob SOURCE covers but did not list any
   more (the file was deleted or renamed) gets a ``removed`` row; a path whose bytes changed
   gets its new content. Readers then show only the faces of live content
   (:func:`~.collection.live_content`), so a re-run on the same SOURCE equals a fresh build of
   what is there now. Faces are never rewritten: the same content coming back is live again at
   no cost.
7. Update the ``collection`` section of ``manifest.json`` and return a :class:`BuildSummary`.

Ray: connected through :mod:`facenet_platform.ray_connection` (an initialised Ray is used as
is; otherwise the options' address or ``$RAY_ADDRESS``, checked for reachability first, else a
local Ray). On a cluster the workers must be
able to import ``facenet_platform`` (install it on the nodes or pass a runtime env) and read the
SOURCE paths; the driver writes the index, so a local INDEX_DIR is written on this machine.

The parts, one module each: :mod:`.build_options` (:class:`BuildOptions`), :mod:`.build_plan`
(pool sizes, batch sizes and CPUs/GPUs per actor from ``ray.cluster_resources()``),
:mod:`.stages` (the Ray Data stages), :mod:`.committer` (whole files -> commits),
:mod:`.build_summary` (:class:`BuildSummary`), :mod:`.faults` (test-only fault injection); this
module runs them in order.
"""


from __future__ import annotations

import logging
import math
import os
import time
from collections import Counter
from dataclasses import asdict
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from facenet_platform.core.errors import ConfigError, FaceNetPlatformError
from facenet_platform.core.model_spec import ModelSpec
from facenet_platform.ray_connection import check_ray_address, connect_ray, resolve_address
from facenet_platform.ray_errors import job_error_text

from .build_options import BuildOptions
from .build_plan import ResourcePlan, plan_resources
from .build_summary import BuildSummary
from .collection import (FACES, FAILURES, FILES, SCHEMA_VERSION, CollectionStore,
                         latest_per_path, live_content, new_run_id)
from .committer import Committer, FileState
from .faults import parse_faults
from .layout import IndexLayout, read_manifest, update_manifest
from .sources import SourceFile, is_uri, list_sources
from .status import STAGE_READ, STATUS_FAILED, STATUS_REMOVED

logger = logging.getLogger(__name__)

# BuildOptions and BuildSummary are build_index's argument and result, importable from here.
__all__ = ["BuildJobError", "BuildOptions", "BuildSummary", "build_index"]


class BuildJobError(FaceNetPlatformError):
    """The Ray Data job itself failed (not one file: e.g. a stage could not load its model).
    What was committed before stays; running the build again resumes from there."""


def _connect(options: BuildOptions) -> None:
    connect_ray(resolve_address(options.address), num_cpus=options.num_cpus,
                log_to_driver=options.log_to_driver, logging_level=logging.WARNING)


def _known_states(files_log: pa.Table, retry_failed: bool
                  ) -> tuple[dict[str, tuple[int, int, str]], dict[str, FileState]]:
    """(path -> (size, mtime_ns, hash) of its last row, hash -> state) from the files log."""
    latest = latest_per_path(files_log)
    by_path: dict[str, tuple[int, int, str]] = {}
    by_hash: dict[str, FileState] = {}
    cols = latest.to_pydict() if latest.num_rows else {}
    for i in range(latest.num_rows):
        if cols["status"][i] == STATUS_REMOVED:
            continue  # a deleted path: if it comes back it is hashed again
        h = cols["content_hash"][i]
        by_path[cols["path"][i]] = (cols["size"][i], cols["mtime_ns"][i], h)
    # Every content ever processed (all rows, not only the latest per path): the state of a
    # hash is that of its last processing (its faces stay stored after its paths are removed).
    allcols = files_log.select(["content_hash", "status", "faces", "image_width",
                                "image_height"]).to_pydict() if files_log.num_rows else {}
    for i in range(files_log.num_rows):
        if allcols["status"][i] == STATUS_REMOVED:
            continue
        state = FileState(allcols["status"][i], allcols["faces"][i], allcols["image_width"][i],
                           allcols["image_height"][i])
        by_hash[allcols["content_hash"][i]] = state
    if retry_failed:
        by_hash = {h: s for h, s in by_hash.items() if s.status != STATUS_FAILED}
    return by_path, by_hash


def _blocks(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    return [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)]


def _hash_pass(files: list[SourceFile], options: BuildOptions) -> dict[str, tuple[str, str]]:
    """path -> (content_hash, error) for ``files``, read and hashed by Ray tasks."""
    import ray

    from .stages import hash_files

    table = pa.table({"path": pa.array([f.path for f in files], pa.string())})
    per_block = max(32, math.ceil(len(files) / 2000))
    ds = ray.data.from_arrow(_blocks(table, per_block))
    ds = ds.map_batches(hash_files, batch_size=per_block, num_cpus=0.25, batch_format="numpy")
    out: dict[str, tuple[str, str]] = {}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for path, h, err in zip(batch["path"], batch["content_hash"], batch["error"]):
            out[str(path)] = (str(h), str(err))
    return out


def _pipeline(work: list[SourceFile], options: BuildOptions, plan: ResourcePlan,
              faults: dict[str, str], spec: ModelSpec):
    import ray

    from .stages import DetectAlign, Embed, read_decode
    table = pa.table({
        "path": pa.array([f.path for f in work], pa.string()),
        "size": pa.array([f.size for f in work], pa.int64()),
        "mtime_ns": pa.array([f.mtime_ns for f in work], pa.int64()),
    })
    per_block = max(options.read_batch_size * 2, math.ceil(len(work) / 4000))
    ds = ray.data.from_arrow(_blocks(table, per_block))
    ds = ds.map_batches(read_decode, batch_size=options.read_batch_size, batch_format="numpy",
                        num_cpus=plan.decode_cpus,
                        fn_kwargs={"max_pixels": options.max_pixels,
                                   "sampling": options.sampling(), "read_xmp": options.read_xmp})
    ds = ds.map_batches(
        DetectAlign, batch_size=options.detect_batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.detect_actors),
        num_cpus=plan.detect_cpus,
        fn_constructor_kwargs={"spec": spec.to_metadata(),
                               "min_face_size": options.min_face_size,
                               "num_threads": plan.detect_threads,
                               "rotation_retry": options.rotation_retry,
                               "rotation_retry_below": options.rotation_retry_below,
                               "faults": faults})
    embed_args: dict[str, Any] = {"num_cpus": plan.embed_cpus}
    if plan.embed_gpus:
        embed_args["num_gpus"] = plan.embed_gpus
    ds = ds.map_batches(
        Embed, batch_size=plan.embed_batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.embed_actors),
        fn_constructor_kwargs={"spec": spec.to_metadata(), "batch_size": plan.model_batch_size,
                               "backend": options.backend,
                               "num_threads": plan.embed_threads, "faults": faults},
        **embed_args)
    return ds


def build_index(sources: Sequence[str] | Iterable[str] | str, index_dir: str | os.PathLike, *,
                options: BuildOptions | None = None) -> BuildSummary:
    """Index every face of ``sources`` into ``index_dir``, incrementally (see the module doc).

    Args:
        sources: SOURCE arguments (folders, globs, image files, ``@list`` files; local or URIs).
        index_dir: the index directory (local path or URI); created if missing.
        options: :class:`BuildOptions`.

    Returns:
        :class:`BuildSummary` of this call.

    Raises:
        DatasetError: a SOURCE does not exist.
        RayConnectionError: the Ray cluster cannot be reached (:mod:`facenet_platform.ray_connection`).
        IndexBusyError: another build is writing to ``index_dir``.
        ConfigError: bad options, or the index holds another model's embeddings.
        BuildJobError: the Ray Data job failed as a whole (what was committed stays).
    """
    from facenet_platform.core.factory import resolve_spec

    options = options or BuildOptions()
    options.validate()
    start = time.monotonic()
    spec = resolve_spec(options.model)  # the model's crop and contract, for every actor
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    # fail fast, even when there turns out to be nothing to do
    check_ray_address(resolve_address(options.address))
    layout = IndexLayout.open(index_dir)
    index_uri = os.fspath(index_dir)
    listing = list_sources(list(sources), exclude=None if is_uri(index_uri) else layout.root)
    layout.makedirs(layout.root)
    store = CollectionStore(layout)
    run_id = new_run_id()
    faults = parse_faults()
    summary = BuildSummary(files_seen=len(listing.files), files_ignored=listing.ignored,
                           run_id=run_id, index_dir=index_uri)

    store.acquire_lock(run_id)
    try:
        commits = store.recover()
        section = read_manifest(layout).get("collection", {})
        model_id = section.get("model_id") or next(
            (r.get("model_id") for r in reversed(commits) if r.get("model_id")), None)
        embedding_size = section.get("embedding_size") or next(
            (r.get("embedding_size") for r in reversed(commits) if r.get("embedding_size")), None)
        if model_id not in (None, spec.model_id):
            raise ConfigError(
                f"{index_uri} holds embeddings of model {model_id}; this build would use "
                f"{spec.model_id}: pass the same --model, or build into a new INDEX_DIR")
        _check_recorded_spec(section, spec, index_uri)
        files_log = store.read(FILES, commits=commits)
        by_path, known = _known_states(files_log, options.retry_failed)
        logged_read_failures = _logged_read_failures(store, commits)
        committer = Committer(store, run_id, store.next_seq(commits), options, faults, known,
                               model_id, embedding_size, shots=_shots(listing.files))

        # 1. skip by (path, size, mtime); hash the rest
        to_hash: list[SourceFile] = []
        hashed: dict[str, str] = {}
        for f in listing.files:
            cached = None if options.rehash else by_path.get(f.path)
            if cached and cached[0] == f.size and cached[1] == f.mtime_ns and cached[2] in known:
                summary.files_skipped_known += 1
            elif cached and cached[0] == f.size and cached[1] == f.mtime_ns and not options.rehash:
                hashed[f.path] = cached[2]  # retry_failed: content known to have failed
            else:
                to_hash.append(f)
        if to_hash:
            _connect(options)
            t = time.monotonic()
            results = _hash_pass(to_hash, options)
            logger.info("hashed %d files in %.1f s", len(to_hash), time.monotonic() - t)
        else:
            results = {}

        # 2. classify: read failure, known content, duplicate in this run, new content
        work: list[SourceFile] = []
        new_hashes: set[str] = set()
        for f in listing.files:
            if f.path in hashed:
                content_hash, error = hashed[f.path], ""
            elif f.path in results:
                content_hash, error = results[f.path]
            else:
                continue  # skipped by the stat cache
            if error:
                if (f.path, STAGE_READ, error) in logged_read_failures:
                    committer.counts["failed_read"] += 1
                else:
                    committer.add_read_failure(f.path, error)
            elif content_hash in known:
                summary.files_skipped_known += 1
                committer.add_known(f, content_hash, known[content_hash])
            elif content_hash in new_hashes:
                summary.files_duplicate += 1
                committer.add_alias(content_hash, f)
            else:
                new_hashes.add(content_hash)
                work.append(f)
        summary.files_new = len(work)
        listed = {f.path for f in listing.files}
        for path, (_, _, content_hash) in by_path.items():
            if path not in listed and listing.covers(path):
                committer.add_removed(path, content_hash)
                summary.files_removed += 1
        if summary.files_removed:
            logger.info("%d indexed file(s) are gone from the SOURCE folders/globs: marked removed",
                        summary.files_removed)

        # 3. the Ray Data job
        plan = None
        if work:
            _connect(options)
            import ray

            plan = plan_resources(options, ray.cluster_resources())
            summary.plan = asdict(plan)
            logger.info("%d new files; plan %s", len(work), plan)
            ray.data.DataContext.get_current().enable_progress_bars = options.progress
            ds = _pipeline(work, options, plan, faults, spec)
            t = time.monotonic()
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy",
                                             prefetch_batches=1):
                    first = not summary.first_result_seconds
                    if first:
                        summary.first_result_seconds = time.monotonic() - t
                    committer.add_output(batch)
                    if first:
                        summary.first_result_files = len(committer.done)
            except FaceNetPlatformError:
                raise
            except Exception as exc:  # Ray wraps what killed the job; say it in one line
                try:  # keep what is finished
                    committer.maybe_commit(force=True)
                except Exception:  # noqa: BLE001 - the job's error is the one to report
                    logger.exception("could not commit the finished files")
                text = job_error_text(exc)
                raise BuildJobError(
                    f"the Ray Data job failed ({text}); {committer.commits} commit(s) of this "
                    "run are kept: run the build again to resume") from exc
            summary.pipeline_seconds = time.monotonic() - t
            if committer.partial:
                logger.warning("%d file(s) came back incomplete and were not committed; the next "
                               "build processes them again", len(committer.partial))
        committer.maybe_commit(force=True)
        store.drop_staging(run_id)

        # 4. summary + manifest
        counts = committer.counts
        summary.faces = counts["faces"]
        summary.files_no_face = counts["no_face"]
        summary.files_with_faces = counts["with_faces"]
        by_stage = {k[len("failed_"):]: v for k, v in counts.items() if k.startswith("failed_")}
        summary.failures = sum(by_stage.values())
        summary.failures_by_stage = by_stage
        summary.commits = committer.commits
        summary.model_id = committer.model_id or model_id or spec.model_id
        all_commits = commits + committer.commit_records
        if all_commits:
            live = live_content(store.read(FILES, commits=all_commits))
            hashes = store.read(FACES, columns=["content_hash"], commits=all_commits)
            summary.total_faces = int(pc.sum(pc.is_in(
                hashes.column("content_hash"),
                value_set=pa.array(list(live.paths), pa.string()))).as_py() or 0)
            summary.total_files = sum(len(paths) for paths in live.paths.values())
        summary.seconds = time.monotonic() - start
        summary.images_per_second = summary.files_new / summary.seconds if summary.seconds else 0.0
        if work:
            from facenet_platform.core.backends import DEFAULT_BACKEND

            backend = options.backend or DEFAULT_BACKEND
        else:
            backend = section.get("backend")
        _update_manifest(layout, summary, all_commits, committer, listing_sources=list(sources),
                         backend=backend, spec=spec)
        return summary
    finally:
        store.release_lock(run_id)


def _shots(files: list[SourceFile]) -> dict[str, str]:
    """path -> shot id of RAW files and their renders (:mod:`facenet_platform.core.media.pairing`):
    same folder and stem, confirmed by capture time and camera when both files carry them
    (read from the first 512 KiB of the candidates only)."""
    from facenet_platform.core.media.pairing import ShotMeta, pair_shots, read_shot_meta

    from .stages import read_bytes

    def meta(path: str) -> ShotMeta:
        try:
            if is_uri(path):
                return read_shot_meta(read_bytes(path)[:512 * 1024])
            with open(path, "rb") as handle:
                return read_shot_meta(handle.read(512 * 1024))
        except Exception:  # noqa: BLE001 - unreadable: the stem rule decides
            return ShotMeta()

    try:
        return pair_shots([f.path for f in files], meta)
    except Exception:  # noqa: BLE001 - pairing is a bonus; never fail a build on it
        logger.warning("could not pair RAW files with their JPEGs", exc_info=True)
        return {}


def _logged_read_failures(store: CollectionStore, commits: list[dict]) -> set[tuple[str, str, str]]:
    failures = store.read(FAILURES, columns=["path", "content_hash", "stage", "reason"],
                          commits=commits)
    if failures.num_rows == 0:
        return set()
    cols = failures.to_pydict()
    return {(p, s, r) for p, h, s, r in zip(cols["path"], cols["content_hash"], cols["stage"],
                                            cols["reason"]) if h is None}


def _check_recorded_spec(section: dict[str, Any], spec: ModelSpec, index_uri: str) -> None:
    """ConfigError when the index recorded a model spec whose crop or input contract differs
    from the build's (same model id, other settings: the embeddings would not compare)."""
    if not section.get("model"):
        return  # an index from before the spec was recorded
    recorded = ModelSpec.from_metadata(section["model"], where=f"{index_uri} manifest")
    differ = spec.differences(recorded)
    if differ:
        detail = ", ".join(f"{k}: index {b!r}, now {a!r}" for k, (a, b) in differ.items())
        raise ConfigError(f"{index_uri} was built with other model settings ({detail}): build "
                          "with the same model, or into a new INDEX_DIR")


def _update_manifest(layout: IndexLayout, summary: BuildSummary, commits: list[dict],
                     committer: Committer, listing_sources: list, backend: str | None,
                     spec: ModelSpec) -> None:
    totals = Counter()
    for record in commits:
        totals.update(record.get("counts", {}))
    update_manifest(layout, "collection", {
        "schema_version": SCHEMA_VERSION,
        "model_id": summary.model_id or None,
        "embedding_size": committer.embedding_size,
        "model": spec.to_metadata(),
        "backend": backend,
        "version": commits[-1]["seq"] if commits else 0,
        "commits": len(commits),
        "faces": summary.total_faces,
        "files": summary.total_files,
        "failures": totals.get(FAILURES, 0),
        "face_key": ["content_hash", "face_index"],
        "tables": {"faces": "faces", "files": "files", "failures": "failures"},
        "last_run": {**summary.to_dict(), "sources": [os.fspath(s) for s in listing_sources]},
    })
