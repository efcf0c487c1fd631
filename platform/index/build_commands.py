"""CLI of the collection side: ``index build`` and ``index search``."""

from __future__ import annotations

import argparse
import json
import logging

from facenet_platform.cli_args import non_negative_float, positive_int

logger = logging.getLogger(__name__)




def _add_ray_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray")
    g.add_argument("--address", default=None,
                   help="Ray cluster to run on (host:port, ray://host:port, auto); default "
                        "$RAY_ADDRESS, else a local Ray started for this command")
    g.add_argument("--num-cpus", type=positive_int, default=None,
                   help="CPUs of the local Ray this command starts (default: all)")
    g.add_argument("--no-progress", action="store_true", help="no Ray Data progress bars")


def register(index_sub: argparse._SubParsersAction) -> None:
    """Add ``build`` and ``search`` to the ``facenet-platform index`` group."""
    p = index_sub.add_parser(
        "build", help="index every face of a photo collection (incremental, Ray Data)",
        description="Detect, align and embed every face of the images under SOURCE into "
                    "Parquet tables in INDEX_DIR. Re-running processes only new content; an "
                    "interrupted build resumes where its last commit ended. Files that fail "
                    "are recorded in INDEX_DIR/failures and never fail the build.")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folder (recursive), glob ('photos/**/*.jpg'), image file, or list file "
                        "(@list.txt, or a .txt/.lst file: one path per line); local or a "
                        "pyarrow URI (s3://, gs://, ...)")
    p.add_argument("-o", "--out", "--index", dest="out", required=True, metavar="INDEX_DIR",
                   help="index directory (local path or URI); created if missing")
    _add_ray_options(p)
    g = p.add_argument_group("pools and batches (default: planned from the cluster's resources)")
    g.add_argument("--detect-actors", type=positive_int, default=None,
                   help="detection+alignment actors")
    g.add_argument("--embed-actors", type=positive_int, default=None, help="embedding actors")
    g.add_argument("--detect-cpus", type=non_negative_float, default=None,
                   help="CPUs per detection actor")
    g.add_argument("--embed-cpus", type=non_negative_float, default=None,
                   help="CPUs per embedding actor")
    g.add_argument("--embed-gpus", type=non_negative_float, default=None,
                   help="GPUs per embedding actor (default 1 when the cluster has GPUs, else 0)")
    g.add_argument("--decode-cpus", type=non_negative_float, default=None,
                   help="CPUs per read+decode task (default 0.25)")
    g.add_argument("--read-batch-size", type=positive_int, default=8, help="files per decode batch")
    g.add_argument("--detect-batch-size", type=positive_int, default=16,
                   help="images per detection batch")
    g.add_argument("--embed-batch-size", type=positive_int, default=None,
                   help="face crops per embedding batch (default 64 on CPU, 256 on GPU)")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=None,
                   help="a trained model: checkpoint folder, .keras, SavedModel folder or .tflite "
                        "(default: pretrained 20180408-102900)")
    g.add_argument("--backend", default=None,
                   help="embedding backend: keras-fp32 (default), keras-bf16, onnx-fp32, onnx-int8")
    g.add_argument("--min-face-size", type=positive_int, default=20,
                   help="smallest face to detect, pixels")
    g.add_argument("--max-pixels", type=positive_int, default=None,
                   help="refuse images larger than this many pixels (default $FACENET_MAX_PIXELS "
                        "or 40,000,000)")
    g = p.add_argument_group("photos, videos and metadata")
    g.add_argument("--video-interval", type=float, default=2.0, metavar="SECONDS",
                   help="sample a video/animated image every this many seconds (plus scene "
                        "changes)")
    g.add_argument("--video-max-frames", type=positive_int, default=24,
                   help="frames sampled per video/animated image at most")
    g.add_argument("--no-rotation-retry", action="store_true",
                   help="do not retry faceless photos without EXIF orientation turned sideways")
    g.add_argument("--rotation-retry-below", type=float, default=0.99, metavar="SCORE",
                   help="also retry orientation-less photos whose best face scores below this "
                        "(default 0.99; 0: only photos without a face)")
    g.add_argument("--no-xmp", action="store_true",
                   help="do not read XMP face regions (in-file and .xmp sidecars)")
    g = p.add_argument_group("incremental build")
    g.add_argument("--commit-every-files", type=positive_int, default=1000,
                   help="commit after this many finished files (what an interrupted build redoes)")
    g.add_argument("--commit-every-seconds", type=float, default=60.0,
                   help="... or after this many seconds")
    g.add_argument("--max-rows-per-file", type=positive_int, default=20_000,
                   help="faces per Parquet file at most")
    g.add_argument("--rehash", action="store_true",
                   help="read and hash every file, even those whose path, size and mtime are known")
    g.add_argument("--retry-failed", action="store_true",
                   help="process again the files whose content failed in an earlier build")
    p.add_argument("--no-people", action="store_true",
                   help="do not run `people update` after the build (give the new faces to "
                        "people later)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_build)

    p = index_sub.add_parser(
        "search", help="bulk search of indexed faces against the gallery (Ray Data)",
        description="Search every face of a faces table (default: the collection of INDEX_DIR) "
                    "against the gallery of INDEX_DIR; writes the top-k matches to Parquet.")
    p.add_argument("--index", required=True, metavar="INDEX_DIR", help="index with a gallery")
    p.add_argument("--faces", default=None, metavar="FACES",
                   help="faces table: a .parquet file or folder (default: INDEX_DIR's collection)")
    p.add_argument("--top-k", type=positive_int, default=5, help="matches per face")
    p.add_argument("--threshold", type=float, default=None,
                   help="squared L2 distance at or under which a match counts (is_match; "
                        "default: the gallery's identification threshold)")
    p.add_argument("-o", "--output", default=None, metavar="MATCHES",
                   help="output .parquet file (default INDEX_DIR/matches/matches-<time>.parquet)")
    p.add_argument("--actors", type=positive_int, default=None,
                   help="searcher actors (default: planned from the cluster)")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="faces per search batch")
    _add_ray_options(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_search)


def cmd_build(args: argparse.Namespace) -> int:
    from .build import BuildOptions, build_index

    options = BuildOptions(
        address=args.address, num_cpus=args.num_cpus,
        detect_actors=args.detect_actors, embed_actors=args.embed_actors,
        detect_cpus=args.detect_cpus, embed_cpus=args.embed_cpus, embed_gpus=args.embed_gpus,
        decode_cpus=args.decode_cpus, read_batch_size=args.read_batch_size,
        detect_batch_size=args.detect_batch_size, embed_batch_size=args.embed_batch_size,
        model=args.model, backend=args.backend, min_face_size=args.min_face_size,
        max_pixels=args.max_pixels,
        commit_every_files=args.commit_every_files,
        commit_every_seconds=args.commit_every_seconds,
        max_rows_per_file=args.max_rows_per_file, rehash=args.rehash,
        retry_failed=args.retry_failed, progress=not args.no_progress,
        log_to_driver=args.verbose > 0,
        video_interval_s=args.video_interval, video_max_frames=args.video_max_frames,
        rotation_retry=not args.no_rotation_retry,
        rotation_retry_below=args.rotation_retry_below, read_xmp=not args.no_xmp,
    )
    summary = build_index(args.sources, args.out, options=options)
    people, people_error = None, None
    if not args.no_people and summary.total_faces:
        from .locking import IndexBusyError
        from .people import update_people

        try:
            people = update_people(args.out)
        except IndexBusyError as exc:  # the build is done; the people can be updated later
            people_error = f"not updated ({exc}); run `facenet-platform people update --index " \
                           f"{args.out}` later"
    if args.json:
        out = summary.to_dict()
        out["people"] = people.to_dict() if people is not None else people_error
        print(json.dumps(out, indent=2))
    else:
        print(summary.format())
        if people is not None:
            print(f"people:   {people.line()}")
        elif people_error:
            print(f"people:   {people_error}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .search import SearchOptions, search_index

    options = SearchOptions(top_k=args.top_k, threshold=args.threshold, actors=args.actors,
                            batch_size=args.batch_size,
                            address=args.address, num_cpus=args.num_cpus,
                            progress=not args.no_progress, log_to_driver=args.verbose > 0)
    summary = search_index(args.index, faces=args.faces, output=args.output, options=options)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary.format())
    return 0
