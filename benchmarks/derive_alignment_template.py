"""Derive the 5-point similarity-alignment template from LFW (run once; numbers go into
``platform/core/alignment.py`` as ``TEMPLATE_MARGIN32`` / ``TEMPLATE_MEAN_BOX``).

    .venv/bin/python benchmarks/derive_alignment_template.py --n-images 1000

Takes every ``--stride``-th image of ``lfw-deepfunneled`` (sorted paths), detects faces with MTCNN,
keeps the central face, and averages its landmarks in margin-crop coordinates
(:func:`facenet_platform.core.alignment.derive_template`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from facenet_platform.core.alignment import derive_template
from facenet_platform.core.detection import FaceDetector
from facenet_platform.core.images import read_image

REPO = Path(__file__).resolve().parent.parent


def lfw_files(lfw_dir: Path) -> list[Path]:
    root = lfw_dir / "lfw-deepfunneled"
    if not root.is_dir():
        raise SystemExit(
            f"{root} not found: pass --lfw-dir (the folder holding lfw-deepfunneled/)."
        )
    return sorted(root.glob("*/*.jpg"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--lfw-dir",
        type=Path,
        default=Path(os.environ.get("LFW_DIR", REPO.parent / "shared/datasets/lfw")),
    )
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument(
        "--stride", type=int, default=13, help="take every stride-th file (sorted paths)"
    )
    parser.add_argument("--margin", type=float, default=32)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    args = parser.parse_args(argv)

    files = lfw_files(args.lfw_dir)[:: args.stride][: args.n_images]
    detector = FaceDetector(num_threads=args.threads)
    est = derive_template((read_image(f) for f in files), detector, margin=args.margin)

    names = ["left eye", "right eye", "nose", "mouth left", "mouth right"]
    print(
        f"faces used: {est.n_faces} of {est.n_images} images ({est.n_no_face} without a face, "
        f"{est.n_clipped} with a clipped margin box); mean box w x h = "
        f"{est.mean_box[0]:.2f} x {est.mean_box[1]:.2f} px"
    )
    print("| point | x (fraction) | y (fraction) | std x | std y |")
    print("| --- | --- | --- | --- | --- |")
    for name, (x, y), (sx, sy) in zip(names, est.template, est.std):
        print(f"| {name} | {x:.4f} | {y:.4f} | {sx:.4f} | {sy:.4f} |")
    print("TEMPLATE_MARGIN32 = np.array(")
    print("    [")
    for x, y in est.template:
        print(f"        [{x:.4f}, {y:.4f}],")
    print("    ],")
    print("    dtype=np.float64,")
    print(")")
    print(f"TEMPLATE_MEAN_BOX = ({est.mean_box[0]:.2f}, {est.mean_box[1]:.2f})")
    print(
        json.dumps(
            {
                "template": np.round(est.template, 6).tolist(),
                "mean_box": est.mean_box,
                "n_faces": est.n_faces,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
