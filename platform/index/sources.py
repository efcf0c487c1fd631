"""SOURCE arguments of ``index build`` -> the list of files to index.

A SOURCE is one of:

* a **directory** (local path or a URI such as ``s3://bucket/photos``): every file under it,
  recursively, whose extension is a photo or video extension
  (:data:`facenet_platform.core.images.MEDIA_EXTENSIONS`: JPEG, PNG, WebP, GIF, BMP, TIFF,
  HEIC/HEIF, AVIF, camera RAW, MP4/MOV/MKV/WebM/AVI); other files (``.xmp`` sidecars, ...) are
  counted as ignored. The extension only picks files; decoding reads the content.
  Hidden files and folders (names starting with ``.``, e.g. ``.git``, macOS ``._x.jpg``
  resource forks) are skipped.
* a **glob** (``photos/**/*.jpg``, ``s3://bucket/2024-*/*``): the matching files, filtered to
  image extensions like a directory (``**`` spans folders).
* a **list file**: ``@list.txt`` (any name), or an existing file whose name ends in ``.txt`` or
  ``.lst``: one path per line; blank lines and lines starting with ``#`` are skipped; relative
  lines are relative to the list file's folder. Every line is itself a SOURCE (a file, folder or
  glob), except that a line is never read as a nested list.
* a **file**: taken as is, whatever its extension (a non-image then fails at decode and is
  recorded as a failure).

Paths are kept as given by the filesystem: absolute local paths (symlinks not resolved), or the
URI with its scheme for other filesystems. Every file carries its size and modification time,
which the incremental build uses as a cache key in front of the content hash.
"""

from __future__ import annotations

import fnmatch
import glob as _glob
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import pyarrow.fs as pafs

from facenet_platform.core.errors import DatasetError
from facenet_platform.core.images import MEDIA_EXTENSIONS

logger = logging.getLogger(__name__)

__all__ = ["SourceFile", "SourceListing", "filesystem_for", "list_sources", "is_uri",
           "LIST_SUFFIXES"]

#: Existing files with these suffixes given as SOURCE are read as list files.
LIST_SUFFIXES: frozenset[str] = frozenset({".txt", ".lst"})

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class SourceFile:
    """One file to index: where it is, its size in bytes and its mtime (ns since the epoch)."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class SourceListing:
    """What the SOURCE arguments expanded to."""

    files: list[SourceFile] = field(default_factory=list)
    ignored: int = 0  # files under a folder or glob that are not images (junk, sidecars, ...)
    excluded: int = 0  # files skipped because they live inside the index directory itself
    #: what the folders and globs covered, as ``("dir", root)`` or ``("glob", prefix, pattern)``:
    #: a path they cover that is not in ``files`` no longer exists (see :meth:`covers`)
    scopes: list[tuple[str, ...]] = field(default_factory=list)

    def covers(self, path: str) -> bool:
        """Whether listing these SOURCEs would have listed ``path`` if it still existed (it is
        under a listed folder or matches a listed glob, is not hidden and has an image name)."""
        if not _is_image_name(path.rsplit("/", 1)[-1]):
            return False
        for scope in self.scopes:
            if scope[0] == "dir":
                root = scope[1].rstrip("/") + "/"
                if path.startswith(root) and not any(
                        _hidden(part) for part in path[len(root):].split("/")):
                    return True
            elif (path.startswith(scope[1]) and _glob_match(path[len(scope[1]):], scope[2])
                  and not any(_hidden(part) for part in path[len(scope[1]):].split("/"))):
                return True
        return False

    def __len__(self) -> int:
        return len(self.files)


def is_uri(path: str) -> bool:
    """Whether ``path`` is a URI (``scheme://...``; ``file://`` counts) rather than a local path."""
    return "://" in path


_fs_cache: dict[str, tuple[pafs.FileSystem, str]] = {}
_fs_lock = threading.Lock()


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path on it)`` of a URI, one filesystem per ``scheme://netloc`` (cached).

    Only ``scheme://netloc/`` goes through ``FileSystem.from_uri``; the rest of the URI is
    sliced, so paths with spaces or other characters that URIs must escape work as listed.

    Raises:
        DatasetError: pyarrow does not know the scheme, or cannot open that filesystem.
    """
    scheme, rest = uri.split("://", 1)
    root = f"{scheme}://{rest.split('/', 1)[0]}"
    with _fs_lock:
        cached = _fs_cache.get(root)
        if cached is None:
            try:
                fs, root_path = pafs.FileSystem.from_uri(root + "/")
            except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError, ...
                raise DatasetError(f"{uri}: cannot open this filesystem "
                                   f"({' '.join(str(exc).split())})") from None
            # Bucket stores (s3://bucket/key -> "bucket/key") keep the netloc in the path;
            # host-based ones (file:///p, hdfs://host:port/p -> "/p") do not.
            prefix = f"{scheme}://" if root_path.strip("/") else root
            cached = _fs_cache[root] = (fs, prefix)
    fs, prefix = cached
    return fs, uri[len(prefix):]


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in MEDIA_EXTENSIONS


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _mtime_ns(info: pafs.FileInfo) -> int:
    mtime = info.mtime_ns
    return int(mtime) if mtime is not None else 0


class _Lister:
    def __init__(self, exclude_prefix: str | None):
        self.listing = SourceListing()
        self._seen: set[str] = set()
        self._exclude = exclude_prefix.rstrip("/") + "/" if exclude_prefix else None

    def add(self, path: str, size: int, mtime_ns: int) -> None:
        if self._exclude and path.startswith(self._exclude):
            self.listing.excluded += 1
            return
        if path in self._seen:
            return
        self._seen.add(path)
        self.listing.files.append(SourceFile(path, int(size), int(mtime_ns)))

    # -- local ------------------------------------------------------------------------------

    def local_dir(self, root: str) -> None:
        self.listing.scopes.append(("dir", root))
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
            for name in sorted(filenames):
                if _hidden(name):
                    continue
                if not _is_image_name(name):
                    self.listing.ignored += 1
                    continue
                self.local_file(os.path.join(dirpath, name), quiet=True)

    def local_file(self, path: str, quiet: bool = False) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            if quiet:  # vanished while listing, or a dangling symlink: the read stage reports it
                logger.debug("cannot stat %s: %s", path, exc)
            self.add(path, 0, 0)
            return
        self.add(path, st.st_size, st.st_mtime_ns)

    def local_glob(self, pattern: str) -> int:
        self.listing.scopes.append(("glob", "", pattern))
        n = 0
        for match in sorted(_glob.glob(pattern, recursive=True)):
            match = os.path.abspath(match)
            if os.path.isdir(match):
                continue
            name = os.path.basename(match)
            if not _is_image_name(name):
                self.listing.ignored += 1
                continue
            n += 1
            self.local_file(match, quiet=True)
        return n

    # -- pyarrow filesystems -----------------------------------------------------------------

    def remote(self, uri: str, *, as_glob: bool) -> int:
        base = _GLOB_CHARS.split(uri, 1)[0].rsplit("/", 1)[0] if as_glob else uri.rstrip("/")
        fs, base_path = filesystem_for(base)
        prefix = base[: len(base) - len(base_path)]
        info = fs.get_file_info(base_path)
        if not as_glob and info.type == pafs.FileType.File:
            self.add(uri, info.size or 0, _mtime_ns(info))
            return 1
        if info.type == pafs.FileType.NotFound:
            if as_glob:
                return 0
            raise DatasetError(f"{uri}: no such file or directory")
        pattern = uri[len(prefix):] if as_glob else None
        self.listing.scopes.append(("glob", prefix, pattern) if as_glob else ("dir", uri.rstrip("/")))
        n = 0
        for entry in sorted(fs.get_file_info(pafs.FileSelector(base_path, recursive=True)),
                            key=lambda e: e.path):
            if entry.type != pafs.FileType.File:
                continue
            rel = entry.path[len(base_path):].lstrip("/")
            if any(_hidden(part) for part in rel.split("/")):
                continue
            if pattern is not None and not _glob_match(entry.path, pattern):
                continue
            if not _is_image_name(entry.base_name):
                self.listing.ignored += 1
                continue
            n += 1
            self.add(prefix + entry.path, entry.size or 0, _mtime_ns(entry))
        return n


def _glob_match(path: str, pattern: str) -> bool:
    """fnmatch where ``*`` and ``?`` stay inside one folder and ``**/`` spans any number."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                regex += re.escape("[")
                i += 1
            else:
                regex += fnmatch.translate(pattern[i:end + 1])[4:-3]
                i = end + 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    return re.fullmatch(regex, path) is not None


def _read_list_file(source: str) -> tuple[str, list[str]]:
    if is_uri(source):
        fs, path = filesystem_for(source)
        try:
            with fs.open_input_stream(path) as handle:
                text = handle.read().decode("utf-8", errors="replace")
        except OSError as exc:
            raise DatasetError(f"{source}: cannot read the list file ({exc})") from None
        base = source.rsplit("/", 1)[0]
    else:
        try:
            with open(source, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError as exc:
            raise DatasetError(f"{source}: cannot read the list file ({exc.strerror or exc})") from None
        base = os.path.dirname(os.path.abspath(source))
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not is_uri(line) and not os.path.isabs(line):
            line = f"{base}/{line}" if is_uri(base) else os.path.join(base, line)
        lines.append(line)
    return source, lines


def _expand_one(lister: _Lister, source: str, *, allow_list: bool) -> None:
    if allow_list and source.startswith("@"):
        list_path, lines = _read_list_file(source[1:])
        logger.info("%s: %d entries", list_path, len(lines))
        for line in lines:
            _expand_one(lister, line, allow_list=False)
        return
    if is_uri(source):
        if _GLOB_CHARS.search(source.split("://", 1)[1]):
            if lister.remote(source, as_glob=True) == 0:
                logger.warning("%s: the glob matches no image file", source)
            return
        if allow_list and os.path.splitext(source)[1].lower() in LIST_SUFFIXES:
            fs, path = filesystem_for(source)
            if fs.get_file_info(path).type == pafs.FileType.File:
                _expand_one(lister, "@" + source, allow_list=True)
                return
        lister.remote(source, as_glob=False)
        return
    path = os.path.abspath(os.path.expanduser(source))
    if os.path.isdir(path):
        lister.local_dir(path)
    elif os.path.isfile(path):
        if allow_list and os.path.splitext(path)[1].lower() in LIST_SUFFIXES:
            _expand_one(lister, "@" + path, allow_list=True)
        else:
            lister.local_file(path)
    elif _GLOB_CHARS.search(source):
        if lister.local_glob(path) == 0:
            logger.warning("%s: the glob matches no image file", source)
    elif allow_list:
        raise DatasetError(
            f"{source}: no such file or directory (a SOURCE is a folder, a glob, an image file, "
            "or a list of paths: @list.txt)")
    else:
        # A line of a list file that names a missing file: the read stage records it as a
        # failure (stage "read"), like any other file that cannot be read.
        lister.add(path, 0, 0)


def list_sources(sources: Sequence[str] | Iterable[str], *,
                 exclude: str | None = None) -> SourceListing:
    """Expand SOURCE arguments into files (see the module docstring).

    Args:
        sources: folders, globs, files, or ``@list`` files; local paths or URIs.
        exclude: a folder whose files are never listed (the index directory itself, so that
            indexing a parent of the index does not index its contact sheets).

    Returns:
        A :class:`SourceListing`: unique files in listing order, plus the count of non-image
        files skipped.

    Raises:
        DatasetError: a SOURCE that is neither a folder, a file, a glob nor a list file.
    """
    sources = [os.fspath(s) for s in sources]
    if not sources:
        raise DatasetError("no SOURCE given: name a folder, a glob, image files or @list.txt")
    lister = _Lister(exclude)
    for source in sources:
        _expand_one(lister, source, allow_list=True)
    return lister.listing
