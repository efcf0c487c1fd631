"""CLI of the gallery side: ``index enroll|add-identity|remove-identity|cluster`` and ``identify``.

    facenet-platform index enroll GALLERY_DIR --index INDEX_DIR [--index-type auto|flat|hnsw|...]
    facenet-platform index add-identity NAME IMG... --index INDEX_DIR
    facenet-platform index remove-identity NAME --index INDEX_DIR
    facenet-platform index cluster --index INDEX_DIR [--max-distance D] [--min-faces N] [--recluster]
    facenet-platform identify IMG... --index INDEX_DIR [--top-k K] [--threshold T] [--json]

Files that cannot be read, or hold no face, are reported on stderr (one line each) and skipped;
the command goes on with the others and exits 1 at the end so scripts notice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

PROG = "facenet-platform"


def register(index_sub: argparse._SubParsersAction, top_subparsers: argparse._SubParsersAction) -> None:
    """Add ``enroll``, ``add-identity``, ``remove-identity``, ``cluster`` to the ``index`` group
    and ``identify`` to the top level."""
    from . import people_cluster_defaults as cl
    from .faiss_index import DEFAULT_AUTO_THRESHOLD, INDEX_TYPES

    index_types = ["auto", *INDEX_TYPES]

    p = index_sub.add_parser("enroll", help="enroll a gallery folder (one sub-folder per person)")
    p.add_argument("gallery_dir", type=Path, help="folder with NAME/photo.jpg for each person")
    _index_option(p)
    p.add_argument("--index-type", choices=index_types, default=None,
                   help="FAISS index type (default auto: flat up to --auto-threshold faces, "
                        "approximate above)")
    p.add_argument("--auto-threshold", type=int, default=None,
                   help=f"faces above which auto picks an approximate index "
                        f"(default {DEFAULT_AUTO_THRESHOLD})")
    p.add_argument("--batch-size", type=int, default=16, help="photos per detection batch")
    _pipeline_options(p)
    p.set_defaults(handler=cmd_enroll, needs_model=True)

    p = index_sub.add_parser("add-identity", help="enroll photos of one person")
    p.add_argument("name", help="the person's name")
    p.add_argument("images", nargs="+", type=Path, metavar="IMG", help="photos of the person")
    _index_option(p)
    p.add_argument("--batch-size", type=int, default=16, help="photos per detection batch")
    _pipeline_options(p)
    p.set_defaults(handler=cmd_add_identity, needs_model=True)

    p = index_sub.add_parser("remove-identity", help="remove a person from the gallery")
    p.add_argument("name", help="the person's name")
    _index_option(p)
    p.set_defaults(handler=cmd_remove_identity)

    p = index_sub.add_parser("cluster", help="(deprecated: use `people update`) group the "
                                             "collection's faces into clusters")
    _index_option(p)
    p.add_argument("--max-distance", type=float, default=None,
                   help=f"squared L2 distance within which two faces may be linked "
                        f"(default {cl.DEFAULT_MAX_DISTANCE})")
    p.add_argument("--min-faces", type=int, default=None,
                   help=f"smallest cluster kept; smaller groups stay unassigned "
                        f"(default {cl.DEFAULT_MIN_FACES})")
    p.add_argument("--algorithm", choices=sorted(cl.ALGORITHMS), default=None,
                   help=f"clustering on the k-NN graph (default {cl.DEFAULT_ALGORITHM})")
    p.add_argument("--neighbors", type=int, default=None,
                   help=f"k of the k-NN graph (default {cl.DEFAULT_NEIGHBORS})")
    p.add_argument("--recluster", action="store_true",
                   help="cluster everything again instead of adding new faces to the clusters")
    p.add_argument("--max-thumbnails", type=int, default=cl.DEFAULT_MAX_THUMBNAILS,
                   help="faces per contact sheet")
    p.add_argument("--no-sheets", action="store_true", help="do not write contact sheets")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=cmd_cluster)

    p = top_subparsers.add_parser("identify", help="who is in these photos? (needs an enrolled gallery)")
    p.add_argument("images", nargs="+", type=Path, metavar="IMG", help="photos")
    _index_option(p)
    p.add_argument("--top-k", type=int, default=5, help="identities listed per face (default 5)")
    p.add_argument("--threshold", type=float, default=None,
                   help="squared L2 distance at or under which a face is the nearest identity "
                        "(default: the gallery's identification threshold, stricter than the "
                        "1:1 verification one)")
    p.add_argument("--batch-size", type=int, default=16, help="photos per detection batch")
    p.add_argument("--json", action="store_true", help="print one JSON list, an object per image")
    _pipeline_options(p)
    p.set_defaults(handler=cmd_identify, needs_model=True)


def _index_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", dest="index_dir", required=True, metavar="INDEX_DIR",
                   help="index directory (local path or s3://, gs:// URI)")


def _pipeline_options(p: argparse.ArgumentParser) -> None:
    from facenet_platform.core.commands import add_pipeline_options

    add_pipeline_options(p)


def build_pipeline(args: argparse.Namespace):
    """The FacePipeline of the common pipeline options (tests replace this)."""
    from facenet_platform.core.commands import build_pipeline as core_build_pipeline

    return core_build_pipeline(args)


def _report(message: str) -> None:
    print(f"{PROG}: skipped: {message}", file=sys.stderr)


def _read_photos(paths: list[Path]):
    """``[(path, image, sha256)]`` of the readable photos; unreadable ones reported."""
    from facenet_platform.core.errors import ImageError
    from facenet_platform.core.images import decode_image, read_image_bytes

    ok, failures = [], 0
    for path in paths:
        try:
            data = read_image_bytes(path)
            image = decode_image(data, source=str(path))
        except ImageError as exc:
            _report(str(exc))
            failures += 1
            continue
        ok.append((path, image, hashlib.sha256(data).hexdigest()))
    return ok, failures


def _embed_photos(pipeline, items, batch_size: int):
    """Central face embeddings of ``(path, image, sha)`` items; faceless photos reported.

    Returns ``([(path, sha, embedding)], failures)``.
    """
    out, failures = [], 0
    for start in range(0, len(items), max(1, batch_size)):
        batch = items[start:start + batch_size]
        embeddings, faces = pipeline.central_faces([image for _, image, _ in batch],
                                                   fallback_center=True)
        for (path, _, sha), emb, face in zip(batch, embeddings, faces):
            if face is None:
                _report(f"{path}: no face found")
                failures += 1
            else:
                out.append((path, sha, emb))
    return out, failures


def _open_gallery(args, pipeline, **settings):
    from .gallery import Gallery
    from .identify import check_compatible

    gallery = Gallery.open(args.index_dir, spec=pipeline.spec, flip=pipeline.embedder.flip,
                           embedding_size=pipeline.embedder.embedding_size,
                           threshold=pipeline.threshold,
                           **{k: v for k, v in settings.items() if v is not None})
    check_compatible(pipeline, gallery)
    if gallery.spec is None:  # a gallery from before the model spec was recorded
        gallery.spec, gallery.flip = pipeline.spec, pipeline.embedder.flip
    return gallery


def _enroll(gallery, pipeline, people: dict[str, list[Path]], batch_size: int):
    """Add every readable photo with a face; returns (added, already, failures)."""
    added, already, failures = {}, 0, 0
    for name, paths in people.items():
        fresh = []
        items, bad = _read_photos(paths)
        failures += bad
        for item in items:
            if gallery.has_photo(name, item[2]):
                already += 1
            else:
                fresh.append(item)
        embedded, bad = _embed_photos(pipeline, fresh, batch_size)
        failures += bad
        if embedded:
            import numpy as np

            gallery.add(name, np.stack([e for _, _, e in embedded]),
                        [str(p.resolve()) for p, _, _ in embedded],
                        content_hashes=[s for _, s, _ in embedded])
            added[name] = len(embedded)
    return added, already, failures


def _gallery_people(gallery_dir: Path) -> tuple[dict[str, list[Path]], int]:
    """``{name: photos}`` of a gallery folder; stray files reported. Returns (people, failures)."""
    from facenet_platform.core.errors import ImageError
    from facenet_platform.core.images import is_image_path

    if not gallery_dir.is_dir():
        raise ImageError(f"{gallery_dir}: not a directory (expected GALLERY_DIR/NAME/photo.jpg)")
    people, failures = {}, 0
    for entry in sorted(gallery_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            photos = sorted(p for p in entry.rglob("*") if p.is_file() and not p.name.startswith("."))
            images = [p for p in photos if is_image_path(p)]
            for p in photos:
                if not is_image_path(p):
                    _report(f"{p}: not an image file (extension {p.suffix or 'none'})")
                    failures += 1
            if images:
                people[entry.name] = images
            else:
                _report(f"{entry}: no photos of {entry.name}")
                failures += 1
        else:
            _report(f"{entry}: not in a person's folder (expected {gallery_dir}/NAME/{entry.name})")
            failures += 1
    if not people:
        raise ImageError(f"{gallery_dir}: no person folders with photos "
                         f"(expected {gallery_dir}/NAME/photo.jpg)")
    return people, failures


def cmd_enroll(args: argparse.Namespace) -> int:
    people, failures = _gallery_people(args.gallery_dir)
    pipeline = build_pipeline(args)
    gallery = _open_gallery(args, pipeline, index_type=args.index_type,
                            auto_threshold=args.auto_threshold)
    added, already, bad = _enroll(gallery, pipeline, people, args.batch_size)
    failures += bad
    if not added and gallery.version == 0:
        from facenet_platform.core.errors import NoFaceFoundError

        raise NoFaceFoundError(f"{args.gallery_dir}: no photo with a face could be enrolled; "
                               f"nothing written")
    if added or gallery.dirty:
        gallery.save()
    n_added = sum(added.values())
    print(f"enrolled {n_added} faces of {len(added)} people"
          + (f" ({already} photos already enrolled)" if already else "")
          + f"; gallery: {len(gallery)} faces of {len(gallery.identities())} people, "
            f"{gallery.index_type or 'no'} index, version {gallery.version} -> {args.index_dir}"
          + (f"; {failures} files skipped" if failures else ""))
    return 1 if failures else 0


def cmd_add_identity(args: argparse.Namespace) -> int:
    from facenet_platform.core.errors import ImageError

    from .gallery import check_name

    check_name(args.name)
    items, failures = _read_photos(args.images)
    if not items:
        raise ImageError(f"no readable photo of {args.name} among the {len(args.images)} given")
    pipeline = build_pipeline(args)
    gallery = _open_gallery(args, pipeline)
    added, already, bad = _enroll(gallery, pipeline, {args.name: [p for p, _, _ in items]},
                                  args.batch_size)
    failures += bad
    if not added and not already:
        raise ImageError(f"no face found in any photo of {args.name}; nothing enrolled")
    if added:
        gallery.save()
    print(f"{args.name}: {gallery.identities().get(args.name, 0)} faces "
          f"(+{added.get(args.name, 0)}"
          + (f", {already} already enrolled" if already else "") + f"); gallery version "
          f"{gallery.version}" + (f"; {failures} files skipped" if failures else ""))
    return 1 if failures else 0


def cmd_remove_identity(args: argparse.Namespace) -> int:
    from .gallery import Gallery

    gallery = Gallery.load(args.index_dir)
    removed = gallery.remove(args.name)
    gallery.save()
    print(f"removed {args.name} ({removed} faces); gallery: {len(gallery)} faces of "
          f"{len(gallery.identities())} people, version {gallery.version}")
    return 0


def cmd_identify(args: argparse.Namespace) -> int:
    from facenet_platform.core.errors import ConfigError, ImageError
    from facenet_platform.core.images import read_image

    from .identify import identify_faces
    from .people_gallery import PeopleGallery

    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    gallery = PeopleGallery.load(args.index_dir)
    images, errors = [], []
    for path in args.images:
        try:
            images.append((path, read_image(path)))
        except ImageError as exc:
            errors.append(str(exc))
    if not images:
        if len(errors) == 1:
            raise ImageError(errors[0])
        for message in errors:
            print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    pipeline = build_pipeline(args)
    results = []
    for start in range(0, len(images), max(1, args.batch_size)):
        batch = images[start:start + args.batch_size]
        found = identify_faces(pipeline, gallery, [im for _, im in batch], args.top_k,
                               args.threshold)
        results.extend((path, faces) for (path, _), faces in zip(batch, found))
    if args.json:
        print(json.dumps([{"path": str(path), "faces": [f.to_dict() for f in faces]}
                          for path, faces in results], indent=2))
    else:
        threshold = gallery.identify_threshold if args.threshold is None else args.threshold
        for path, faces in results:
            print(f"{path}: {len(faces)} face{'s' if len(faces) != 1 else ''}")
            for i, face in enumerate(faces):
                box = ", ".join(f"{v:.0f}" for v in face.box)
                nearest = (f"{_who(face.matches[0])} {face.matches[0].distance:.3f}"
                           if face.matches else "no people")
                others = "  ".join(f"{_who(m)} {m.distance:.3f}" for m in face.matches[1:])
                why = "" if face.reason in (None, "match", "too_far") else f" ({face.reason})"
                print(f"  face {i}  box [{box}]  score {face.score:.3f}  ->  {face.decision}"
                      f"{why}  (nearest {nearest}; threshold {threshold:g})"
                      + (f"  | next: {others}" if others else ""))
    for message in errors:
        print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1 if errors else 0


def _who(match) -> str:
    """A match as printed: the name, or ``p17 (unnamed)``."""
    return match.name or f"{match.person} (unnamed)"


def cmd_cluster(args: argparse.Namespace) -> int:
    from .people_clusters import cluster_index

    summary = cluster_index(
        args.index_dir, max_distance=args.max_distance, min_faces=args.min_faces,
        algorithm=args.algorithm, neighbors=args.neighbors, recluster=args.recluster,
        sheets=not args.no_sheets, max_thumbnails=args.max_thumbnails,
        progress=sys.stderr.isatty(),
    )
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary.text())
    print(f"{PROG}: note: `index cluster` is deprecated: `people update` gives faces to people "
          f"that keep their names and decisions (`people update --metrics`, `people show "
          f"PERSON --sheet PNG`)", file=sys.stderr)
    return 0
