"""Training data: an image-folder dataset read with Ray Data, identity-balanced P x K batches.

Layout: ``<root>/<person>/<image>.jpg`` (LFW's ``lfw-deepfunneled`` folder is found under an
LFW root automatically). ``root`` may be a local path or a pyarrow filesystem URI (``s3://...``).

Pipeline:

1. Driver: :func:`index_image_folder` lists people and images (optionally only the people of
   an LFW people file, at least ``min_images_per_person`` each) and numbers identities 0..C-1.
2. Ray Data: :func:`build_train_dataset` reads and decodes the images (``read_images``) and, in
   ``map_batches``, takes the square centre crop ``center_crop`` and resizes it to ``resize``
   (182 for 160 px input), giving rows ``{"image": (R, R, 3) uint8, "label": int64}``. The
   trainer materialises it once in the object store.
3. Workers: every worker reads the dataset through ``ray.train.get_dataset_shard("train")``
   and keeps the identities with ``label % world_size == rank`` (identity sharding: a person's
   images live on one worker, so a worker can draw K images of each of its P / W people without
   talking to the others). :class:`IdentitySampler` draws the P / W x K local batch; the global
   batch is the concatenation of the workers' local batches (P x K, P distinct people).
4. :func:`augment`: random crop ``input_size`` from ``resize`` (else the centre), random
   horizontal flip, optional random rotation, then standardisation (``prewhiten`` or ``fixed``).

Validation (:class:`ValidationSet`): the unique images of a pairs file, centre crop ->
resize -> centre ``input_size`` crop (the deterministic version of the training crop).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

import numpy as np

from facenet_platform.core.errors import DatasetError
from facenet_platform.core.images import is_image_path

logger = logging.getLogger(__name__)


def is_uri(path: str) -> bool:
    return "://" in str(path)


@dataclass
class DatasetIndex:
    """People and images of a labelled image folder."""

    root: str
    names: list[str]  # label -> person name
    paths: list[str]
    labels: np.ndarray  # (N,) int64

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return len(self.paths)

    def summary(self) -> str:
        return f"{len(self.names)} people, {len(self.paths)} images under {self.root}"


def _list_folder_fs(root: str, min_images: int) -> dict[str, list[str]]:
    """``{person: [uris]}`` for a pyarrow-filesystem URI."""
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(root)
    scheme = root.split("://", 1)[0]
    people: dict[str, list[str]] = {}
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type != pafs.FileType.File or not is_image_path(info.path):
            continue
        rel = PurePosixPath(info.path).relative_to(PurePosixPath(base))
        if len(rel.parts) != 2:
            continue
        people.setdefault(rel.parts[0], []).append(f"{scheme}://{info.path}")
    return {k: sorted(v) for k, v in sorted(people.items()) if len(v) >= min_images}


def index_image_folder(root: str | os.PathLike, *, people_file: str | None = None,
                       min_images: int = 1, max_people: int | None = None) -> DatasetIndex:
    """List a labelled image folder (see the module docstring)."""
    root = str(root)
    if is_uri(root):
        people = _list_folder_fs(root, min_images)
    else:
        from facenet_platform.core.lfw import list_identities

        people = {k: [str(p) for p in v]
                  for k, v in list_identities(Path(root).expanduser(), min_images).items()}
    if people_file:
        from facenet_platform.core.lfw import read_people

        wanted = {name for name, _ in read_people(people_file)}
        people = {k: v for k, v in people.items() if k in wanted}
    if max_people is not None:
        people = dict(list(people.items())[:max_people])
    if len(people) < 2:
        raise DatasetError(
            f"{root}: found {len(people)} people with >= {min_images} images"
            f"{' listed in ' + str(people_file) if people_file else ''}; training needs at least "
            "2 (layout: <root>/<person>/<image>.jpg)"
        )
    names = list(people)
    paths, labels = [], []
    for label, name in enumerate(names):
        paths.extend(people[name])
        labels.extend([label] * len(people[name]))
    return DatasetIndex(root, names, paths, np.asarray(labels, np.int64))


# ------------------------------------------------------------------------------------------
# deterministic preprocessing (Ray Data side, validation, export)


def center_crop_resize(image: np.ndarray, center_crop: int | None, size: int) -> np.ndarray:
    """Square centre crop of ``center_crop`` pixels (clamped to the image; None: the largest
    centred square) resized to ``size`` x ``size`` (bilinear). ``(H, W, 3) uint8`` in and out."""
    import cv2

    h, w = image.shape[:2]
    side = min(h, w) if center_crop is None else min(int(center_crop), h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = image[top:top + side, left:left + side]
    if side != size:
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        crop = cv2.resize(crop, (size, size), interpolation=interp)
    return np.ascontiguousarray(crop[..., :3])


def eval_crop(image: np.ndarray, center_crop: int | None, resize: int, input_size: int) -> np.ndarray:
    """Validation/inference crop: centre crop -> resize -> centre ``input_size`` crop."""
    x = center_crop_resize(image, center_crop, resize)
    off = (resize - input_size) // 2
    return np.ascontiguousarray(x[off:off + input_size, off:off + input_size])


def read_rgb(path: str) -> np.ndarray:
    """Decode one image file to ``(H, W, 3) uint8`` RGB."""
    from facenet_platform.core.images import read_image

    return read_image(path)


def standardize(x: np.ndarray, mode: str) -> np.ndarray:
    """uint8 crops -> float32 network input with ``core.standardization.STANDARDIZATIONS[mode]``
    (``prewhiten`` per image, ``fixed`` (x - 127.5) / 128), exactly as FaceEmbedder does."""
    from facenet_platform.core.standardization import STANDARDIZATIONS

    if mode not in STANDARDIZATIONS:
        raise ValueError(f"unknown standardization {mode!r}; choices: {sorted(STANDARDIZATIONS)}")
    return STANDARDIZATIONS[mode](x)


# ------------------------------------------------------------------------------------------
# Ray Data


class _TrainPreprocessor:
    """``map_batches`` callable: decoded images -> centre crop + resize, person -> label."""

    def __init__(self, name_to_label: dict[str, int], center_crop: int | None, resize: int):
        self.name_to_label = name_to_label
        self.center_crop = center_crop
        self.resize = resize

    def __call__(self, batch: dict) -> dict:
        images = [center_crop_resize(np.asarray(img), self.center_crop, self.resize)
                  for img in batch["image"]]
        labels = [self.name_to_label[PurePosixPath(str(p).replace("\\", "/")).parent.name]
                  for p in batch["path"]]
        return {"image": np.stack(images), "label": np.asarray(labels, np.int64)}


def build_train_dataset(index: DatasetIndex, center_crop: int | None, resize: int,
                        override_num_blocks: int | None = None):
    """Ray Dataset of ``{"image": (resize, resize, 3) uint8, "label": int64}`` rows."""
    import ray.data

    ds = ray.data.read_images(list(index.paths), mode="RGB", include_paths=True,
                              override_num_blocks=override_num_blocks)
    pre = _TrainPreprocessor({n: i for i, n in enumerate(index.names)}, center_crop, resize)
    return ds.map_batches(pre, batch_format="numpy", batch_size=64)


class _EvalPreprocessor:
    def __init__(self, path_to_index: dict[str, int], center_crop, resize, input_size):
        self.path_to_index = path_to_index
        self.args = (center_crop, resize, input_size)

    def __call__(self, batch: dict) -> dict:
        images = [eval_crop(np.asarray(img), *self.args) for img in batch["image"]]
        idx = [self.path_to_index[_norm(p)] for p in batch["path"]]
        return {"image": np.stack(images), "index": np.asarray(idx, np.int64)}


def _norm(path) -> str:
    return os.path.normpath(str(path)).replace("\\", "/")


@dataclass
class ValidationSet:
    """Pairs for verification accuracy: ``paths[idx1[k]]`` vs ``paths[idx2[k]]``."""

    paths: list[str]
    idx1: np.ndarray
    idx2: np.ndarray
    issame: np.ndarray
    folds: np.ndarray

    def __len__(self) -> int:
        return len(self.issame)

    def to_dict(self) -> dict:
        return {"paths": self.paths, "idx1": self.idx1.tolist(), "idx2": self.idx2.tolist(),
                "issame": self.issame.tolist(), "folds": self.folds.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ValidationSet":
        return cls(list(d["paths"]), np.asarray(d["idx1"], np.int64),
                   np.asarray(d["idx2"], np.int64), np.asarray(d["issame"], bool),
                   np.asarray(d["folds"], np.int64))


def load_validation_pairs(pairs_file: str, lfw_dir: str | None = None, *,
                          max_pairs: int | None = None, n_folds: int = 10) -> ValidationSet:
    """Read an LFW pairs file; keep ``max_pairs`` evenly spaced pairs (half matched, half
    mismatched); a single-fold file (View 1) is split into ``n_folds`` interleaved folds so
    that the accuracy threshold is chosen on other pairs than it is measured on."""
    from facenet_platform.core.lfw import read_pairs

    pairs = read_pairs(pairs_file, lfw_dir, check_exists=True)
    keep = np.arange(len(pairs))
    if max_pairs is not None and max_pairs < len(pairs):
        chosen = []
        for same in (True, False):
            members = np.flatnonzero(pairs.issame == same)
            k = max(1, min(len(members), max_pairs // 2))
            chosen.append(members[np.linspace(0, len(members) - 1, k).round().astype(int)])
        keep = np.unique(np.concatenate(chosen))
    issame = pairs.issame[keep]
    if pairs.n_folds == 1:
        folds = np.empty(len(keep), np.int64)
        for same in (True, False):
            members = np.flatnonzero(issame == same)
            folds[members] = np.arange(len(members)) % n_folds
    else:
        folds = pairs.folds[keep]
    p1 = [_norm(pairs.paths1[i]) for i in keep]
    p2 = [_norm(pairs.paths2[i]) for i in keep]
    unique = list(dict.fromkeys(x for pair in zip(p1, p2) for x in pair))
    where = {p: i for i, p in enumerate(unique)}
    return ValidationSet(unique, np.array([where[p] for p in p1]), np.array([where[p] for p in p2]),
                         issame.astype(bool), folds)


def build_val_dataset(val: ValidationSet, center_crop, resize, input_size):
    """Ray Dataset of ``{"image": (S, S, 3) uint8, "index": int64}`` (index into val.paths)."""
    import ray.data

    ds = ray.data.read_images(list(val.paths), mode="RGB", include_paths=True)
    pre = _EvalPreprocessor({p: i for i, p in enumerate(val.paths)}, center_crop, resize,
                            input_size)
    return ds.map_batches(pre, batch_format="numpy", batch_size=64)


def load_eval_crops(paths: Iterable[str], center_crop, resize, input_size) -> np.ndarray:
    """Without Ray: ``(N, S, S, 3) uint8`` eval crops of image files (export checks, benchmarks)."""
    return np.stack([eval_crop(read_rgb(p), center_crop, resize, input_size) for p in paths])


# ------------------------------------------------------------------------------------------
# worker side


def collect_rows(iterator, columns: tuple[str, ...], keep=None, batch_size: int = 256) -> dict:
    """Every row of a Ray DataIterator as NumPy arrays, optionally filtered by ``keep(batch)``
    (a boolean mask)."""
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for batch in iterator.iter_batches(batch_size=batch_size, batch_format="numpy"):
        mask = keep(batch) if keep is not None else slice(None)
        for c in columns:
            parts[c].append(np.asarray(batch[c])[mask])
    return {c: (np.concatenate(v) if v else np.zeros((0,))) for c, v in parts.items()}


class IdentitySampler:
    """Draws ``people`` identities x ``per_person`` images from a local pool.

    Identities are drawn without replacement (with replacement only when the pool has fewer
    people than asked); images without replacement, or with replacement for a person with
    fewer than ``per_person`` images (the copies get different random crops and flips).
    """

    def __init__(self, labels: np.ndarray, people: int, per_person: int):
        labels = np.asarray(labels)
        order = np.argsort(labels, kind="stable")
        uniq, starts = np.unique(labels[order], return_index=True)
        self.by_label = [order[s:e] for s, e in zip(starts, list(starts[1:]) + [len(order)])]
        self.labels = uniq
        self.people = people
        self.per_person = per_person
        if len(uniq) < people:
            logger.warning("only %d identities on this worker for %d people per batch: people "
                           "are drawn with replacement", len(uniq), people)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(indices into the pool, labels)``, both ``(people * per_person,)``."""
        chosen = rng.choice(len(self.labels), self.people, replace=len(self.labels) < self.people)
        idx = []
        for c in chosen:
            pool = self.by_label[c]
            idx.append(rng.choice(pool, self.per_person, replace=len(pool) < self.per_person))
        idx = np.concatenate(idx)
        return idx, np.repeat(self.labels[chosen], self.per_person)


def augment(images: np.ndarray, input_size: int, rng: np.random.Generator, *,
            random_crop: bool = True, random_flip: bool = True,
            random_rotate: float = 0.0) -> np.ndarray:
    """``(N, R, R, 3) uint8`` -> ``(N, S, S, 3) uint8``: random (or centre) crop, random flip,
    optional random rotation by up to ``random_rotate`` degrees (before cropping)."""
    n, r = images.shape[0], images.shape[1]
    out = np.empty((n, input_size, input_size, 3), np.uint8)
    span = r - input_size
    for i in range(n):
        img = images[i]
        if random_rotate:
            import cv2

            angle = rng.uniform(-random_rotate, random_rotate)
            m = cv2.getRotationMatrix2D((r / 2.0, r / 2.0), angle, 1.0)
            img = cv2.warpAffine(img, m, (r, r), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT)
        if random_crop and span > 0:
            top, left = rng.integers(0, span + 1, size=2)
        else:
            top = left = span // 2
        crop = img[top:top + input_size, left:left + input_size]
        if random_flip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = crop
    return out
