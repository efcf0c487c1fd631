"""Media types against their JPEG originals, and the sideways-photo retry, on LFW (one run).

From an evenly spaced sample of ``--limit`` LFW photos (250 x 250 JPEGs), generated on the fly
into a temporary folder (never kept):

* **jpeg**: the originals (baseline);
* **heic**, **avif**: re-encoded by pillow-heif / Pillow (quality 90);
* **dng-preview**: a DNG whose sensor data is the photo's Bayer mosaic, with the photo as the
  embedded preview (decoder ``rawpy-preview``);
* **dng-demosaic**: the same DNG without a preview (LibRaw half-size demosaic, 125 x 125 px);
* **video**: MP4s (H.264) of ``--per-clip`` photos, ``--hold`` seconds each at 10 fps; frames
  sampled every 2 s + scene changes: each photo is seen at least once;
* **webp-anim**: animated WebPs of the same groups.

For each type: files and frames per second of decode + MTCNN detection (one process; MTCNN and
PyAV one thread, libheif its default 4), by wall clock and by this process's CPU time (the
figure that survives a shared machine), types interleaved group by group; the ratio of photos
per CPU-second to JPEG's; and faces found against the JPEG originals (a photo counts when the
type's frame of it has a face whose box overlaps the JPEG's best face by IoU >= 0.5, boxes
scaled for the half-size demosaic).

Sideways retry: the JPEG originals turned by 90, 180 and 270 degrees and saved without EXIF;
faces found without the retry, with it (``RotationRetry``, no face -> try 90/270/180), and with
``retry_below=0.99``, and the time each costs against detection without retry on the same
files; plus the cost on the upright originals (where only ``retry_below`` adds work) and on
100 px upright copies (smaller faces score lower: does ``retry_below`` turn any wrongly?).

    .venv/bin/python benchmarks/bench_media.py --limit 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def sample_lfw(lfw_dir: Path, limit: int) -> list[Path]:
    root = lfw_dir / "lfw-deepfunneled"
    if not root.is_dir():
        sys.exit(f"bench_media: {root} not found (pass --lfw-dir)")
    paths = sorted(root.glob("*/*.jpg"))
    step = len(paths) / min(limit, len(paths))
    return [paths[int(i * step)] for i in range(min(limit, len(paths)))]


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def generate(paths: list[Path], out: Path, per_clip: int, hold_s: float) -> dict[str, list]:
    """Write every type; returns {type: [(file, [photo index per expected frame] or idx)]}."""
    from facenet_platform.core.images import read_image
    from facenet_platform.core.media.writers import (animated_bytes, dng_bytes, encode_pillow,
                                                     video_bytes)

    files: dict[str, list] = {k: [] for k in ("jpeg", "heic", "avif", "dng-preview",
                                              "dng-demosaic", "video", "webp-anim")}
    rotated: list[tuple[Path, int, int]] = []
    for i, path in enumerate(paths):
        rgb = read_image(path)
        for kind, ext, data in (
                ("jpeg", "jpg", path.read_bytes()),
                ("heic", "heic", encode_pillow(rgb, "HEIF")),
                ("avif", "avif", encode_pillow(rgb, "AVIF")),
                ("dng-preview", "dng", dng_bytes(rgb, preview=rgb)),
                ("dng-demosaic", "dng", dng_bytes(rgb))):
            target = out / kind / f"{i:05d}.{ext}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            files[kind].append((target, i))
        angle = (90, 180, 270)[i % 3]
        target = out / "rotated" / f"{i:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode_pillow(np.rot90(rgb, -angle // 90), "JPEG", quality=95))
        rotated.append((target, i, angle))
    fps = 10
    for g in range(0, len(paths), per_clip):
        group = list(range(g, min(g + per_clip, len(paths))))
        images = [np.ascontiguousarray(read_image(paths[i])[:248, :248]) for i in group]
        frames = [im for im in images for _ in range(int(hold_s * fps))]
        target = out / "video" / f"clip{g:05d}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(video_bytes(frames, fps=fps))
        files["video"].append((target, group))
        target = out / "webp-anim" / f"anim{g:05d}.webp"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(animated_bytes(images, format="WEBP", duration_ms=int(hold_s * 1000)))
        files["webp-anim"].append((target, group))
    files["rotated"] = rotated
    return files


class Tally:
    """Per type: boxes found per photo, files, frames, wall and CPU seconds."""

    def __init__(self):
        self.found: dict[int, list[np.ndarray]] = {}
        self.files = self.frames = 0
        self.wall = self.cpu = 0.0
        self.decoders: dict[str, int] = {}


def process(path: Path, idx, detector, options, tally: Tally) -> None:
    """Decode + detect one file, timed (wall and this process's CPU time, all threads)."""
    from facenet_platform.core.media import decode_media

    data = path.read_bytes()
    w0, c0 = time.perf_counter(), time.process_time()
    media = decode_media(data, source=str(path), options=options)
    dets = detector.detect([f.image for f in media.frames])
    tally.wall += time.perf_counter() - w0
    tally.cpu += time.process_time() - c0
    tally.files += 1
    tally.frames += len(media.frames)
    tally.decoders[media.decoder] = tally.decoders.get(media.decoder, 0) + 1
    if isinstance(idx, list):  # a clip: frame time -> photo
        hold = (media.duration_s or 1) / len(idx)
        for frame, d in zip(media.frames, dets):
            photo = idx[min(len(idx) - 1, int((frame.time_s + 1e-6) // hold))]
            tally.found.setdefault(photo, []).extend(list(d.boxes))
    else:
        tally.found.setdefault(idx, []).extend(list(dets[0].boxes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw-dir", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "datasets" / "lfw")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--per-clip", type=int, default=10)
    parser.add_argument("--hold", type=float, default=2.0, help="seconds each photo is shown")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from facenet_platform.core.detection import FaceDetector
    from facenet_platform.core.images import decode_still
    from facenet_platform.core.media import SamplingOptions
    from facenet_platform.core.media.rotation import RotationRetry

    paths = sample_lfw(args.lfw_dir, args.limit)
    tmp = Path(tempfile.mkdtemp(prefix="bench-media-"))
    try:
        t0 = time.perf_counter()
        files = generate(paths, tmp, args.per_clip, args.hold)
        gen_s = time.perf_counter() - t0
        detector = FaceDetector(num_threads=1)
        detector.detect([np.zeros((250, 250, 3), np.uint8)])  # warm-up
        options = SamplingOptions(interval_s=2.0)
        kinds = ("jpeg", "heic", "avif", "dng-preview", "dng-demosaic", "video", "webp-anim")
        results = {k: Tally() for k in kinds}
        # interleaved: for each group of photos, every type in turn, so that load changes on
        # a shared machine hit all types alike
        for g, (clip, group) in enumerate(files["video"]):
            for kind in kinds:
                if kind in ("video", "webp-anim"):
                    path, idx = files[kind][g]
                    process(path, idx, detector, options, results[kind])
                else:
                    for path, idx in files[kind][group[0]:group[-1] + 1]:
                        process(path, idx, detector, options, results[kind])
        base = results["jpeg"]
        ref = {i: boxes[0] for i, boxes in base.found.items() if boxes}
        rows = []
        photos = len(paths)
        for kind, r in results.items():
            scale = 0.5 if kind == "dng-demosaic" else 1.0
            same = sum(1 for i, want in ref.items()
                       if any(iou(want * scale, b) >= 0.5 for b in r.found.get(i, [])))
            rows.append({
                "type": kind, "files": r.files, "frames": r.frames,
                "files_per_s": r.files / r.wall, "files_per_cpu_s": r.files / r.cpu,
                "frames_per_cpu_s": r.frames / r.cpu,
                "vs_jpeg_wall": (photos / r.wall) / (photos / base.wall),
                "vs_jpeg_cpu": (photos / r.cpu) / (photos / base.cpu),
                "faces_same": same, "faces_ref": len(ref), "decoders": r.decoders})

        # sideways retry
        rotated = files["rotated"]
        images, orientations = [], []
        for path, i, angle in rotated:
            still = decode_still(path.read_bytes())
            images.append(still.image)
            orientations.append(still.orientation)
        upright = [decode_still(p.read_bytes()).image for p, _ in files["jpeg"]]
        import cv2

        # harder upright photos: 100 px copies (faces ~40 px score lower, so retry_below
        # retries them: do they get turned wrongly?)
        small = [np.ascontiguousarray(cv2.resize(im, (100, 100), interpolation=cv2.INTER_AREA))
                 for im in upright]

        modes = (("no retry", None), ("retry (no face)", RotationRetry(detector)),
                 ("retry (no face or best < 0.99)", RotationRetry(detector, retry_below=0.99)))
        stats = {name: {"dets": [], "rots": [], "cpu": 0.0, "ucpu": 0.0, "urots": [],
                        "scpu": 0.0, "srots": [], "sfaces": 0} for name, _ in modes}
        # interleaved by chunk of 16, every mode in turn, rotated then upright copies
        for k in range(0, len(images), 16):
            for name, retry in modes:
                for imgs, prefix in ((images[k:k + 16], ""), (upright[k:k + 16], "u"),
                                     (small[k:k + 16], "s")):
                    c0 = time.process_time()
                    d = detector.detect(imgs)
                    if retry is not None:
                        res = retry(imgs, d, [0] * len(imgs))
                        d, r = res.detections, res.rotations
                    else:
                        r = [0] * len(imgs)
                    stats[name][prefix + "cpu"] += time.process_time() - c0
                    if prefix:
                        stats[name][prefix + "rots"].extend(r)
                        if prefix == "s":
                            stats[name]["sfaces"] += sum(1 for x in d if len(x))
                    else:
                        stats[name]["dets"].extend(d), stats[name]["rots"].extend(r)
        retry_rows = []
        for name, _ in modes:
            st = stats[name]
            correct = sum(1 for (p, i, angle), d, r in zip(rotated, st["dets"], st["rots"])
                          if len(d) and (r + angle) % 360 == 0)
            retry_rows.append({
                "mode": name, "rotated_files": len(images),
                "faces_found": sum(1 for d in st["dets"] if len(d)), "upright_after": correct,
                "cost_vs_no_retry": st["cpu"] / stats["no retry"]["cpu"],
                "upright_cost_vs_no_retry": st["ucpu"] / stats["no retry"]["ucpu"],
                "upright_rotated_wrongly": sum(1 for r in st["urots"] if r),
                "small_cost_vs_no_retry": st["scpu"] / stats["no retry"]["scpu"],
                "small_rotated_wrongly": sum(1 for r in st["srots"] if r),
                "small_faces": st["sfaces"]})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"{len(paths)} LFW photos, files generated in {gen_s:.1f} s (not timed below); "
          f"decode + MTCNN, one process, one thread\n")
    print("| type | files | frames | files/s (wall) | files per CPU-s | frames per CPU-s | "
          "photos per CPU-s vs JPEG | faces found vs JPEG | decoder |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['type']} | {r['files']} | {r['frames']} | {r['files_per_s']:.1f} | "
              f"{r['files_per_cpu_s']:.1f} | {r['frames_per_cpu_s']:.1f} | "
              f"{r['vs_jpeg_cpu']:.2f}x | {r['faces_same']}/{r['faces_ref']} | "
              f"{', '.join(f'{k} {v}' for k, v in r['decoders'].items())} |")
    print("\n| sideways (90/180/270, no EXIF) | faces found | upright after | CPU vs no retry | "
          "upright originals: CPU vs no retry | turned wrongly | upright 100 px copies: "
          "faces found | CPU vs no retry | turned wrongly |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in retry_rows:
        print(f"| {r['mode']} | {r['faces_found']}/{r['rotated_files']} | "
              f"{r['upright_after']}/{r['rotated_files']} | {r['cost_vs_no_retry']:.2f}x | "
              f"{r['upright_cost_vs_no_retry']:.2f}x | {r['upright_rotated_wrongly']} | "
              f"{r['small_faces']}/{r['rotated_files']} | {r['small_cost_vs_no_retry']:.2f}x | "
              f"{r['small_rotated_wrongly']} |")
    if args.json:
        args.json.write_text(json.dumps({"types": rows, "retry": retry_rows}, indent=1,
                                        default=str))


if __name__ == "__main__":
    main()
