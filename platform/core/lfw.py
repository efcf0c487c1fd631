"""LFW layout and pair/people file parsing.

Labeled Faces in the Wild (the deep-funneled variant) is laid out as::

    <lfw_dir>/
        lfw-deepfunneled/<Name>/<Name>_<NNNN>.jpg   13,233 images of 5,749 people
        pairs.txt                                   View 2: "10 300", ten folds of 300 + 300 pairs
        pairsDevTrain.txt, pairsDevTest.txt         View 1: "1100" / "500", one block of n + n pairs
        people.txt                                  View 2 people, one block per fold
        peopleDevTrain.txt, peopleDevTest.txt       View 1 people

A pairs file is a header line followed, per fold, by ``n`` *matched* pairs ``name<TAB>i<TAB>j``
(two images of the same person) and then ``n`` *mismatched* pairs ``name1<TAB>i<TAB>name2<TAB>j``.
The View 2 header is ``<n_folds> <n>``; the View 1 header is a single ``<n>`` (one fold).

Nothing here assumes the dataset exists: functions that need it raise
:class:`~facenet_platform.core.errors.DatasetError` with what is missing and how to point at it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from facenet_platform.core.errors import DatasetError
from facenet_platform.core.images import is_image_path

logger = logging.getLogger(__name__)

#: Environment variable that points at the LFW directory.
LFW_DIR_ENV = "LFW_DIR"
#: Where the LFW directory is looked for when ``$LFW_DIR`` is not set, relative to the current
#: working directory (the repository root in development: ``<repo>/../shared/datasets/lfw``).
DEFAULT_LFW_RELATIVE = Path("..") / "shared" / "datasets" / "lfw"
#: The sub-folder of ``lfw_dir`` that holds one folder per person.
IMAGES_SUBDIR = "lfw-deepfunneled"

_MAX_LISTED_MISSING = 5


def default_lfw_dir() -> Path:
    """The LFW directory: ``$LFW_DIR`` if set (and non-empty), else ``../shared/datasets/lfw``
    relative to the *current working directory*.

    The directory is not required to exist; callers check (``Path.is_dir()``) and tests skip.
    """
    env = os.environ.get(LFW_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    return Path.cwd() / DEFAULT_LFW_RELATIVE


def image_root(lfw_dir: str | os.PathLike[str]) -> Path:
    """The folder that holds the person folders: ``lfw_dir/lfw-deepfunneled`` when that exists,
    else ``lfw_dir`` itself (a directory that directly contains the person folders)."""
    lfw_dir = Path(lfw_dir)
    sub = lfw_dir / IMAGES_SUBDIR
    return sub if sub.is_dir() else lfw_dir


def _image_path(root: Path, name: str, number: int) -> Path:
    return root / name / f"{name}_{number:04d}.jpg"


def lfw_image_path(lfw_dir: str | os.PathLike[str], name: str, number: int) -> Path:
    """``lfw_dir/lfw-deepfunneled/<name>/<name>_<NNNN>.jpg`` (``NNNN``: the 1-based image number,
    zero-padded to four digits). If ``lfw_dir`` has no ``lfw-deepfunneled`` folder it is taken to
    contain the person folders directly. The file is not required to exist."""
    if not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise DatasetError(f"invalid LFW person name {name!r}")
    number = int(number)
    if number < 1:
        raise DatasetError(f"invalid LFW image number {number} for {name!r}: numbers start at 1")
    return _image_path(image_root(lfw_dir), name, number)


@dataclass(frozen=True, eq=False)
class PairList:
    """Verification pairs: ``paths1[k]`` vs ``paths2[k]``, same person iff ``issame[k]``, in fold
    ``folds[k]`` (0-based; View 1 files give a single fold 0)."""

    paths1: list[Path]
    paths2: list[Path]
    issame: np.ndarray  # (N,) bool
    folds: np.ndarray  # (N,) int

    def __post_init__(self) -> None:
        n = len(self.paths1)
        issame = np.asarray(self.issame, dtype=bool).reshape(-1)
        folds = np.asarray(self.folds, dtype=np.int64).reshape(-1)
        if len(self.paths2) != n or issame.shape[0] != n or folds.shape[0] != n:
            raise DatasetError(
                f"PairList fields disagree in length: paths1={n}, paths2={len(self.paths2)}, "
                f"issame={issame.shape[0]}, folds={folds.shape[0]}"
            )
        object.__setattr__(self, "issame", issame)
        object.__setattr__(self, "folds", folds)

    def __len__(self) -> int:
        return len(self.paths1)

    def __repr__(self) -> str:
        return (
            f"PairList(n_pairs={len(self)}, n_same={int(self.issame.sum())}, "
            f"n_folds={self.n_folds})"
        )

    @property
    def n_folds(self) -> int:
        """Number of distinct fold ids."""
        return int(np.unique(self.folds).size)

    def unique_paths(self) -> list[Path]:
        """Every image once, in order of first appearance (``paths1[0], paths2[0], paths1[1], ...``)."""
        seen: dict[Path, None] = {}
        for p1, p2 in zip(self.paths1, self.paths2):
            seen.setdefault(p1, None)
            seen.setdefault(p2, None)
        return list(seen)

    def pair_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """``(idx1, idx2)``: indices into :meth:`unique_paths` of each pair's two images, so that
        embeddings computed once per unique image give ``emb[idx1]`` vs ``emb[idx2]``."""
        index = {p: i for i, p in enumerate(self.unique_paths())}
        idx1 = np.fromiter((index[p] for p in self.paths1), dtype=np.int64, count=len(self))
        idx2 = np.fromiter((index[p] for p in self.paths2), dtype=np.int64, count=len(self))
        return idx1, idx2

    def take_folds(self, n: int) -> "PairList":
        """The pairs of the first ``n`` folds (by ascending fold id), e.g. for ``--limit-folds``."""
        n = int(n)
        if n < 1:
            raise DatasetError(f"take_folds: n must be >= 1, got {n}")
        keep_ids = np.unique(self.folds)[:n]
        mask = np.isin(self.folds, keep_ids)
        idx = np.flatnonzero(mask)
        return PairList(
            paths1=[self.paths1[i] for i in idx],
            paths2=[self.paths2[i] for i in idx],
            issame=self.issame[idx].copy(),
            folds=self.folds[idx].copy(),
        )

    def missing_paths(self) -> list[Path]:
        """The unique image paths that do not exist as files."""
        return [p for p in self.unique_paths() if not p.is_file()]


def _numbered_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, whitespace-split fields) of every non-blank line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: file not found; point LFW_DIR at the LFW directory "
            f"(default: {DEFAULT_LFW_RELATIVE} relative to the working directory)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if fields:
            yield lineno, fields


def _check_name(path: Path, lineno: int, name: str) -> str:
    if "/" in name or "\\" in name or name in {".", ".."}:
        raise DatasetError(f"{path.name} line {lineno}: {name!r} is not a valid LFW person name")
    return name


def _parse_int(path: Path, lineno: int, value: str, what: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise DatasetError(f"{path.name} line {lineno}: {what} {value!r} is not an integer") from None
    if number < minimum:
        raise DatasetError(f"{path.name} line {lineno}: {what} {number} must be >= {minimum}")
    return number


def read_pairs(
    pairs_file: str | os.PathLike[str],
    lfw_dir: str | os.PathLike[str] | None = None,
    *,
    check_exists: bool = False,
) -> PairList:
    """Parse an LFW pairs file: View 2 (``pairs.txt``, header ``10 300``) or View 1
    (``pairsDevTrain.txt``/``pairsDevTest.txt``, header ``1100``/``500``, one fold 0).

    Image paths are built with :func:`lfw_image_path` under ``lfw_dir`` (default: the folder
    that holds ``pairs_file``). Validates the header, the number and shape of pair lines per
    fold (``n`` matched ``name i j`` lines, then ``n`` mismatched ``name1 i name2 j`` lines);
    any problem raises :class:`DatasetError` naming the file and line. With ``check_exists``
    every referenced image must exist (the error lists the first few missing ones).
    """
    pairs_file = Path(pairs_file)
    root = image_root(pairs_file.parent if lfw_dir is None else lfw_dir)
    name = pairs_file.name
    lines = _numbered_lines(pairs_file)

    header = next(lines, None)
    if header is None:
        raise DatasetError(f"{name}: file is empty; expected a header line such as '10 300' or '500'")
    hline, hfields = header
    if len(hfields) == 2:
        n_folds = _parse_int(pairs_file, hline, hfields[0], "number of folds", 1)
        per_fold = _parse_int(pairs_file, hline, hfields[1], "pairs per fold", 1)
    elif len(hfields) == 1:
        n_folds = 1
        per_fold = _parse_int(pairs_file, hline, hfields[0], "number of pairs", 1)
    else:
        raise DatasetError(
            f"{name} line {hline}: header {' '.join(hfields)!r} is not '<n_folds> <n_per_fold>' "
            "(View 2) or '<n>' (View 1)"
        )

    paths1: list[Path] = []
    paths2: list[Path] = []
    issame: list[bool] = []
    folds: list[int] = []
    expected = n_folds * 2 * per_fold
    last_line = hline
    for k in range(expected):
        item = next(lines, None)
        if item is None:
            raise DatasetError(
                f"{name}: ends after line {last_line} with {k} pair lines; the header "
                f"({n_folds} fold(s) x ({per_fold} matched + {per_fold} mismatched)) "
                f"promises {expected}"
            )
        lineno, fields = item
        last_line = lineno
        fold, within = divmod(k, 2 * per_fold)
        matched = within < per_fold
        where = f"{name} line {lineno} (fold {fold + 1}, "
        if matched:
            if len(fields) != 3:
                raise DatasetError(
                    where + f"matched pair {within + 1} of {per_fold}): expected 'name i j', "
                    f"got {len(fields)} fields: {' '.join(fields)!r}"
                )
            person, i_s, j_s = fields
            _check_name(pairs_file, lineno, person)
            i = _parse_int(pairs_file, lineno, i_s, "image number", 1)
            j = _parse_int(pairs_file, lineno, j_s, "image number", 1)
            if i == j:
                raise DatasetError(where + f"matched pair): pairs image {i} of {person} with itself")
            p1, p2 = _image_path(root, person, i), _image_path(root, person, j)
        else:
            if len(fields) != 4:
                raise DatasetError(
                    where + f"mismatched pair {within - per_fold + 1} of {per_fold}): expected "
                    f"'name1 i name2 j', got {len(fields)} fields: {' '.join(fields)!r}"
                )
            person1, i_s, person2, j_s = fields
            _check_name(pairs_file, lineno, person1)
            _check_name(pairs_file, lineno, person2)
            i = _parse_int(pairs_file, lineno, i_s, "image number", 1)
            j = _parse_int(pairs_file, lineno, j_s, "image number", 1)
            if person1 == person2:
                raise DatasetError(
                    where + f"mismatched pair): both images are of {person1}; a mismatched pair "
                    "must name two different people"
                )
            p1, p2 = _image_path(root, person1, i), _image_path(root, person2, j)
        paths1.append(p1)
        paths2.append(p2)
        issame.append(matched)
        folds.append(fold)

    extra = next(lines, None)
    if extra is not None:
        raise DatasetError(
            f"{name} line {extra[0]}: unexpected extra line after the {expected} pairs the header "
            f"promises ({n_folds} fold(s) x 2 x {per_fold})"
        )

    pairs = PairList(
        paths1=paths1,
        paths2=paths2,
        issame=np.asarray(issame, dtype=bool),
        folds=np.asarray(folds, dtype=np.int64),
    )
    logger.debug("%s: %d pairs in %d fold(s) under %s", name, len(pairs), n_folds, root)
    if check_exists:
        missing = pairs.missing_paths()
        if missing:
            shown = ", ".join(str(p) for p in missing[:_MAX_LISTED_MISSING])
            more = f" and {len(missing) - _MAX_LISTED_MISSING} more" if len(missing) > _MAX_LISTED_MISSING else ""
            raise DatasetError(
                f"{name}: {len(missing)} of {len(pairs.unique_paths())} referenced images are "
                f"missing under {root}: {shown}{more}; check LFW_DIR points at the LFW directory"
            )
    return pairs


def read_people(people_file: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """Parse an LFW people file into ``[(name, n_images), ...]`` in file order.

    ``peopleDevTrain.txt``/``peopleDevTest.txt``: a count line ``N`` then ``N`` lines ``name n``.
    ``people.txt``: a number-of-folds line, then per fold a count line and that many
    ``name n`` lines; the folds are flattened.
    """
    people_file = Path(people_file)
    name = people_file.name
    items = list(_numbered_lines(people_file))
    if not items:
        raise DatasetError(f"{name}: file is empty; expected a count line")
    hline, hfields = items[0]
    if len(hfields) != 1:
        raise DatasetError(f"{name} line {hline}: expected a single count, got {' '.join(hfields)!r}")
    first = _parse_int(people_file, hline, hfields[0], "count", 0)
    # people.txt: the first count is a number of folds, followed by a per-fold count line.
    blocked = len(items) > 1 and len(items[1][1]) == 1
    blocks = first if blocked else 1
    pos = 1
    people: list[tuple[str, int]] = []
    for _ in range(blocks):
        if blocked:
            if pos >= len(items):
                raise DatasetError(f"{name}: ends before all {first} fold blocks were read")
            cline, cfields = items[pos]
            if len(cfields) != 1:
                raise DatasetError(
                    f"{name} line {cline}: expected a fold's count line, got {' '.join(cfields)!r}"
                )
            count = _parse_int(people_file, cline, cfields[0], "count", 0)
            pos += 1
        else:
            count = first
        for _ in range(count):
            if pos >= len(items):
                raise DatasetError(f"{name}: ends early; a count line promises {count} people")
            lineno, fields = items[pos]
            if len(fields) != 2:
                raise DatasetError(
                    f"{name} line {lineno}: expected 'name n_images', got {' '.join(fields)!r}"
                )
            people.append((fields[0], _parse_int(people_file, lineno, fields[1], "image count", 1)))
            pos += 1
    if pos != len(items):
        raise DatasetError(f"{name} line {items[pos][0]}: unexpected extra line after the counted people")
    return people


def list_identities(lfw_dir: str | os.PathLike[str], min_images: int = 1) -> dict[str, list[Path]]:
    """``{name: [image paths, sorted]}`` from the folder tree (``lfw-deepfunneled/<name>/*.jpg``,
    or person folders directly under ``lfw_dir``), keeping people with at least ``min_images``."""
    root = image_root(lfw_dir)
    if not root.is_dir():
        raise DatasetError(
            f"LFW directory {root} does not exist; set LFW_DIR to the folder that holds "
            f"{IMAGES_SUBDIR}/"
        )
    identities: dict[str, list[Path]] = {}
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(
            p for p in person.iterdir() if is_image_path(p) and p.is_file()
        )
        if len(images) >= min_images:
            identities[person.name] = images
    return identities
