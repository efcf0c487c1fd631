"""The Ray Data stages of ``index build``: batch dicts of numpy arrays in, batch dicts out.

    paths -> hash_files                       (tasks; first pass, finds what is new)
    new files -> read_decode                  (tasks)  bytes -> sha256 -> decode_media -> RGB
                                                       frames (1 per still image, sampled
                                                       frames of videos/animations), XMP regions
              -> DetectAlign                  (actor pool) MTCNN (+ sideways retry) + margin
                                                       crop + sharpness + XMP names
              -> Embed                        (actor pool, large batches, GPU when given)
              -> the driver commits the rows  (build.py)

Every stage passes every file on: a file that fails carries ``status="failed"`` with the
``stage`` and ``reason`` to the end instead of raising, so one bad file never fails the job. A
stage that fails on a whole batch retries image by image to find the culprit. The detection and
embedding classes load their model once in ``__init__`` (once per actor) and can be called
directly on a dict like ``ds.take_batch(n)`` returns.

Row columns after :class:`DetectAlign` (one row per face, or one row per frame without faces;
a still image is a file of one frame):

============  ===========================================================================
path          str: file path or URI
content_hash  str: sha256 hex of the bytes ("" when they could not be read)
size          int64: bytes as listed; mtime_ns int64: as listed
status        "ok" | "face" | "no_face" | "failed" (:mod:`.status` ROW_*)
stage         "" or the failing stage: read | decode | detect | embed (:data:`.status.STAGES`)
reason        "" or why it failed (one line)
width height  int32: image/frame size in px after orientation and rotation (0 when unknown)
n_frames      int32: frames of the file; frame_number int32: this frame's rank (0..n_frames-1)
frame_time    float64 s (NaN for a still image); frame_index int32 (-1 for a still image)
decoder       str: pillow | pillow-heif | rawpy-preview | rawpy-half | pyav | pillow-frames
orientation   int16: what the file declared (0: none); rotation int16: degrees clockwise the
              sideways retry turned it
n_faces       int32: faces of the frame (the rows sharing its content_hash and frame_number)
face_index    int32: rank of the face in its frame by detection score (-1 on a frame row;
              the committer numbers a file's faces 0..N-1 in frame order)
xmp_name      str: name of the XMP face region matched to the face ("" when none)
box           (4,) float32 x1 y1 x2 y2 px; landmarks (10,) float32 x1 y1 ... x5 y5 px
score         float32 detection probability; sharpness float32 variance of Laplacian
crop          (S, S, 3) uint8 aligned crop (zeros on a file row); replaced by
embedding     (D,) float32 after :class:`Embed`, plus model_id str
============  ===========================================================================
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np

from .faults import StageFaults
from .status import (ROW_FACE, ROW_FAILED, ROW_NO_FACE, ROW_OK, STAGE_DECODE, STAGE_DETECT,
                     STAGE_EMBED, STAGE_READ)

logger = logging.getLogger(__name__)

__all__ = ["DetectAlign", "Embed", "hash_file", "hash_files", "open_input", "read_bytes", "read_head",
           "read_decode", "one_line_reason", "FRAME_COLUMNS"]

#: Per-frame columns read_decode adds, passed through to the faces.
FRAME_COLUMNS = ("n_frames", "frame_number", "frame_time", "frame_index", "decoder",
                 "orientation", "xmp")

ENVELOPE = ("path", "content_hash", "size", "mtime_ns", "status", "stage", "reason", "width",
            "height")

def one_line_reason(exc: BaseException, path: str) -> str:
    """``str(exc)`` on one line, without the leading ``"<path>: "`` the image errors carry."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if text.startswith(path + ": "):
        text = text[len(path) + 2:]
    from facenet_platform.core.errors import FaceNetPlatformError

    if not isinstance(exc, FaceNetPlatformError):
        text = f"{type(exc).__name__}: {text}"
    return text


def read_bytes(path: str) -> bytes:
    """A file's bytes, local path or any pyarrow filesystem URI; raises ImageError."""
    from facenet_platform.core.errors import ImageError
    from facenet_platform.core.images import read_image_bytes

    from .sources import filesystem_for

    if "://" not in path:
        return read_image_bytes(path)
    try:
        fs, fs_path = filesystem_for(path)
        with fs.open_input_stream(fs_path) as handle:
            return handle.read()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow filesystems raise OSError, ArrowInvalid...
        raise ImageError(f"{path}: cannot read file ({' '.join(str(exc).split())})") from None


def open_input(path: str):
    """A seekable binary file object on a local path or a pyarrow filesystem URI (the caller
    closes it); raises ImageError."""
    from facenet_platform.core.errors import ImageError

    from .sources import filesystem_for

    try:
        if "://" not in path:
            return open(path, "rb")
        fs, fs_path = filesystem_for(path)
        return fs.open_input_file(fs_path)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except Exception as exc:  # noqa: BLE001 - OSError, ArrowInvalid...
        raise ImageError(f"{path}: cannot read file ({' '.join(str(exc).split())})") from None


#: Files are hashed (and videos read by FFmpeg) in chunks of this many bytes.
_CHUNK = 8 * 1024 * 1024


def _check_local(path: str) -> None:
    """Raise the ImageError that read_image_bytes gives for a missing path, a directory, a FIFO
    or a device (which would block or never end)."""
    import os
    import stat

    from facenet_platform.core.errors import ImageError

    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise ImageError(f"{path}: is a directory")
    if not stat.S_ISREG(mode):
        raise ImageError(f"{path}: not a regular file")


def read_head(path: str) -> bytes:
    """The first 64 KiB of a file (what the sniffer reads); raises ImageError."""
    from facenet_platform.core.errors import ImageError
    from facenet_platform.core.media.sniff import SNIFF_BYTES

    if "://" not in path:
        _check_local(path)
    with open_input(path) as handle:
        try:
            return handle.read(SNIFF_BYTES)
        except OSError as exc:
            raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def hash_file(path: str) -> str:
    """sha256 hex of a file, read in chunks (bounded memory for multi-GB videos); raises
    ImageError."""
    from facenet_platform.core.errors import ImageError

    if "://" not in path:
        _check_local(path)
    digest = hashlib.sha256()
    with open_input(path) as handle:
        try:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
        except OSError as exc:
            raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    return digest.hexdigest()


def _strings(values) -> list[str]:
    return [str(v) for v in np.asarray(values).tolist()]


def _objects(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


# --------------------------------------------------------------------------------------------
# pass 1: hash


def hash_files(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{"path"}`` -> ``{"path", "content_hash", "error"}`` (sha256 hex; ``""`` + the reason
    when the file cannot be read)."""
    paths = _strings(batch["path"])
    hashes, errors = [], []
    for path in paths:
        try:
            hashes.append(hash_file(path))
            errors.append("")
        except Exception as exc:  # noqa: BLE001 - a bad file never fails the job
            hashes.append("")
            errors.append(one_line_reason(exc, path))
    return {"path": np.array(paths, dtype=object), "content_hash": np.array(hashes, dtype=object),
            "error": np.array(errors, dtype=object)}


# --------------------------------------------------------------------------------------------
# pass 2: read + decode


_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)


def read_decode(batch: dict[str, np.ndarray], max_pixels: int | None = None,
                sampling: Any = None, read_xmp: bool = True) -> dict[str, np.ndarray]:
    """``{"path", "size", "mtime_ns"}`` -> one row per frame: the envelope columns, ``image``
    (``(H, W, 3) uint8`` RGB, orientation applied; a 1x1 placeholder where the file failed) and
    :data:`FRAME_COLUMNS` (a still image is one frame; videos and animated images give their
    sampled frames, :func:`facenet_platform.core.media.decode_media`).

    Args:
        batch: the files.
        max_pixels: pixel limit per image/frame.
        sampling: :class:`facenet_platform.core.media.SamplingOptions` (None: defaults).
        read_xmp: look for XMP face regions (sidecar next to a local file, in-file packet).
    """
    from facenet_platform.core.media import decode_media

    paths = _strings(batch["path"])
    sizes = np.asarray(batch["size"], np.int64)
    mtimes = np.asarray(batch["mtime_ns"], np.int64)
    cols: dict[str, list] = {k: [] for k in (
        "path", "content_hash", "size", "mtime_ns", "status", "stage", "reason", "width",
        "height", "image", *FRAME_COLUMNS)}

    def row(i: int, h: str, st: str, sg: str, rs: str, image: np.ndarray, *, n_frames=1,
            number=0, time_s=None, index=None, decoder="", orientation=0, xmp="") -> None:
        cols["path"].append(paths[i]), cols["content_hash"].append(h)
        cols["size"].append(sizes[i]), cols["mtime_ns"].append(mtimes[i])
        cols["status"].append(st), cols["stage"].append(sg), cols["reason"].append(rs)
        cols["width"].append(image.shape[1] if st == ROW_OK else 0)
        cols["height"].append(image.shape[0] if st == ROW_OK else 0)
        cols["image"].append(image)
        cols["n_frames"].append(n_frames), cols["frame_number"].append(number)
        cols["frame_time"].append(np.nan if time_s is None else time_s)
        cols["frame_index"].append(-1 if index is None else index)
        cols["decoder"].append(decoder), cols["orientation"].append(orientation)
        cols["xmp"].append(xmp)

    from facenet_platform.core.media.sniff import sniff
    from facenet_platform.core.media.video import decode_video

    for i, path in enumerate(paths):
        data = b""
        try:
            kind = sniff(read_head(path), path)
            if kind.kind == "video":  # streamed to FFmpeg and hashed in chunks, never held whole
                content_hash = hash_file(path)
            else:
                data = read_bytes(path)
                content_hash = hashlib.sha256(data).hexdigest()
        except Exception as exc:  # noqa: BLE001
            row(i, "", ROW_FAILED, STAGE_READ, one_line_reason(exc, path), _PLACEHOLDER)
            continue
        try:
            if kind.kind == "video":
                with open_input(path) as handle:
                    media = decode_video(handle, source=path, max_pixels=max_pixels,
                                         options=sampling, format=kind.format)
            else:
                media = decode_media(data, source=path, max_pixels=max_pixels, options=sampling)
        except Exception as exc:  # noqa: BLE001
            row(i, content_hash, ROW_FAILED, STAGE_DECODE, one_line_reason(exc, path),
                _PLACEHOLDER)
            continue
        xmp = _xmp_regions(path, data) if read_xmp and len(media.frames) == 1 else ""
        del data
        for k, frame in enumerate(media.frames):
            row(i, content_hash, ROW_OK, "", "", frame.image, n_frames=len(media.frames), number=k,
                time_s=frame.time_s, index=frame.index, decoder=media.decoder,
                orientation=media.orientation, xmp=xmp)
    return {
        "path": np.array(cols["path"], dtype=object),
        "content_hash": np.array(cols["content_hash"], dtype=object),
        "size": np.array(cols["size"], np.int64),
        "mtime_ns": np.array(cols["mtime_ns"], np.int64),
        "status": np.array(cols["status"], dtype=object),
        "stage": np.array(cols["stage"], dtype=object),
        "reason": np.array(cols["reason"], dtype=object),
        "width": np.array(cols["width"], np.int32),
        "height": np.array(cols["height"], np.int32),
        "image": _objects(cols["image"]),
        "n_frames": np.array(cols["n_frames"], np.int32),
        "frame_number": np.array(cols["frame_number"], np.int32),
        "frame_time": np.array(cols["frame_time"], np.float64),
        "frame_index": np.array(cols["frame_index"], np.int32),
        "decoder": np.array(cols["decoder"], dtype=object),
        "orientation": np.array(cols["orientation"], np.int16),
        "xmp": np.array(cols["xmp"], dtype=object),
    }


def _xmp_regions(path: str, data: bytes) -> str:
    """The file's named XMP face regions as JSON ``[[name, x, y, w, h], ...]`` (stored-image
    normalised centre and size), ``""`` when none. A broken or hostile XMP is logged and
    ignored: it never fails the photo."""
    import json

    from facenet_platform.core.media.xmp import read_regions

    try:
        found = read_regions(path if "://" not in path else "", data)
    except Exception as exc:  # noqa: BLE001 - XmpError, OSError on a sidecar
        logger.warning("%s: ignoring its XMP face regions (%s)", path, one_line_reason(exc, path))
        return ""
    if found is None:
        return ""
    named = [[r.name, r.x, r.y, r.w, r.h] for r in found.regions
             if r.name and r.type.lower() == "face"]
    return json.dumps(named) if named else ""


# --------------------------------------------------------------------------------------------
# detect + align


def sharpness(crops: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of each grey crop (``(N, S, S, 3) uint8`` -> ``(N,) float32``)."""
    import cv2

    out = np.zeros(len(crops), np.float32)
    for k, crop in enumerate(crops):
        grey = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)
        out[k] = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    return out


class DetectAlign:
    """MTCNN detection + alignment of every face, as a Ray Data actor.

    Args:
        spec: the embedding model's ``ModelSpec.to_metadata()``: the crop it takes (input size,
            margin, crop method) is the one cut here.
        min_face_size: smallest face in pixels (MTCNN).
        num_threads: onnxruntime threads per actor (match the actor's ``num_cpus``).
        faults: test-only fault injection.
        rotation_retry: retry faceless still photos that declare no orientation turned by 90,
            270 and 180 degrees (:class:`~facenet_platform.core.media.rotation.RotationRetry`);
            ``rotation_retry_below``: its ``retry_below``.
    """

    def __init__(self, *, spec: dict[str, Any], min_face_size: int = 20,
                 num_threads: int | None = 1, rotation_retry: bool = True,
                 rotation_retry_below: float | None = None,
                 faults: dict[str, str] | None = None):
        from facenet_platform.core.errors import WeightsError
        from facenet_platform.core.factory import build_detect_align

        if (faults or {}).get("fail_detect_init"):
            raise WeightsError("injected fail_detect_init fault: cannot load the MTCNN nets")
        self.detector, self.aligner = build_detect_align(spec, min_face_size=min_face_size,
                                                         num_threads=num_threads)
        self.size = self.aligner.image_size
        self._faults = StageFaults(faults)
        self.retry = None
        if rotation_retry:
            from facenet_platform.core.media.rotation import RotationRetry

            self.retry = RotationRetry(self.detector, retry_below=rotation_retry_below)

    def _rotation_retry(self, batch: dict[str, np.ndarray], ok: list[int],
                        images: list[np.ndarray], results: dict[int, Any]
                        ) -> tuple[dict[int, np.ndarray], dict[int, int]]:
        """Sideways retry of the still photos (one frame) of the batch; returns the images and
        rotations that changed, by input row."""
        if self.retry is None or not ok:
            return {}, {}
        n_frames = np.asarray(batch.get("n_frames", np.ones(len(batch["path"]))), np.int64)
        orientation = np.asarray(batch.get("orientation", np.zeros(len(batch["path"]))), np.int64)
        rows = [k for k, i in enumerate(ok) if n_frames[i] == 1]
        if not rows:
            return {}, {}
        try:
            res = self.retry([images[k] for k in rows], [results[ok[k]] for k in rows],
                             [int(orientation[ok[k]]) for k in rows])
        except Exception:  # noqa: BLE001 - the upright result stands
            logger.warning("rotation retry failed on a batch; keeping the upright detections",
                           exc_info=True)
            return {}, {}
        new_images, rotations = {}, {}
        for k, dets, image, angle in zip(rows, res.detections, res.images, res.rotations):
            if angle:
                i = ok[k]
                results[i] = dets
                new_images[i], rotations[i] = image, angle
        return new_images, rotations

    def _detect_all(self, images: list[np.ndarray], paths: list[str]) -> list[Any]:
        """Detections per image; an image on which detection raises gives the exception."""
        try:
            for path in paths:
                self._faults.fail_path("fail_detect_path", path)
            return list(self.detector.detect(images))
        except Exception:  # noqa: BLE001 - isolate the culprit, image by image
            out: list[Any] = []
            for image, path in zip(images, paths):
                try:
                    self._faults.fail_path("fail_detect_path", path)
                    out.append(self.detector.detect([image])[0])
                except Exception as exc:  # noqa: BLE001
                    out.append(exc)
            return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._faults.maybe_kill("kill_detect_worker")
        n = len(batch["path"])
        paths = _strings(batch["path"])
        status = _strings(batch["status"])
        stage, reason = _strings(batch["stage"]), _strings(batch["reason"])
        ok = [i for i in range(n) if status[i] == ROW_OK]
        images = [np.asarray(batch["image"][i]) for i in ok]
        results: dict[int, Any] = dict(zip(ok, self._detect_all(images, [paths[i] for i in ok])))
        turned, rotations = self._rotation_retry(batch, ok, images, results)
        xmp = _strings(batch["xmp"]) if "xmp" in batch else [""] * n
        orientation = np.asarray(batch.get("orientation", np.zeros(n)), np.int64)

        rows: list[tuple[int, int]] = []  # (input row, face index or -1)
        out_status, out_stage, out_reason, n_faces = [], [], [], []
        boxes, landmarks, scores, crops, sharp, names = [], [], [], [], [], []
        empty_crop = np.zeros((self.size, self.size, 3), np.uint8)

        def file_row(i: int, st: str, sg: str, rs: str) -> None:
            rows.append((i, -1))
            out_status.append(st), out_stage.append(sg), out_reason.append(rs), n_faces.append(0)
            boxes.append(np.zeros(4, np.float32)), landmarks.append(np.zeros(10, np.float32))
            scores.append(0.0), crops.append(empty_crop[None]), sharp.append(0.0)
            names.append("")

        for i in range(n):
            if status[i] != ROW_OK:
                file_row(i, ROW_FAILED, stage[i], reason[i])
                continue
            dets = results[i]
            if isinstance(dets, Exception):
                file_row(i, ROW_FAILED, STAGE_DETECT, one_line_reason(dets, paths[i]))
                continue
            if len(dets) == 0:
                file_row(i, ROW_NO_FACE, "", "")
                continue
            image = turned.get(i)
            image = np.asarray(batch["image"][i]) if image is None else image
            try:
                face_crops = self.aligner(image, dets)
                face_sharp = sharpness(face_crops)
            except Exception as exc:  # noqa: BLE001
                file_row(i, ROW_FAILED, STAGE_DETECT, "alignment: " + one_line_reason(exc, paths[i]))
                continue
            k = len(dets)
            names.extend(_xmp_names(xmp[i], dets.boxes, image.shape[1], image.shape[0],
                                    int(orientation[i]), rotations.get(i, 0), paths[i]))
            for j in range(k):
                rows.append((i, j))
                out_status.append(ROW_FACE), out_stage.append(""), out_reason.append("")
                n_faces.append(k)
            boxes.extend(dets.boxes.astype(np.float32))
            landmarks.extend(dets.landmarks.reshape(k, 10).astype(np.float32))
            scores.extend(dets.scores.astype(np.float32).tolist())
            crops.append(face_crops)
            sharp.extend(face_sharp.tolist())

        src = np.array([r[0] for r in rows], np.int64)
        m = len(rows)
        width = np.asarray(batch["width"], np.int32).copy()
        height = np.asarray(batch["height"], np.int32).copy()
        rotation = np.zeros(n, np.int16)
        for i, image in turned.items():
            height[i], width[i] = image.shape[:2]
            rotation[i] = rotations[i]
        passed = {c: np.asarray(batch[c])[src] for c in FRAME_COLUMNS if c in batch and c != "xmp"}
        return {
            **passed,
            "rotation": rotation[src],
            "xmp_name": np.array(names, dtype=object),
            "path": np.array([paths[i] for i in src], dtype=object),
            "content_hash": np.asarray(batch["content_hash"], dtype=object)[src] if m else
            np.array([], dtype=object),
            "size": np.asarray(batch["size"], np.int64)[src],
            "mtime_ns": np.asarray(batch["mtime_ns"], np.int64)[src],
            "status": np.array(out_status, dtype=object),
            "stage": np.array(out_stage, dtype=object),
            "reason": np.array(out_reason, dtype=object),
            "width": width[src],
            "height": height[src],
            "n_faces": np.array(n_faces, np.int32),
            "face_index": np.array([r[1] for r in rows], np.int32),
            "box": np.array(boxes, np.float32).reshape(m, 4),
            "landmarks": np.array(landmarks, np.float32).reshape(m, 10),
            "score": np.array(scores, np.float32),
            "sharpness": np.array(sharp, np.float32),
            "crop": (np.concatenate(crops) if crops else
                     np.zeros((0, self.size, self.size, 3), np.uint8)),
        }


def _xmp_names(xmp: str, boxes: np.ndarray, width: int, height: int, orientation: int,
               rotation: int, path: str) -> list[str]:
    """Per detected face, the name of the XMP region matched to it (``""`` when none)."""
    names = [""] * len(boxes)
    if not xmp:
        return names
    import json

    from facenet_platform.core.media.xmp import FaceRegion, match_regions, regions_to_display

    try:
        regions = [FaceRegion(str(r[0]), *map(float, r[1:5])) for r in json.loads(xmp)]
        shown = regions_to_display(regions, orientation, rotation)
        for r, f in match_regions(shown, boxes, width, height):
            names[f] = regions[r].name
    except Exception:  # noqa: BLE001 - names are a bonus; the faces stand without them
        logger.warning("%s: could not match its XMP regions", path, exc_info=True)
    return names


# --------------------------------------------------------------------------------------------
# embed


def _configure_tensorflow(num_threads: int | None) -> None:
    """Thread pools (before TensorFlow runs anything), GPU memory growth, quiet start-up."""
    from facenet_platform.core.tensorflow_setup import start_tensorflow

    start_tensorflow(num_threads)


class Embed:
    """FaceNet embeddings of the crops, as a Ray Data actor (GPU when the actor has one).

    Args:
        spec: the model's ``ModelSpec.to_metadata()`` (its weights are loaded from its source).
        batch_size: crops per forward pass (the model's own batch; map_batches' batch_size
            should be a multiple).
        backend: embedding backend (default: FaceEmbedder's).
        num_threads: TensorFlow intra-op threads (match the actor's ``num_cpus``).
        faults: test-only fault injection.
    """

    def __init__(self, *, spec: dict[str, Any], batch_size: int = 32,
                 backend: str | None = None, num_threads: int | None = 1,
                 faults: dict[str, str] | None = None):
        _configure_tensorflow(num_threads)
        from facenet_platform.core.factory import build_embedder

        self.embedder = build_embedder(spec, batch_size=batch_size, backend=backend)
        self.model_id = self.embedder.model_id
        self.dim = self.embedder.embedding_size
        self._faults = StageFaults(faults)

    def _embed(self, crops: np.ndarray, paths: list[str]) -> np.ndarray:
        for path in paths:
            self._faults.fail_path("fail_embed_path", path)
        return np.asarray(self.embedder(crops), np.float32)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._faults.maybe_kill("kill_embed_worker")
        self._faults.maybe_delay("delay_embed")
        status = _strings(batch["status"])
        paths = _strings(batch["path"])
        hashes = _strings(batch["content_hash"])
        n = len(status)
        face_rows = np.array([i for i in range(n) if status[i] == ROW_FACE], np.int64)
        embeddings = np.zeros((n, self.dim), np.float32)
        failed: dict[str, str] = {}  # content hash -> reason
        if len(face_rows):
            crops = np.asarray(batch["crop"])
            try:
                embeddings[face_rows] = self._embed(crops[face_rows],
                                                    [paths[i] for i in face_rows])
            except Exception:  # noqa: BLE001 - isolate the culprit, file by file
                for h in dict.fromkeys(hashes[i] for i in face_rows):
                    rows = np.array([i for i in face_rows if hashes[i] == h], np.int64)
                    try:
                        embeddings[rows] = self._embed(crops[rows], [paths[rows[0]]])
                    except Exception as exc:  # noqa: BLE001
                        failed[h] = one_line_reason(exc, paths[rows[0]])

        out = {k: np.asarray(batch[k]) for k in batch if k != "crop"}
        out["embedding"] = embeddings
        out["model_id"] = np.array([self.model_id] * n, dtype=object)
        if failed:
            # One "failed" row per failed file instead of its face rows.
            keep, seen = [], set()
            for i in range(n):
                if status[i] == ROW_FACE and hashes[i] in failed:
                    if hashes[i] in seen:
                        continue
                    seen.add(hashes[i])
                keep.append(i)
            keep_idx = np.array(keep, np.int64)
            out = {k: v[keep_idx] for k, v in out.items()}
            st, sg, rs = list(out["status"]), list(out["stage"]), list(out["reason"])
            for j, i in enumerate(keep):
                if status[i] == ROW_FACE and hashes[i] in failed:
                    st[j], sg[j], rs[j] = ROW_FAILED, STAGE_EMBED, failed[hashes[i]]
                    out["n_faces"][j] = 0
                    out["face_index"][j] = -1
                    out["embedding"][j] = 0.0
            out["status"] = np.array(st, dtype=object)
            out["stage"] = np.array(sg, dtype=object)
            out["reason"] = np.array(rs, dtype=object)
        return out
