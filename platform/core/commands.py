"""CLI commands of the shared core: ``weights``, ``verify``, ``embed`` and ``eval lfw``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the core commands to the ``facenet-platform`` parser."""
    p = subparsers.add_parser("weights", help="show (and convert if needed) the pretrained weights")
    p.add_argument("--convert", action="store_true", help="convert again even if current")
    p.add_argument("--no-convert", action="store_true", help="only report, never convert")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_weights, needs_model=True)

    p = subparsers.add_parser("verify", help="are the main faces of two photos the same person?")
    p.add_argument("image1", type=Path)
    p.add_argument("image2", type=Path)
    p.add_argument("--threshold", type=float, default=None,
                   help="same-person distance threshold (default: the model's LFW-selected one)")
    add_pipeline_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=cmd_verify, needs_model=True)

    p = subparsers.add_parser("embed", help="embed every face of images into a Parquet table")
    p.add_argument("paths", nargs="+", type=Path, help="image files or directories (recursive)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .parquet file")
    p.add_argument("--batch-size", type=int, default=16, help="images per detection batch")
    add_pipeline_options(p)
    p.set_defaults(handler=cmd_embed, needs_model=True)

    evaluate = subparsers.add_parser("eval", help="evaluate on a benchmark")
    eval_sub = evaluate.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    p = eval_sub.add_parser("lfw", help="LFW 10-fold verification protocol")
    p.add_argument("--lfw-dir", type=Path, default=None,
                   help="LFW root (default: $LFW_DIR or ../shared/datasets/lfw)")
    p.add_argument("--pairs", type=Path, default=None, help="pairs file (default: LFW_DIR/pairs.txt)")
    p.add_argument("--flip", nargs="?", const="concat", default="none",
                   choices=["none", "mean", "concat"],
                   help="also embed the mirror image: concat (default when given) or mean")
    p.add_argument("--subtract-mean", action="store_true",
                   help="davidsandberg's --subtract_mean: centre each fold on the mean embedding "
                        "of its nine training folds (on top of the model's own centring)")
    p.add_argument("--limit-folds", type=int, default=None, help="use only the first N folds")
    p.add_argument("--far", type=float, default=1e-3, help="FAR target of VAL@FAR")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--roc", type=Path, default=None, help="write the ROC curve to this PNG")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_pipeline_options(p)
    p.set_defaults(handler=cmd_eval_lfw, needs_model=True)


def add_pipeline_options(p: argparse.ArgumentParser) -> None:
    """Add the options every command that runs the face pipeline takes (``--alignment``,
    ``--margin``, ``--backend``, ``--model``; read by :func:`build_pipeline`) to ``p``."""
    p.add_argument("--alignment", choices=["margin", "similarity"], default=None,
                   help="crop method (default: the model's)")
    p.add_argument("--margin", type=int, default=None, help="margin in pixels around the box")
    p.add_argument("--backend", default="auto",
                   help="embedding backend: auto (default: keras-bf16 on CPUs with native bf16, "
                        "else keras-fp32), keras-fp32, keras-bf16, onnx-fp32, onnx-int8")
    p.add_argument("--model", type=Path, default=None,
                   help="a trained model: checkpoint folder, .keras file, SavedModel folder or "
                        ".tflite file (default: the pretrained 20180408-102900)")


def build_pipeline(args: argparse.Namespace, flip: str = "none"):
    """A FacePipeline for the common CLI options: the model's spec, crop overrides applied."""
    from .factory import build_pipeline as build

    return build(args.model, backend=args.backend, flip=flip, alignment=args.alignment,
                 margin=args.margin)


def cmd_weights(args: argparse.Namespace) -> int:
    from .weights import ensure_pretrained_weights, pretrained_weights_status

    if not args.no_convert:
        ensure_pretrained_weights(force=args.convert)
    status = pretrained_weights_status()
    info = {
        "model_id": (status.manifest or {}).get("model", {}).get("model_id"),
        "weights": str(status.weights_file),
        "converted": status.converted,
        "current": status.current,
        "source": str(status.source_file),
        "source_sha256": (status.manifest or {}).get("source", {}).get("sha256"),
        "converted_at": (status.manifest or {}).get("converted_at"),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key + ':':15} {value}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .errors import NoFaceFoundError
    from .images import read_image
    from .pipeline import Verification, squared_distance

    paths = (args.image1, args.image2)
    images = [read_image(p) for p in paths]
    pipeline = build_pipeline(args)
    embeddings, faces = pipeline.central_faces(images, fallback_center=True)
    for path, face in zip(paths, faces):
        if face is None:
            raise NoFaceFoundError(f"{path}: no face found")
    threshold = pipeline.threshold if args.threshold is None else args.threshold
    result = Verification(squared_distance(embeddings[0], embeddings[1]), threshold)
    if args.json:
        print(json.dumps({
            "image1": str(args.image1), "image2": str(args.image2), **result.to_dict(),
            "model_id": pipeline.embedder.model_id,
            "faces": [face.to_dict() for face in faces],
        }, indent=2))
    else:
        verdict = "same person" if result.same_person else "different people"
        print(f"distance {result.distance:.4f}  threshold {threshold:.4f}  ->  {verdict}")
    return 0


def _expand_paths(paths: list[Path]) -> list[Path]:
    from .errors import ImageError
    from .images import is_image_path

    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and is_image_path(p)))
        elif path.exists():
            out.append(path)
        else:
            raise ImageError(f"{path}: no such file or directory")
    return out


def cmd_embed(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from .errors import ImageError
    from .facetable import faces_to_table
    from .images import read_image

    paths = _expand_paths(args.paths)
    pipeline = build_pipeline(args)
    tables, failures, n_faces = [], 0, 0
    for start in tqdm(range(0, len(paths), args.batch_size), unit="batch", desc="embedding",
                      disable=not sys.stderr.isatty()):
        ok_paths, images = [], []
        for path in paths[start:start + args.batch_size]:
            try:
                images.append(read_image(path))
                ok_paths.append(str(path))
            except ImageError as exc:
                failures += 1
                print(f"facenet-platform: skipped: {exc}", file=sys.stderr)
        faces = pipeline(images) if images else []
        n_faces += sum(len(f) for f in faces)
        tables.append(faces_to_table(ok_paths, faces, pipeline.embedder.model_id,
                                     pipeline.embedder.embedding_size))
    import pyarrow as pa

    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    pq.write_table(pa.concat_tables(tables) if tables else faces_to_table(
        [], [], pipeline.embedder.model_id, pipeline.embedder.embedding_size), tmp)
    tmp.replace(args.output)
    print(f"{len(paths) - failures} images, {n_faces} faces -> {args.output}"
          + (f"; {failures} files skipped" if failures else ""))
    return 1 if failures else 0


def cmd_eval_lfw(args: argparse.Namespace) -> int:
    from .evaluation import plot_roc
    from .lfw import default_lfw_dir, read_pairs
    from .lfw_eval import evaluate_lfw

    lfw_dir = args.lfw_dir or default_lfw_dir()
    pairs_file = args.pairs or lfw_dir / "pairs.txt"
    pairs = read_pairs(pairs_file, lfw_dir, check_exists=True)
    if args.limit_folds:
        pairs = pairs.take_folds(args.limit_folds)
    pipeline = build_pipeline(args, flip=args.flip)
    run = evaluate_lfw(pipeline, pairs, batch_size=args.batch_size, far_target=args.far,
                       progress=sys.stderr.isatty(), subtract_mean=args.subtract_mean)
    if args.roc:
        plot_roc(run.report, args.roc, title=f"LFW ROC ({pipeline.embedder.model_id})")
    if args.json:
        print(json.dumps({"pairs_file": str(pairs_file), "flip": args.flip,
                          "subtract_mean": args.subtract_mean, "backend": pipeline.embedder.backend,
                          "model_id": pipeline.embedder.model_id, **run.to_dict()}, indent=2))
    else:
        print(run.report.summary())
        print(f"Pairs: {len(pairs)} in {run.report.n_folds} folds; images: {run.n_images} "
              f"({run.n_no_face} without a detected face); {run.seconds:.1f} s, "
              f"{run.images_per_second:.1f} img/s; backend {pipeline.embedder.backend}")
    return 0
