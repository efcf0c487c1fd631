"""An in-the-wild check, generated: phone-sized photos composed of whole LFW frames.

LFW is clean, centred and small (250 px, one large face in the middle). This script composes a
deterministic set that looks more like a phone's photo library, so that clustering, quality and
identification can also be measured where they are hard. Nothing here is committed: the set is
written under ``benchmarks/out/`` (gitignored) and regenerated from the seed.

What a photo holds (all drawn from one seed; ``--people N`` scales everything):

* a canvas of phone size: 1600x1200 or 1200x1600 (most), or 2000x1500 / 1500x2000 (a 4032x3024
  camera frame scaled to 2000 px), JPEG quality 70-90;
* a background from scikit-image's photos (astronaut, coffee, chelsea, rocket, camera,
  motorcycle, hubble, coins), scaled and cropped, or tiled from several, or over a texture floor
  (brick, grass, gravel), with a texture blend and a lighting gradient. The astronaut and the
  cameraman have faces: they are labelled ``background`` (same identity in every photo);
* 1-6 *subjects* (usually 2-6): LFW people with at least ``--min-images`` images, each in up to
  ``--per-person`` photos, a different LFW image of them each time. People come in social
  circles of 5-9 who tend to appear together (for "photos of Alice with Bob"). Each subject is
  a whole LFW frame (its own background, clutter and background faces come along), placed with
  a feathered edge at a face size of 30-200 px (log-uniform; at most 130 px in photos of 4+
  subjects), rotated a little (about 5 degrees, at most 12), with its own brightness, contrast and
  colour shift, and sometimes a Gaussian or motion blur;
* 0-4 *strangers*: LFW people with a single image (never a subject anywhere), each used once,
  small (faces 15-40 px, sometimes slightly blurred) or medium (40-90 px) and out of focus;
* whole-photo gamma, white balance, sometimes a slight blur, sensor noise.

A frame is never placed over an earlier subject's or stranger's face (+10% margin); it may
cover background faces and other parts of earlier frames. Background faces are labelled where
at least a quarter of their box shows (the box clipped to the photo or background tile).

Output (``--out``, default ``benchmarks/out/wild``)::

    photos/wild-NNNNN.jpg
    labels.parquet     one row per labelled face (below)
    manifest.json      parameters, counts, face-size distribution, time

``labels.parquet`` columns:

* ``photo`` (str): path relative to the set folder (``photos/wild-00012.jpg``);
  ``photo_width``, ``photo_height`` (int32, px);
* ``face_id`` (str): ``wild-00012#3``, unique;
* ``role`` (str): ``subject`` (a person of the set), ``stranger`` (an LFW person seen once,
  small and/or blurred) or ``background`` (a face MTCNN finds in a source frame besides its
  central face, or a face of a scikit-image background; mostly real faces, some of the LFW ones
  are false detections: see ``source_score``);
* ``identity`` (str): the LFW name for subjects and strangers; ``lfw-frame:<source>#k`` for an
  LFW frame's other faces; ``skimage:<name>#k`` for the background photos' faces (the same in
  every photo that uses that background);
* ``source`` (str): LFW image path relative to ``lfw-deepfunneled/``, or ``skimage:<name>``;
* ``box`` (list<float32>[4]): x1, y1, x2, y2 in photo px: the MTCNN box found on the source,
  scaled, its centre moved with the frame's rotation and placement (its size is not rotated, so
  it matches what MTCNN finds on the rotated face);
* ``landmarks`` (list<float32>[10]): the five MTCNN landmarks of the source, transformed exactly;
* ``face_px`` (float32): sqrt(box width x height) in photo px;
* ``source_score`` (float32): MTCNN score on the source image;
* ``scale``, ``rotation_deg``, ``blur_sigma`` (float32): what was applied to the frame (blur is
  the Gaussian sigma in photo px, 0 for none; motion blur shows as ``-length``);
* ``visible`` (float32): share of the box inside the photo and not covered by a later frame;
* ``layer`` (int16): paint order (0 = background).

The MTCNN boxes of the sources (the project's ``FaceDetector``, ``min_face_size=12``) are
computed once and cached in ``benchmarks/out/wild_source_faces.parquet``.

    .venv/bin/python benchmarks/wild_set.py --people 60 --out benchmarks/out/wild60
    nice -n 10 .venv/bin/python benchmarks/wild_set.py            # 300 people, 433 photos
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger("wild_set")

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "out" / "wild"
DEFAULT_SOURCE_CACHE = HERE / "out" / "wild_source_faces.parquet"
GENERATOR_VERSION = 1

#: (width, height) of the canvases and their probabilities.
CANVASES: tuple[tuple[tuple[int, int], float], ...] = (
    ((1600, 1200), 0.45), ((1200, 1600), 0.30), ((2000, 1500), 0.15), ((1500, 2000), 0.10))
#: subjects per photo and their probabilities (mean ~3.6).
SUBJECTS_PER_PHOTO = ((2, 0.25), (3, 0.25), (4, 0.2), (5, 0.15), (6, 0.15))
STRANGERS_PER_PHOTO = ((0, 0.2), (1, 0.25), (2, 0.25), (3, 0.15), (4, 0.15))
SUBJECT_FACE_PX = (30.0, 200.0)
CROWDED_MAX_FACE_PX = 130.0
SMALL_STRANGER_FACE_PX = (15.0, 40.0)
BLURRED_STRANGER_FACE_PX = (40.0, 90.0)
BACKGROUND_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "motorcycle",
                     "hubble", "coins")
TEXTURES = ("brick", "grass", "gravel")
#: faces of the background photos count when MTCNN is at least this sure (the astronaut and the
#: cameraman; a 0.87 detection on the motorcycle is a false one and stays unlabelled).
BACKGROUND_FACE_SCORE = 0.95
SOURCE_MIN_FACE = 12
#: a background face with less than this share showing is not labelled (its box is clipped
#: to the part of the photo, or tile, it lies in).
MIN_VISIBLE = 0.25
PROTECT_MARGIN = 0.10


# =============================================================================================
# sources: LFW listing and the MTCNN boxes of the source images
# =============================================================================================

def list_lfw(lfw_dir: Path) -> dict[str, list[str]]:
    """``{name: [relative image paths, sorted]}`` under ``lfw_dir/lfw-deepfunneled``."""
    root = Path(lfw_dir) / "lfw-deepfunneled"
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder (LFW's deep-funneled images)")
    people: dict[str, list[str]] = {}
    for person in sorted(os.listdir(root)):
        folder = root / person
        if folder.is_dir():
            files = sorted(f for f in os.listdir(folder) if f.lower().endswith(".jpg"))
            if files:
                people[person] = [f"{person}/{f}" for f in files]
    return people


@dataclass
class SourceFaces:
    """MTCNN faces of one source image: ``boxes (N, 4)``, ``landmarks (N, 5, 2)``, ``scores
    (N,)`` in source px, sorted by score; ``central`` is the subject's face (-1: none)."""

    width: int
    height: int
    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray
    central: int


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def detect_sources(lfw_dir: Path, sources: Sequence[str], cache: Path | None,
                   batch: int = 16) -> dict[str, SourceFaces]:
    """MTCNN faces of LFW images (relative paths), read from / added to the Parquet ``cache``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from facenet_platform.core.alignment import select_central_face
    from facenet_platform.core.detection import FaceDetector

    rows: dict[str, dict[str, Any]] = {}
    if cache is not None and cache.is_file():
        t = pq.read_table(cache).to_pylist()
        for r in t:
            rows[r["source"]] = r
    missing = [s for s in dict.fromkeys(sources) if s not in rows]
    if missing:
        logger.info("detecting faces in %d source images (cached: %d)", len(missing), len(rows))
        detector = FaceDetector(min_face_size=SOURCE_MIN_FACE)
        root = Path(lfw_dir) / "lfw-deepfunneled"
        t0 = time.perf_counter()
        for start in range(0, len(missing), batch):
            part = missing[start:start + batch]
            images = [_read_rgb(root / s) for s in part]
            for s, image, dets in zip(part, images, detector.detect(images)):
                central = select_central_face(dets, image.shape[:2]) if len(dets) else -1
                rows[s] = {"source": s, "width": image.shape[1], "height": image.shape[0],
                           "boxes": dets.boxes.reshape(-1).tolist(),
                           "landmarks": dets.landmarks.reshape(-1).tolist(),
                           "scores": dets.scores.tolist(), "central": int(central)}
            if (start // batch) % 20 == 19:
                logger.info("  %d/%d (%.0f s)", start + len(part), len(missing),
                            time.perf_counter() - t0)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            table = pa.Table.from_pylist(sorted(rows.values(), key=lambda r: r["source"]))
            tmp = cache.with_suffix(".tmp")
            pq.write_table(table, tmp)
            os.replace(tmp, cache)
    out = {}
    for s in sources:
        r = rows[s]
        n = len(r["scores"])
        out[s] = SourceFaces(int(r["width"]), int(r["height"]),
                             np.asarray(r["boxes"], np.float32).reshape(n, 4),
                             np.asarray(r["landmarks"], np.float32).reshape(n, 5, 2),
                             np.asarray(r["scores"], np.float32), int(r["central"]))
    return out


def _to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


@functools.lru_cache(maxsize=1)
def load_backgrounds() -> dict[str, tuple[np.ndarray, SourceFaces]]:
    """scikit-image's photos and textures (RGB uint8) with their faces (score filtered); read
    and detected once per process (callers must not modify them)."""
    from skimage import data

    from facenet_platform.core.detection import FaceDetector

    loaders = {
        "astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea,
        "rocket": data.rocket, "camera": data.camera,
        "motorcycle": lambda: data.stereo_motorcycle()[0], "hubble": data.hubble_deep_field,
        "coins": data.coins, "brick": data.brick, "grass": data.grass, "gravel": data.gravel,
    }
    detector = FaceDetector(min_face_size=SOURCE_MIN_FACE)
    out = {}
    for name, load in loaders.items():
        image = _to_rgb(load())
        dets = detector.detect([image])[0]
        keep = dets.scores >= BACKGROUND_FACE_SCORE
        if name in TEXTURES:
            keep[:] = False
        out[name] = (image, SourceFaces(image.shape[1], image.shape[0], dets.boxes[keep],
                                        dets.landmarks[keep], dets.scores[keep], -1))
    return out


# =============================================================================================
# the plan: who is in which photo (global, seeded)
# =============================================================================================

@dataclass
class PhotoPlan:
    index: int
    width: int
    height: int
    subjects: list[tuple[str, str]]        # (name, LFW relative path)
    strangers: list[tuple[str, str]]
    scale: float = 1.0                     # canvas and face sizes x scale (``--scale``)


def _choice(rng: np.random.Generator, table) -> Any:
    values = [v for v, _ in table]
    p = np.array([q for _, q in table], np.float64)
    return values[int(rng.choice(len(values), p=p / p.sum()))]


def plan_photos(people_images: dict[str, list[str]], singles: list[tuple[str, str]],
                seed: int, scale: float = 1.0) -> list[PhotoPlan]:
    """Assign each subject image to a photo (people of a circle together) and strangers."""
    rng = np.random.default_rng([seed, 0])
    names = list(people_images)
    order = rng.permutation(len(names))
    circles: list[list[str]] = []
    i = 0
    while i < len(order):
        size = int(rng.integers(5, 10))
        circles.append([names[j] for j in order[i:i + size]])
        i += size
    if len(circles) > 1 and len(circles[-1]) < 3:
        circles[-2].extend(circles.pop())
    remaining = {n: list(people_images[n]) for n in names}
    for n in names:
        rng.shuffle(remaining[n])
    circle_of = {n: c for c, members in enumerate(circles) for n in members}
    plans: list[PhotoPlan] = []
    stranger_pool = list(singles)
    while any(remaining.values()):
        left = np.array([sum(len(remaining[n]) for n in members) for members in circles], float)
        c = int(rng.choice(len(circles), p=left / left.sum()))
        k = _choice(rng, SUBJECTS_PER_PHOTO)
        chosen: list[str] = []
        pool = [n for n in circles[c] if remaining[n]]
        weights = np.array([len(remaining[n]) for n in pool], float)
        take = min(k, len(pool))
        if take:
            picked = rng.choice(len(pool), size=take, replace=False, p=weights / weights.sum())
            chosen = [pool[j] for j in picked]
        # a friend from another circle now and then, or to reach two subjects
        others = [n for n in names if remaining[n] and circle_of[n] != c]
        extra = (1 if rng.random() < 0.2 and len(chosen) < 6 else 0) + max(0, 2 - len(chosen))
        if others and extra:
            w = np.array([len(remaining[n]) for n in others], float)
            picked = rng.choice(len(others), size=min(extra, len(others)), replace=False,
                                p=w / w.sum())
            chosen += [others[j] for j in picked]
        (width, height) = _choice(rng, CANVASES)
        n_strangers = min(_choice(rng, STRANGERS_PER_PHOTO), len(stranger_pool))
        strangers = [stranger_pool.pop() for _ in range(n_strangers)]
        plans.append(PhotoPlan(len(plans), int(round(width * scale)), int(round(height * scale)),
                               [(n, remaining[n].pop()) for n in chosen], strangers, scale))
    return plans


def select_people(lfw: dict[str, list[str]], people: int, min_images: int, seed: int
                  ) -> tuple[list[str], list[str]]:
    """``people`` names with >= ``min_images`` images (seeded), and every single-image name
    (shuffled, seeded)."""
    rng = np.random.default_rng([seed, 1])
    multi = sorted(n for n, imgs in lfw.items() if len(imgs) >= min_images)
    singles = sorted(n for n, imgs in lfw.items() if len(imgs) == 1)
    if len(multi) < people:
        raise ValueError(f"only {len(multi)} people have >= {min_images} images; "
                         f"asked for {people}")
    chosen = [multi[i] for i in sorted(rng.choice(len(multi), size=people, replace=False))]
    singles = [singles[i] for i in rng.permutation(len(singles))]
    return chosen, singles


# =============================================================================================
# rendering one photo
# =============================================================================================

@dataclass
class Layer:
    """A frame to paint: RGBA patch at (x0, y0) and its faces' labels in patch coordinates."""

    rgba: np.ndarray                 # (h, w, 4) float32, alpha in [0, 1]
    centres: np.ndarray              # (N, 2) box centres
    sizes: np.ndarray                # (N, 2) box width, height
    landmarks: np.ndarray            # (N, 5, 2)
    scores: np.ndarray               # (N,)
    roles: list[str]
    identities: list[str]
    source: str
    scale: float
    rotation: float
    blur: float
    x0: int = 0
    y0: int = 0
    protected: list[int] = field(default_factory=list)   # faces nothing may cover


def _feathered_alpha(h: int, w: int, feather: float) -> np.ndarray:
    f = max(1.5, feather)
    ys = np.minimum(np.arange(h) + 0.5, h - np.arange(h) - 0.5) / f
    xs = np.minimum(np.arange(w) + 0.5, w - np.arange(w) - 0.5) / f
    return np.clip(np.minimum(ys[:, None], xs[None, :]), 0, 1).astype(np.float32)


def _motion_kernel(length: int, angle: float) -> np.ndarray:
    import cv2

    k = np.zeros((length, length), np.float32)
    k[length // 2, :] = 1
    m = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), angle, 1)
    k = cv2.warpAffine(k, m, (length, length))
    return k / max(k.sum(), 1e-6)


def make_layer(image: np.ndarray, faces: SourceFaces, source: str, subject_role: str,
               subject_identity: str, face_px: float, rng: np.random.Generator, *,
               blur: float = 0.0, motion: int = 0, rotation_sd: float = 5.0) -> Layer:
    """Scale ``image`` so that its central face is ``face_px`` px, shift its colours, blur it,
    rotate it a little, feather its edges; the labels follow."""
    import cv2

    c = faces.central
    bw, bh = faces.boxes[c, 2] - faces.boxes[c, 0], faces.boxes[c, 3] - faces.boxes[c, 1]
    scale = float(face_px / math.sqrt(max(bw * bh, 1.0)))
    h, w = image.shape[:2]
    nw, nh = max(4, int(round(w * scale))), max(4, int(round(h * scale)))
    sx, sy = nw / w, nh / h
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    rgb = cv2.resize(image, (nw, nh), interpolation=interp).astype(np.float32)
    # colour: brightness, contrast, per-channel gain
    contrast = rng.uniform(0.8, 1.2)
    brightness = rng.uniform(-25, 25)
    gains = rng.uniform(0.9, 1.1, size=3)
    mean = rgb.mean()
    rgb = np.clip(((rgb - mean) * contrast + mean + brightness) * gains, 0, 255)
    blur_label = 0.0
    if motion >= 3:
        rgb = cv2.filter2D(rgb, -1, _motion_kernel(motion, rng.uniform(0, 180)))
        blur_label = -float(motion)
    elif blur > 0:
        rgb = cv2.GaussianBlur(rgb, (0, 0), blur)
        blur_label = float(blur)
    alpha = _feathered_alpha(nh, nw, 0.05 * min(nw, nh))
    rgba = np.dstack([rgb, alpha]).astype(np.float32)
    angle = float(np.clip(rng.normal(0, rotation_sd), -12, 12))
    m = cv2.getRotationMatrix2D((nw / 2, nh / 2), angle, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    ow, oh = int(math.ceil(nh * sin + nw * cos)), int(math.ceil(nh * cos + nw * sin))
    m[0, 2] += ow / 2 - nw / 2
    m[1, 2] += oh / 2 - nh / 2
    rgba = cv2.warpAffine(rgba, m, (ow, oh), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))

    def move(points: np.ndarray) -> np.ndarray:
        p = points.reshape(-1, 2) * np.array([sx, sy], np.float32)
        return (p @ m[:, :2].T + m[:, 2]).astype(np.float32)

    n = len(faces.scores)
    centres = move(np.stack([(faces.boxes[:, 0] + faces.boxes[:, 2]) / 2,
                             (faces.boxes[:, 1] + faces.boxes[:, 3]) / 2], axis=1)) if n else \
        np.zeros((0, 2), np.float32)
    sizes = np.stack([(faces.boxes[:, 2] - faces.boxes[:, 0]) * sx,
                      (faces.boxes[:, 3] - faces.boxes[:, 1]) * sy], axis=1).astype(np.float32) \
        if n else np.zeros((0, 2), np.float32)
    landmarks = move(faces.landmarks).reshape(n, 5, 2) if n else np.zeros((0, 5, 2), np.float32)
    roles = ["background"] * n
    identities = [f"lfw-frame:{source}#{k}" for k in range(n)]
    roles[c], identities[c] = subject_role, subject_identity
    return Layer(rgba, centres, sizes, landmarks, faces.scores.copy(), roles, identities, source,
                 scale, angle, blur_label, protected=[c])


def _boxes(centres: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)


def _intersects(rect: tuple[float, float, float, float], boxes: list[np.ndarray]) -> bool:
    x1, y1, x2, y2 = rect
    for b in boxes:
        if x1 < b[2] and b[0] < x2 and y1 < b[3] and b[1] < y2:
            return True
    return False


def place(layer: Layer, width: int, height: int, protected: list[np.ndarray],
          rng: np.random.Generator, tries: int = 60) -> bool:
    """Choose ``layer.x0, y0`` with its protected faces inside the photo and the patch over no
    protected box; False when no place was found."""
    ph, pw = layer.rgba.shape[:2]
    box = _boxes(layer.centres[layer.protected], layer.sizes[layer.protected])[0]
    lo_x, hi_x = -box[0] + 2, width - box[2] - 2
    lo_y, hi_y = -box[1] + 2, height - box[3] - 2
    if hi_x < lo_x or hi_y < lo_y:
        return False
    for _ in range(tries):
        x0, y0 = int(rng.uniform(lo_x, hi_x)), int(rng.uniform(lo_y, hi_y))
        if not _intersects((x0, y0, x0 + pw, y0 + ph), protected):
            layer.x0, layer.y0 = x0, y0
            return True
    return False


def _cover_crop(image: np.ndarray, width: int, height: int, rng: np.random.Generator,
                zoom: tuple[float, float] = (1.0, 1.5)) -> tuple[np.ndarray, float, float, float]:
    """``image`` scaled to cover ``width x height`` (times a random zoom), randomly cropped;
    returns the crop, the scale and the crop's offset in the scaled image."""
    import cv2

    h, w = image.shape[:2]
    s = max(width / w, height / h) * rng.uniform(*zoom)
    sw, sh = max(width, int(math.ceil(w * s))), max(height, int(math.ceil(h * s)))
    scaled = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_CUBIC if s > 1 else cv2.INTER_AREA)
    ox, oy = int(rng.integers(0, sw - width + 1)), int(rng.integers(0, sh - height + 1))
    return scaled[oy:oy + height, ox:ox + width], sw / w, float(ox), float(oy)


def render_background(width: int, height: int, backgrounds, rng: np.random.Generator
                      ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A background (float32 RGB) and its faces' labels (canvas coordinates)."""
    photos = [b for b in BACKGROUND_PHOTOS if b in backgrounds]
    canvas = np.zeros((height, width, 3), np.float32)
    labels: list[dict[str, Any]] = []

    def paint(name: str, x: int, y: int, w: int, h: int) -> None:
        image, faces = backgrounds[name]
        flip = rng.random() < 0.5
        if flip:
            image = image[:, ::-1]
        crop, s, ox, oy = _cover_crop(image, w, h, rng)
        canvas[y:y + h, x:x + w] = crop
        for k in range(len(faces.scores)):
            b = faces.boxes[k].copy()
            lm = faces.landmarks[k].copy()
            if flip:
                iw = image.shape[1]
                b = np.array([iw - b[2], b[1], iw - b[0], b[3]], np.float32)
                lm[:, 0] = iw - lm[:, 0]
                lm = lm[[1, 0, 2, 4, 3]]
            b = b * s - np.array([ox, oy, ox, oy], np.float32) + np.array([x, y, x, y], np.float32)
            lm = lm * s - np.array([ox, oy], np.float32) + np.array([x, y], np.float32)
            labels.append({"box": b, "landmarks": lm, "score": float(faces.scores[k]),
                           "role": "background", "identity": f"skimage:{name}#{k}",
                           "source": f"skimage:{name}", "scale": s, "rotation": 0.0,
                           "blur": 0.0, "clip": (x, y, x + w, y + h)})

    mode = rng.choice(["photo", "tiles", "floor"], p=[0.5, 0.25, 0.25])
    if mode == "photo":
        paint(str(rng.choice(photos)), 0, 0, width, height)
    elif mode == "tiles":
        cols, rows = (2, 2) if rng.random() < 0.6 else ((3, 2) if width > height else (2, 3))
        xs = np.linspace(0, width, cols + 1).astype(int)
        ys = np.linspace(0, height, rows + 1).astype(int)
        for r in range(rows):
            for c in range(cols):
                paint(str(rng.choice(photos)), xs[c], ys[r], xs[c + 1] - xs[c], ys[r + 1] - ys[r])
    else:
        split = int(height * rng.uniform(0.45, 0.7))
        paint(str(rng.choice(photos)), 0, 0, width, split)
        tex, _ = backgrounds[str(rng.choice(TEXTURES))]
        crop, _, _, _ = _cover_crop(tex, width, height - split, rng, (1.0, 2.5))
        tint = rng.uniform(0.6, 1.2, size=3)
        canvas[split:] = np.clip(crop * tint, 0, 255)
    # a texture blend and a lighting gradient
    tex, _ = backgrounds[str(rng.choice(TEXTURES))]
    crop, _, _, _ = _cover_crop(tex, width, height, rng, (1.0, 3.0))
    a = rng.uniform(0.0, 0.25)
    canvas = canvas * (1 - a) + crop.astype(np.float32) * a
    gx, gy = rng.normal(0, 0.25, size=2)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 1 + gx * (xx / width - 0.5) + gy * (yy / height - 0.5)
    canvas = np.clip(canvas * light[..., None], 0, 255)
    return canvas, labels


def render_photo(plan: PhotoPlan, lfw_dir: Path, sources: dict[str, SourceFaces],
                 backgrounds, seed: int) -> tuple[bytes, list[dict[str, Any]]]:
    """The JPEG bytes of one photo and its labels (dicts of ``labels.parquet`` columns)."""
    import cv2

    rng = np.random.default_rng([seed, 2, plan.index])
    width, height = plan.width, plan.height
    canvas, bg_labels = render_background(width, height, backgrounds, rng)
    root = Path(lfw_dir) / "lfw-deepfunneled"
    layers: list[Layer] = []
    protected: list[np.ndarray] = []

    def add(layer: Layer) -> bool:
        if not place(layer, width, height, protected, rng):
            return False
        layers.append(layer)
        b = _boxes(layer.centres[layer.protected], layer.sizes[layer.protected])[0]
        m = PROTECT_MARGIN * (b[2:] - b[:2])
        protected.append(b + np.array([layer.x0 - m[0], layer.y0 - m[1],
                                       layer.x0 + m[0], layer.y0 + m[1]], np.float32))
        return True

    # strangers first (in the background), then subjects from small to large
    for name, src in plan.strangers:
        faces = sources[src]
        if faces.central < 0:
            continue
        if rng.random() < 0.7:
            px = float(np.exp(rng.uniform(*np.log(SMALL_STRANGER_FACE_PX)))) * plan.scale
            blur = float(rng.uniform(0.3, 1.2)) if rng.random() < 0.5 else 0.0
        else:
            px = float(rng.uniform(*BLURRED_STRANGER_FACE_PX)) * plan.scale
            blur = float(rng.uniform(1.5, 3.5) * px / 60)
        add(make_layer(_read_rgb(root / src), faces, src, "stranger", name, px, rng, blur=blur))
    hi = SUBJECT_FACE_PX[1] if len(plan.subjects) <= 3 else CROWDED_MAX_FACE_PX
    sizes = np.exp(rng.uniform(math.log(SUBJECT_FACE_PX[0]), math.log(hi),
                               len(plan.subjects))) * plan.scale
    for (name, src), px in sorted(zip(plan.subjects, sizes), key=lambda t: t[1]):
        faces = sources[src]
        if faces.central < 0:
            continue
        r = rng.random()
        blur = float(rng.uniform(0.6, 1.5)) if r < 0.12 else 0.0
        motion = int(rng.integers(5, 10)) if 0.12 <= r < 0.17 else 0
        image = _read_rgb(root / src)
        for shrink in (1.0, 0.8, 0.65, 0.5):
            if add(make_layer(image, faces, src, "subject", name, px * shrink, rng, blur=blur,
                              motion=motion)):
                break
        else:
            logger.warning("photo %d: no room for %s", plan.index, src)

    # paint, remembering the top layer of each pixel
    top = np.zeros((height, width), np.int16)
    for li, layer in enumerate(layers, start=1):
        ph, pw = layer.rgba.shape[:2]
        x0, y0 = layer.x0, layer.y0
        cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(width, x0 + pw), min(height, y0 + ph)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        patch = layer.rgba[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        a = patch[..., 3:4]
        region = canvas[cy0:cy1, cx0:cx1]
        canvas[cy0:cy1, cx0:cx1] = region * (1 - a) + patch[..., :3] * a
        top[cy0:cy1, cx0:cx1][patch[..., 3] > 0.5] = li

    # whole photo: gamma, white balance, slight blur, noise, JPEG
    img = canvas / 255.0
    img = np.power(np.clip(img, 0, 1), rng.uniform(0.8, 1.25)) * rng.uniform(0.92, 1.08, size=3)
    img = np.clip(img * 255.0, 0, 255)
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 1.0)))
    if rng.random() < 0.6:
        img = img + rng.normal(0, rng.uniform(1.5, 6.0), size=img.shape).astype(np.float32)
    img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    quality = int(rng.integers(70, 91))
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"photo {plan.index}: JPEG encoding failed")

    # labels
    stem = f"wild-{plan.index:05d}"
    out: list[dict[str, Any]] = []

    def visible(box: np.ndarray, layer_id: int, clip=None) -> float:
        x1, y1, x2, y2 = box
        area = max((x2 - x1) * (y2 - y1), 1e-6)
        ix1, iy1 = int(max(0, math.floor(x1))), int(max(0, math.floor(y1)))
        ix2, iy2 = int(min(width, math.ceil(x2))), int(min(height, math.ceil(y2)))
        if clip is not None:
            ix1, iy1 = max(ix1, clip[0]), max(iy1, clip[1])
            ix2, iy2 = min(ix2, clip[2]), min(iy2, clip[3])
        if ix2 <= ix1 or iy2 <= iy1:
            return 0.0
        shown = float(np.count_nonzero(top[iy1:iy2, ix1:ix2] == layer_id))
        return min(1.0, shown / area)

    def emit(box, landmarks, score, role, identity, source, scale, rotation, blur, layer_id, vis):
        w, h = float(box[2] - box[0]), float(box[3] - box[1])
        out.append({
            "photo": f"photos/{stem}.jpg", "photo_width": width, "photo_height": height,
            "face_id": f"{stem}#{len(out)}", "role": role, "identity": identity,
            "source": source, "box": [float(v) for v in box],
            "landmarks": [float(v) for v in np.asarray(landmarks).reshape(-1)],
            "face_px": math.sqrt(max(w * h, 0.0)), "source_score": float(score),
            "scale": float(scale), "rotation_deg": float(rotation), "blur_sigma": float(blur),
            "visible": float(vis), "layer": int(layer_id)})

    for lab in bg_labels:
        vis = visible(lab["box"], 0, lab["clip"])
        if vis >= MIN_VISIBLE:
            c = lab["clip"]
            box = np.array([max(lab["box"][0], c[0]), max(lab["box"][1], c[1]),
                            min(lab["box"][2], c[2]), min(lab["box"][3], c[3])], np.float32)
            emit(box, lab["landmarks"], lab["score"], lab["role"], lab["identity"],
                 lab["source"], lab["scale"], 0.0, 0.0, 0, vis)
    for li, layer in enumerate(layers, start=1):
        offset = np.array([layer.x0, layer.y0], np.float32)
        boxes = _boxes(layer.centres + offset, layer.sizes)
        for k in range(len(layer.roles)):
            vis = visible(boxes[k], li)
            if layer.roles[k] != "background" or vis >= MIN_VISIBLE:
                box = boxes[k] if layer.roles[k] != "background" else np.clip(
                    boxes[k], 0, [width, height, width, height]).astype(np.float32)
                emit(box, layer.landmarks[k] + offset, layer.scores[k], layer.roles[k],
                     layer.identities[k], layer.source, layer.scale, layer.rotation, layer.blur,
                     li, vis)
    return jpeg.tobytes(), out


# =============================================================================================
# the whole set
# =============================================================================================

def labels_schema():
    """Schema of ``labels.parquet`` (see the module doc)."""
    import pyarrow as pa

    return pa.schema([
        pa.field("photo", pa.string(), nullable=False),
        pa.field("photo_width", pa.int32(), nullable=False),
        pa.field("photo_height", pa.int32(), nullable=False),
        pa.field("face_id", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),
        pa.field("identity", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("box", pa.list_(pa.float32(), 4), nullable=False),
        pa.field("landmarks", pa.list_(pa.float32(), 10), nullable=False),
        pa.field("face_px", pa.float32(), nullable=False),
        pa.field("source_score", pa.float32(), nullable=False),
        pa.field("scale", pa.float32(), nullable=False),
        pa.field("rotation_deg", pa.float32(), nullable=False),
        pa.field("blur_sigma", pa.float32(), nullable=False),
        pa.field("visible", pa.float32(), nullable=False),
        pa.field("layer", pa.int16(), nullable=False),
    ])


_WORKER: dict[str, Any] = {}


def _init_worker(lfw_dir, sources, seed) -> None:
    _WORKER.update(lfw_dir=lfw_dir, sources=sources, seed=seed, backgrounds=load_backgrounds())


def _render_to_file(args) -> list[dict[str, Any]]:
    plan, photos_dir = args
    w = _WORKER
    jpeg, labels = render_photo(plan, w["lfw_dir"], w["sources"], w["backgrounds"], w["seed"])
    path = Path(photos_dir) / f"wild-{plan.index:05d}.jpg"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(jpeg)
    os.replace(tmp, path)
    return labels


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (user + system)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def size_distribution(values: np.ndarray) -> dict[str, int]:
    """Counts of face sizes (px) per bucket."""
    edges = [0, 15, 20, 30, 40, 60, 80, 120, 160, 200, 10_000]
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:]):
        n = int(np.sum((values >= lo) & (values < hi)))
        out[f"{lo}-{hi}" if hi < 10_000 else f"{lo}+"] = n
    return out


def generate(lfw_dir: Path, out_dir: Path, *, people: int = 300, per_person: int = 6,
             min_images: int = 4, seed: int = 0, scale: float = 1.0, workers: int = 1,
             source_cache: Path | None = DEFAULT_SOURCE_CACHE) -> dict[str, Any]:
    """Write the set to ``out_dir`` (photos/, labels.parquet, manifest.json); returns the
    manifest. Deterministic for the same LFW, arguments and library versions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    lfw_dir, out_dir = Path(lfw_dir), Path(out_dir)
    lfw = list_lfw(lfw_dir)
    names, singles = select_people(lfw, people, min_images, seed)
    rng = np.random.default_rng([seed, 3])
    # each person: up to per_person images with a face (spares detected in case one has none)
    candidates = {n: [lfw[n][i] for i in rng.permutation(len(lfw[n]))] for n in names}
    wanted = [p for n in names for p in candidates[n][:per_person + 2]]
    n_strangers_max = int(math.ceil(len(names) * per_person / 2 * 4)) + 10
    stranger_srcs = [lfw[n][0] for n in singles[:n_strangers_max]]
    sources = detect_sources(lfw_dir, wanted, source_cache)
    people_images = {}
    for n in names:
        ok = [p for p in candidates[n][:per_person + 2] if sources[p].central >= 0]
        people_images[n] = ok[:per_person]
    people_images = {n: v for n, v in people_images.items() if v}
    # strangers: detect lazily, only as many as the plan uses
    plans = plan_photos(people_images, [(n, lfw[n][0]) for n in singles[:n_strangers_max]], seed,
                        scale)
    used_strangers = [s for p in plans for _, s in p.strangers]
    sources.update(detect_sources(lfw_dir, used_strangers, source_cache))
    t_plan = time.perf_counter() - t0

    photos_dir = out_dir / "photos"
    photos_dir.mkdir(parents=True, exist_ok=True)
    for stale in photos_dir.glob("wild-*.jpg"):
        if int(stale.stem.split("-")[1]) >= len(plans):
            stale.unlink()
    needed = {s for p in plans for _, s in p.subjects + p.strangers}
    sources = {s: f for s, f in sources.items() if s in needed}
    jobs = [(p, str(photos_dir)) for p in plans]
    if workers > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(lfw_dir, sources, seed)) as pool:
            results = pool.map(_render_to_file, jobs, chunksize=4)
    else:
        _init_worker(lfw_dir, sources, seed)
        results = []
        for i, job in enumerate(jobs):
            results.append(_render_to_file(job))
            if i % 50 == 49:
                logger.info("rendered %d/%d photos (%.0f s)", i + 1, len(jobs),
                            time.perf_counter() - t0)
    rows = [r for labels in results for r in labels]
    table = pa.Table.from_pylist(rows, schema=labels_schema())
    pq.write_table(table, out_dir / "labels.parquet")

    role = np.array(table.column("role").to_pylist())
    px = table.column("face_px").to_numpy()
    ident = np.array(table.column("identity").to_pylist())
    subj = role == "subject"
    per_person_counts = np.unique(ident[subj], return_counts=True)[1]
    faces_per_photo = np.unique(np.array(table.column("photo").to_pylist())[subj],
                                return_counts=True)[1]
    sizes = np.array([(p.width, p.height) for p in plans])
    manifest = {
        "generator": "benchmarks/wild_set.py", "version": GENERATOR_VERSION,
        "params": {"people": people, "per_person": per_person, "min_images": min_images,
                   "seed": seed, "scale": scale, "lfw_dir": str(lfw_dir)},
        "photos": len(plans),
        "canvas_sizes": {f"{w}x{h}": int(k) for (w, h), k in zip(
            *np.unique(sizes, axis=0, return_counts=True))},
        "people": int(len(per_person_counts)),
        "subject_faces": int(subj.sum()),
        "photos_per_person": {"min": int(per_person_counts.min()),
                              "mean": round(float(per_person_counts.mean()), 2),
                              "max": int(per_person_counts.max())},
        "subjects_per_photo": {str(k): int(v) for k, v in zip(
            *np.unique(faces_per_photo, return_counts=True))},
        "stranger_faces": int(np.sum(role == "stranger")),
        "background_faces": int(np.sum(role == "background")),
        "face_px": {r: size_distribution(px[role == r]) for r in ("subject", "stranger",
                                                                  "background")},
        "face_px_median": {r: round(float(np.median(px[role == r])), 1)
                           for r in ("subject", "stranger", "background") if np.any(role == r)},
        "seconds": {"plan_and_sources": round(t_plan, 1),
                    "total": round(time.perf_counter() - t0, 1),
                    "cpu": round(_cpu_seconds() - cpu0, 1)},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    from facenet_platform.core.lfw import default_lfw_dir

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lfw-dir", type=Path, default=None,
                    help="LFW root (default: $LFW_DIR or ../shared/datasets/lfw)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--people", type=int, default=300, help="subjects (LFW people, >= min images)")
    ap.add_argument("--per-person", type=int, default=6, help="photos per person at most")
    ap.add_argument("--min-images", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="canvas and face sizes x this (0.5: 800x600 photos, subjects' faces "
                         "15-100 px)")
    ap.add_argument("--workers", type=int, default=1, help="rendering processes")
    ap.add_argument("--source-cache", type=Path, default=DEFAULT_SOURCE_CACHE)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    lfw_dir = args.lfw_dir or Path(default_lfw_dir())
    manifest = generate(lfw_dir, args.out, people=args.people, per_person=args.per_person,
                        min_images=args.min_images, seed=args.seed, scale=args.scale,
                        workers=args.workers,
                        source_cache=args.source_cache)
    print(f"command: {' '.join(sys.argv)}")
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
