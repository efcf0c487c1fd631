"""CLI of the people: ``people update|list|show|photos|export-xmp|name|merge|move|reject|hide|
unhide|history|undo`` and the top-level ``search-face``.

    facenet-platform people update --index DIR [--recluster] [--min-quality Q] [--metrics] [--json]
    facenet-platform people list --index DIR [--named|--unnamed|--hidden|--all] [--min-faces N] [--json]
    facenet-platform people show PERSON --index DIR [--sheet PNG] [--json]
    facenet-platform people photos PERSON [--with PERSON...] --index DIR [--json | -o photos.parquet]
    facenet-platform people export-xmp --index DIR [--json]
    facenet-platform people name PERSON NAME --index DIR
    facenet-platform people merge PERSON PERSON... --index DIR
    facenet-platform people move FACE... --to PERSON|new --index DIR
    facenet-platform people reject FACE... --index DIR
    facenet-platform people hide|unhide PERSON --index DIR
    facenet-platform people history --index DIR [--limit N] [--json]
    facenet-platform people undo [EVENT] --index DIR
    facenet-platform search-face IMG --index DIR [--top-k K] [--threshold T] [--json]

PERSON is a person id (``p17``) or a person's name; FACE is a face id as printed by
``people show`` and ``search-face`` (``3f9a0c12d4e5b6a7-0``). Every decision prints the event it
wrote (``people history`` lists them, ``people undo`` takes one back).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facenet_platform.cli_args import non_negative_int, positive_int

PROG = "facenet-platform"


def _index_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", dest="index_dir", required=True, metavar="INDEX_DIR",
                   help="index directory (local path or s3://, gs:// URI)")


def _json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")




def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``people ...`` and ``search-face`` to the ``facenet-platform`` parser."""
    people = subparsers.add_parser(
        "people", help="people of an indexed collection: update, list, name, merge, fix",
        description="The people of an index: faces grouped into people with stable ids, names "
                    "and the decisions that correct them (every decision is an event that "
                    "`people undo` can take back).")
    sub = people.add_subparsers(dest="people_command", required=True, metavar="ACTION")

    p = sub.add_parser("update", help="give new faces to people (assign or cluster); keeps "
                                      "every decision",
                       description="Assign the collection's new faces to the nearest person's "
                                   "template, cluster the rest into new people, and turn "
                                   "enrolled gallery identities into named people. Names, "
                                   "merges, moves and rejections are never undone.")
    _index_option(p)
    p.add_argument("--recluster", action="store_true",
                   help="decide every face that is not pinned again (names, merges, moves and "
                        "rejections are kept as constraints)")
    p.add_argument("--min-quality", type=float, default=None,
                   help="quality floor in [0, 1]: faces under it never start or join a person "
                        "(default: the last run's, else the engine's default)")
    p.add_argument("--assign-distance", type=float, default=None,
                   help="squared L2 from a person's template within which a face joins it")
    p.add_argument("--cluster-distance", type=float, default=None,
                   help="squared L2 within which two new faces may be linked")
    p.add_argument("--min-faces", type=positive_int, default=None,
                   help="smallest new person")
    p.add_argument("--template", choices=("mean", "centroids"), default=None,
                   help="matching templates per person")
    p.add_argument("--metrics", action="store_true",
                   help="also print people sizes and, with --truth, clustering scores")
    p.add_argument("--truth", choices=("folder",), default=None,
                   help="score against labels: 'folder' = each photo's parent folder name "
                        "(pairwise and BCubed precision/recall, as `index cluster` reported)")
    _json_option(p)
    p.set_defaults(handler=cmd_update)

    p = sub.add_parser("list", help="list people (most faces first)")
    _index_option(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--named", dest="which", action="store_const", const="named",
                   help="only named people")
    g.add_argument("--unnamed", dest="which", action="store_const", const="unnamed",
                   help="only unnamed people")
    g.add_argument("--hidden", dest="which", action="store_const", const="hidden",
                   help="only hidden people")
    g.add_argument("--all", dest="which", action="store_const", const="all",
                   help="everyone, hidden people included")
    p.set_defaults(which="visible")
    p.add_argument("--min-faces", type=non_negative_int, default=0,
                   help="only people with at least N faces")
    _json_option(p)
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("show", help="one person: faces (best first), photos, cover")
    p.add_argument("person", metavar="PERSON", help="person id (p17) or name")
    _index_option(p)
    p.add_argument("--sheet", type=Path, default=None, metavar="PNG",
                   help="write a contact sheet of the person's best faces")
    p.add_argument("--max-thumbnails", type=positive_int, default=36,
                   help="faces on the contact sheet")
    p.add_argument("--limit", type=non_negative_int, default=20,
                   help="faces listed in the text output (0: all)")
    _json_option(p)
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("photos", help="photos showing a person (and others: --with)")
    p.add_argument("person", metavar="PERSON", help="person id (p17) or name")
    p.add_argument("--with", dest="others", nargs="+", default=[], metavar="PERSON",
                   help="only photos that also show these people")
    _index_option(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_true", help="print JSON")
    g.add_argument("-o", "--output", default=None, metavar="PHOTOS_PARQUET",
                   help="write the photos to a Parquet file")
    p.set_defaults(handler=cmd_photos)

    p = sub.add_parser("export-xmp", help="write named faces as .xmp sidecars next to the "
                                          "photos (the photos are never rewritten)")
    _index_option(p)
    _json_option(p)
    p.set_defaults(handler=cmd_export_xmp)

    p = sub.add_parser("name", help="name a person")
    p.add_argument("person", metavar="PERSON", help="person id (p17) or current name")
    p.add_argument("name", metavar="NAME", help="the new name")
    _index_option(p)
    _json_option(p)
    p.set_defaults(handler=cmd_name)

    p = sub.add_parser("merge", help="merge people into the first one")
    p.add_argument("people", nargs="+", metavar="PERSON",
                   help="the person to keep, then the ones merged into it")
    _index_option(p)
    _json_option(p)
    p.set_defaults(handler=cmd_merge)

    p = sub.add_parser("move", help="move faces to a person (or a new one); they stay there")
    p.add_argument("faces", nargs="+", metavar="FACE", help="face ids")
    p.add_argument("--to", required=True, metavar="PERSON|new",
                   help="person id or name, or 'new' for a new person")
    _index_option(p)
    _json_option(p)
    p.set_defaults(handler=cmd_move)

    p = sub.add_parser("reject", help="'not this person': faces leave their person for good")
    p.add_argument("faces", nargs="+", metavar="FACE", help="face ids")
    _index_option(p)
    _json_option(p)
    p.set_defaults(handler=cmd_reject)

    for action, hidden in (("hide", True), ("unhide", False)):
        p = sub.add_parser(action, help=("hide a person (never answered by identify)" if hidden
                                         else "show a hidden person again"))
        p.add_argument("person", metavar="PERSON", help="person id (p17) or name")
        _index_option(p)
        _json_option(p)
        p.set_defaults(handler=cmd_hide, hidden=hidden)

    p = sub.add_parser("history", help="the decisions and updates, oldest first")
    _index_option(p)
    p.add_argument("--limit", type=non_negative_int, default=None, help="only the last N")
    _json_option(p)
    p.set_defaults(handler=cmd_history)

    p = sub.add_parser("undo", help="take back the last decision (or event EVENT)")
    p.add_argument("event", nargs="?", type=int, default=None, metavar="EVENT",
                   help="event id from `people history` (default: the last decision not undone)")
    _index_option(p)
    _json_option(p)
    p.set_defaults(handler=cmd_undo)

    p = subparsers.add_parser("search-face",
                              help="the collection's photos that contain the face in IMG")
    p.add_argument("image", type=Path, metavar="IMG", help="a photo of the face to look for")
    _index_option(p)
    p.add_argument("--top-k", type=positive_int, default=10, help="photos at most (default 10)")
    p.add_argument("--threshold", type=float, default=None,
                   help="squared L2 distance at or under which a face counts (default: the "
                        "people's assign distance)")
    p.add_argument("--all-faces", action="store_true",
                   help="search every face of IMG (default: its central face)")
    _json_option(p)
    from facenet_platform.core.commands import add_pipeline_options

    add_pipeline_options(p)
    p.set_defaults(handler=cmd_search_face, needs_model=True)


# ------------------------------------------------------------------------------- handlers


def _print_event(args, event, nothing: str) -> int:
    if args.json:
        print(json.dumps(event.to_dict() if event is not None else None, indent=2))
    elif event is None:
        print(nothing)
    else:
        print(f"event {event.id}: {event.summary}")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from .people import update_people

    options = {k: v for k, v in {"assign_distance": args.assign_distance,
                                 "cluster_distance": args.cluster_distance,
                                 "min_faces": args.min_faces,
                                 "template": args.template}.items() if v is not None}
    summary = update_people(args.index_dir, recluster=args.recluster,
                            min_quality=args.min_quality, options=options, truth=args.truth)
    if not args.metrics and args.truth is None:
        summary.metrics = None
    elif summary.metrics is None:
        summary.metrics = {}
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary.text())
    return 0


def _load(index_dir):
    from .people_store import PeopleStore

    store = PeopleStore(index_dir)
    state = store.load()
    if state.version == 0:
        from .people_store import PeopleError

        raise PeopleError(f"{store.layout.root} has no people yet: run `{PROG} people update "
                          f"--index {store.layout.root}` (index build runs it)")
    return store, state


def cmd_list(args: argparse.Namespace) -> int:
    from .people_read import list_people

    store, state = _load(args.index_dir)
    people = list_people(state, args.which, args.min_faces)
    if args.json:
        print(json.dumps({"version": state.version, "people": [p.to_dict() for p in people]},
                         indent=2))
        return 0
    if not people:
        print(f"no {'' if args.which == 'visible' else args.which + ' '}people"
              + (f" with at least {args.min_faces} faces" if args.min_faces else ""))
        return 0
    width = max(len(p.name or "(unnamed)") for p in people)
    print(f"{'id':>7}  {'name':<{width}}  {'faces':>6}  {'photos':>6}  cover")
    for p in people:
        flags = "  (hidden)" if p.hidden else ""
        print(f"{p.id:>7}  {p.name or '(unnamed)':<{width}}  {p.n_faces:>6}  {p.n_photos:>6}  "
              f"{p.cover or '-'}{flags}")
    counts = state.counts()
    print(f"{len(people)} shown of {counts['people']} people ({counts['named']} named, "
          f"{counts['hidden']} hidden); people v{state.version}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .people_read import face_rows, write_contact_sheet

    store, state = _load(args.index_dir)
    person = state.person(args.person)
    rows = face_rows(store.layout, state, person)
    shown = None
    if args.sheet is not None:
        shown = write_contact_sheet(store.layout, state, person, args.sheet,
                                    args.max_thumbnails, rows=rows)
    rejected = sorted(f for f, p in state.rejections if p == person.id)
    if args.json:
        print(json.dumps({**person.to_dict(), "faces": rows, "rejected_faces": rejected,
                          "sheet": str(args.sheet) if args.sheet else None,
                          "version": state.version}, indent=2))
        return 0
    print(f"{person.label}{'  (hidden)' if person.hidden else ''}: {person.n_faces} faces in "
          f"{person.n_photos} photos; cover {person.cover or '-'}"
          + (f"; enrolled as {', '.join(person.enrolled_as)}" if person.enrolled_as else "")
          + (f"; {len(rejected)} faces rejected" if rejected else ""))
    listed = rows if not args.limit else rows[:args.limit]
    for row in listed:
        print(f"  {row['face_id']}  quality {row['quality']:.2f}"
              f"{'  pinned' if row['pinned'] else '        '}  {row['path']}")
    if len(listed) < len(rows):
        print(f"  ... {len(rows) - len(listed)} more (--limit 0 lists all)")
    if shown is not None:
        print(f"contact sheet: {args.sheet} ({shown} faces)")
    return 0


def cmd_photos(args: argparse.Namespace) -> int:
    from .people_read import person_photos, write_photos_parquet

    store, state = _load(args.index_dir)
    people = [state.person(p) for p in [args.person, *args.others]]
    ids = [p.id for p in people]
    if len(set(ids)) != len(ids):
        from .people_store import PeopleError

        raise PeopleError("a person is named twice")
    photos = person_photos(store.layout, state, people)
    if args.output:
        write_photos_parquet(photos, args.output)
        print(f"{len(photos)} photos of {' with '.join(p.label for p in people)} -> {args.output}")
    elif args.json:
        print(json.dumps({"people": ids, "photos": photos, "version": state.version}, indent=2))
    else:
        for photo in photos:
            faces = " ".join(f for pid in ids for f in photo["faces"][pid])
            print(f"{photo['path']}  ({faces})")
        print(f"{len(photos)} photos of {' with '.join(p.label for p in people)}")
    return 0


def cmd_export_xmp(args: argparse.Namespace) -> int:
    from .people_xmp import export_xmp

    summary = export_xmp(args.index_dir)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.text())
    return 0


def cmd_name(args: argparse.Namespace) -> int:
    from .people import name_person

    return _print_event(args, name_person(args.index_dir, args.person, args.name),
                        f"{args.person} is already called {args.name!r}; nothing changed")


def cmd_merge(args: argparse.Namespace) -> int:
    from .people import merge_people

    return _print_event(args, merge_people(args.index_dir, args.people), "nothing changed")


def cmd_move(args: argparse.Namespace) -> int:
    from .people import move_faces

    return _print_event(args, move_faces(args.index_dir, args.faces, args.to),
                        f"the faces are already pinned to {args.to}; nothing changed")


def cmd_reject(args: argparse.Namespace) -> int:
    from .people import reject_faces

    return _print_event(args, reject_faces(args.index_dir, args.faces), "nothing changed")


def cmd_hide(args: argparse.Namespace) -> int:
    from .people import set_hidden

    return _print_event(args, set_hidden(args.index_dir, args.person, args.hidden),
                        f"{args.person} is already {'hidden' if args.hidden else 'shown'}; "
                        f"nothing changed")


def cmd_history(args: argparse.Namespace) -> int:
    from .people_store import PeopleStore

    store = PeopleStore(args.index_dir)
    events = store.history(args.limit)
    undone = store.undone()
    if args.json:
        print(json.dumps([{**e.to_dict(), "undone_by": undone.get(e.id)} for e in events],
                         indent=2))
        return 0
    if not events:
        print("no events yet")
        return 0
    for e in events:
        note = f"  [undone by {undone[e.id]}]" if e.id in undone else ""
        print(f"{e.id:>5}  {e.time}  {e.kind:<7} {e.summary}{note}")
    return 0


def cmd_undo(args: argparse.Namespace) -> int:
    from .people import undo

    return _print_event(args, undo(args.index_dir, args.event), "nothing changed")


def cmd_search_face(args: argparse.Namespace) -> int:
    from facenet_platform.core.errors import NoFaceFoundError
    from facenet_platform.core.images import read_image

    from .people_read import FaceSearcher

    image = read_image(args.image)
    searcher = FaceSearcher(args.index_dir)  # fails before the model loads when there is none
    from .gallery_commands import build_pipeline

    pipeline = build_pipeline(args)
    if args.all_faces:
        faces = pipeline([image])[0]
        if not faces:
            raise NoFaceFoundError(f"{args.image}: no face found")
        import numpy as np

        embeddings = np.stack([f.embedding for f in faces])
    else:
        try:
            embeddings, faces = pipeline.central_faces([image])
        except NoFaceFoundError:
            raise NoFaceFoundError(f"{args.image}: no face found") from None
    results = searcher.search(embeddings, args.top_k, args.threshold)
    if args.json:
        print(json.dumps({"image": str(args.image), "version": searcher.state.version,
                          "faces": [{"face": f.to_dict(), "photos": [h.to_dict() for h in hits]}
                                    for f, hits in zip(faces, results)]}, indent=2))
        return 0
    for face, hits in zip(faces, results):
        box = ", ".join(f"{v:.0f}" for v in face.box)
        print(f"{args.image}: face {face.index} box [{box}]: {len(hits)} photo"
              f"{'s' if len(hits) != 1 else ''}")
        for hit in hits:
            who = hit.name or hit.person or "nobody"
            print(f"  {hit.distance:.3f}  {hit.face_id}  {who:<16}  {hit.path}")
    return 0
