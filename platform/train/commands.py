"""CLI commands of the training package: ``train`` and ``export``.

    facenet-platform train --config configs/finetune_lfw_triplet.yaml --set loss.margin=0.3
    facenet-platform export CHECKPOINT --format tflite -o model.tflite --lfw-pairs PAIRS
    python -m facenet_platform.train --config CONFIG.yaml      # the same as `train` (ray job submit)
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, required=True, help="YAML file with every setting")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set loss.margin=0.3 (repeatable; the value "
                        "is YAML)")
    g = p.add_argument_group("typed overrides (the same as --set KEY=VALUE)")
    g.add_argument("--data-root", help="data.root: image folder <root>/<person>/<image>")
    g.add_argument("--epochs", type=int, help="train.epochs")
    g.add_argument("--steps-per-epoch", type=int, help="train.steps_per_epoch")
    g.add_argument("--num-workers", type=int, help="scaling.num_workers")
    g.add_argument("--loss", choices=["triplet", "softmax_center"], help="loss.name")
    g.add_argument("--margin", type=float, help="loss.margin")
    g.add_argument("--learning-rate", type=float, help="optimizer.learning_rate")
    g.add_argument("--name", help="run.name")
    g.add_argument("--storage-path", help="run.storage_path: local folder or pyarrow URI")
    g.add_argument("--resume-from", help="run.resume_from: a checkpoint directory")
    g.add_argument("--ray-address", help="run.ray_address (auto: join the running cluster)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration and exit")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``export`` to the ``facenet-platform`` parser."""
    p = subparsers.add_parser("train", help="train or fine-tune an embedding network on Ray")
    add_train_arguments(p)
    p.set_defaults(handler=cmd_train, needs_model=True)

    p = subparsers.add_parser("export", help="export a checkpoint: SavedModel, TFLite, TFLite int8")
    p.add_argument("checkpoint", type=Path,
                   help="a checkpoint directory (model.keras + config.yaml) or a .keras file")
    p.add_argument("--format", required=True, choices=["savedmodel", "tflite", "tflite-int8"])
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output: a folder for savedmodel, a .tflite file otherwise")
    p.add_argument("--images", type=Path, default=None,
                   help="face images (folder, recursive) for the representative dataset and the "
                        "embedding comparison (default: the checkpoint's training data)")
    p.add_argument("--num-images", type=int, default=64,
                   help="images for calibration and comparison (default 64)")
    p.add_argument("--lfw-pairs", type=Path, default=None,
                   help="also measure verification accuracy on this pairs file")
    p.add_argument("--lfw-dir", type=Path, default=None,
                   help="folder holding the pair images (default: the pairs file's folder)")
    p.add_argument("--max-pairs", type=int, default=None, help="use only this many pairs")
    p.add_argument("--standardization", choices=["fixed", "prewhiten"], default=None,
                   help="the input standardisation the network was trained with (default: the "
                        "checkpoint's config.yaml)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=cmd_export, needs_model=True)


def load_train_config(args: argparse.Namespace):
    from .config import flag_overrides, load_config

    return load_config(args.config, [*args.overrides, *flag_overrides(args)])


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import resolve_run, run_training

    cfg = load_train_config(args)
    if args.print_config:
        print(resolve_run(cfg).to_yaml(), end="")
        return 0
    result = run_training(cfg)
    if args.json:
        print(json.dumps({
            "path": result.path, "latest_checkpoint": result.latest_checkpoint,
            "best_checkpoint": result.best_checkpoint, "best_metrics": result.best_metrics,
            "history": result.history, "wall_s": result.wall_s,
        }, indent=2, default=str))
        return 0
    print(format_history(result.history))
    print(f"run:               {result.path}")
    print(f"latest checkpoint: {result.latest_checkpoint}")
    print(f"best checkpoint:   {result.best_checkpoint}")
    if result.best_metrics and "val_accuracy" in result.best_metrics:
        print(f"best val_accuracy: {result.best_metrics['val_accuracy']:.4f} "
              f"(epoch {result.best_metrics.get('epoch')})")
    print(f"wall time:         {result.wall_s:.1f} s")
    return 0


def format_history(history: list[dict]) -> str:
    """Per-epoch metrics as a markdown table."""
    if not history:
        return "(no epochs)"
    cols = ["epoch", "loss"]
    for k in ("active_fraction", "accuracy", "center_loss", "learning_rate", "val_accuracy",
              "images_per_s_per_worker", "train_time_s"):
        if any(k in h for h in history):
            cols.append(k)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for h in history:
        cells = []
        for c in cols:
            v = h.get(c)
            cells.append("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint, format_report

    report = export_checkpoint(
        args.checkpoint, args.format, args.output, images=args.images,
        num_images=args.num_images, lfw_pairs=args.lfw_pairs, lfw_dir=args.lfw_dir,
        max_pairs=args.max_pairs, standardization=args.standardization,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0
