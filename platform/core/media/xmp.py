"""XMP face regions (Metadata Working Group ``mwg-rs:Regions``): read, match, write sidecars.

digiKam, Lightroom, Picasa, Mylio and others store named faces as MWG regions, in the file's
own XMP packet or in a ``.xmp`` sidecar next to it (``photo.jpg.xmp``, digiKam's default, or
``photo.xmp``, Lightroom's). A region is a rectangle in *normalised* coordinates: ``stArea:x``,
``stArea:y`` are its centre and ``stArea:w``, ``stArea:h`` its size, all as fractions of the
image. Per the MWG guidelines (2.0, 5.9) the region applies to the *stored* image: when the
file's Orientation rotates it for display, the same rotation must be applied to the regions.

* :func:`read_regions` returns a file's regions (the sidecar wins when it has any; the in-file
  packet otherwise) as :class:`FaceRegion`\\ s in stored coordinates.
* :func:`regions_to_display` maps them onto the decoded image (orientation, then the sideways
  retry's rotation), :func:`match_regions` pairs each named region with a detected face
  (intersection over union, or each centre inside the other box; one-to-one, best first).
* :func:`write_sidecar` writes named faces back as ``<photo>.xmp`` (replacing only the
  ``mwg-rs:Regions`` of an existing sidecar, keeping the rest); the photo itself is never
  opened for writing.

Safety: XML is parsed by ``defusedxml`` with DTDs refused (no entity expansion, no external
entities: a "billion laughs" sidecar raises :class:`~facenet_platform.core.errors.XmpError`),
packets and sidecars above :data:`MAX_XMP_BYTES` are refused, and at most
:data:`MAX_REGIONS` regions are read per file.
"""

from __future__ import annotations

import logging
import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from facenet_platform.core.errors import XmpError

__all__ = ["FaceRegion", "MAX_REGIONS", "MAX_XMP_BYTES", "NamedFace", "extract_xmp_packet",
           "match_regions", "orient_points", "parse_regions", "read_regions",
           "regions_to_display", "sidecar_paths", "write_sidecar", "write_sidecars",
           "unorient_box"]

logger = logging.getLogger(__name__)

#: Largest XMP packet or sidecar read (bytes).
MAX_XMP_BYTES: int = 4 * 1024 * 1024
#: Regions read per file at most.
MAX_REGIONS: int = 1000

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "mwg-rs": "http://www.metadataworkinggroup.com/schemas/regions/",
    "stArea": "http://ns.adobe.com/xmp/sType/Area#",
    "stDim": "http://ns.adobe.com/xap/1.0/sType/Dimensions#",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


@dataclass(frozen=True)
class FaceRegion:
    """One MWG region, normalised to the stored image (0..1).

    Attributes:
        name: the person's name (``""`` when the region is unnamed).
        x, y: centre of the region (fractions of the stored width/height).
        w, h: size of the region (fractions).
        type: ``"Face"`` (also ``"Pet"``, ``"Focus"``... which are skipped by readers of faces).
    """

    name: str
    x: float
    y: float
    w: float
    h: float
    type: str = "Face"

    @property
    def box(self) -> tuple[float, float, float, float]:
        """``(x1, y1, x2, y2)`` normalised."""
        return (self.x - self.w / 2, self.y - self.h / 2, self.x + self.w / 2, self.y + self.h / 2)


@dataclass(frozen=True)
class NamedFace:
    """A face to write: its name and box ``(x1, y1, x2, y2)`` in pixels of the decoded image."""

    name: str
    box: tuple[float, float, float, float]


# --------------------------------------------------------------------------------------------
# reading


def extract_xmp_packet(data: bytes) -> bytes | None:
    """The first ``<x:xmpmeta>...</x:xmpmeta>`` packet in a file's bytes (JPEG APP1, PNG iTXt,
    TIFF/DNG tag 700, HEIF ``mime`` item, WebP ``XMP `` chunk all store it verbatim), or None.

    Raises:
        XmpError: the packet is larger than :data:`MAX_XMP_BYTES`.
    """
    view = bytes(data) if not isinstance(data, bytes) else data
    start = view.find(b"<x:xmpmeta")
    if start < 0:
        return None
    end = view.find(b"</x:xmpmeta>", start)
    if end < 0:
        return None
    end += len(b"</x:xmpmeta>")
    if end - start > MAX_XMP_BYTES:
        raise XmpError(f"XMP packet of {end - start:,} bytes exceeds {MAX_XMP_BYTES:,}")
    return view[start:end]


def _parse_xml(xml: bytes, source: str) -> ET.Element:
    import defusedxml.ElementTree as DET
    from defusedxml import DefusedXmlException

    if len(xml) > MAX_XMP_BYTES:
        raise XmpError(f"{source}: XMP of {len(xml):,} bytes exceeds {MAX_XMP_BYTES:,}")
    try:
        return DET.fromstring(xml, forbid_dtd=True, forbid_entities=True,
                              forbid_external=True)
    except DefusedXmlException as exc:
        raise XmpError(f"{source}: XMP refused ({type(exc).__name__}: DTDs and entities are "
                       "not allowed)") from None
    except ET.ParseError as exc:
        raise XmpError(f"{source}: malformed XMP ({exc})") from None


def _prop(elem: ET.Element, prefix: str, name: str) -> str | None:
    """An RDF property written as an attribute or as a child element's text."""
    key = _q(prefix, name)
    if key in elem.attrib:
        return elem.attrib[key]
    child = elem.find(key)
    if child is not None:
        if child.text and child.text.strip():
            return child.text.strip()
        # rdf:Alt/rdf:Bag of one value (some writers wrap names)
        li = child.find(f".//{_q('rdf', 'li')}")
        if li is not None and li.text:
            return li.text.strip()
    return None


def _struct(elem: ET.Element, prefix: str, name: str) -> ET.Element | None:
    """A struct property (``parseType="Resource"`` element, or its ``rdf:Description`` child)."""
    child = elem.find(_q(prefix, name))
    if child is None:
        return None
    desc = child.find(_q("rdf", "Description"))
    return desc if desc is not None else child


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except ValueError:
        return None
    return out if np.isfinite(out) else None


@dataclass(frozen=True)
class XmpRegions:
    """The regions of one XMP document and what they apply to."""

    regions: list[FaceRegion]
    applied_width: int | None
    applied_height: int | None
    source: str


def parse_regions(xml: bytes, *, source: str = "<xmp>") -> XmpRegions:
    """Read the MWG regions of an XMP document (packet or sidecar).

    Both RDF spellings are read: properties as attributes (digiKam, exiftool) or as child
    elements (Lightroom, Picasa); regions in units other than ``normalized`` are skipped.

    Raises:
        XmpError: malformed XML, a DTD/entity, or over :data:`MAX_XMP_BYTES`.
    """
    root = _parse_xml(xml, source)
    regions: list[FaceRegion] = []
    width = height = None
    for container in root.iter(_q("mwg-rs", "Regions")):
        info = container.find(_q("rdf", "Description"))
        info = info if info is not None else container
        dims = _struct(info, "mwg-rs", "AppliedToDimensions")
        if dims is not None:
            w, h = _float(_prop(dims, "stDim", "w")), _float(_prop(dims, "stDim", "h"))
            if w and h and w > 0 and h > 0:
                width, height = int(w), int(h)
        region_list = info.find(_q("mwg-rs", "RegionList"))
        if region_list is None:
            continue
        for li in region_list.iter(_q("rdf", "li")):
            if len(regions) >= MAX_REGIONS:
                logger.warning("%s: more than %d regions; the rest are ignored", source,
                               MAX_REGIONS)
                break
            desc = li.find(_q("rdf", "Description"))
            desc = desc if desc is not None else li
            area = _struct(desc, "mwg-rs", "Area")
            if area is None:
                continue
            unit = (_prop(area, "stArea", "unit") or "normalized").lower()
            vals = [_float(_prop(area, "stArea", k)) for k in ("x", "y", "w", "h")]
            if unit != "normalized" or any(v is None for v in vals):
                continue
            x, y, w, h = (float(v) for v in vals)  # type: ignore[arg-type]
            if w <= 0 or h <= 0 or w > 1.5 or h > 1.5:
                continue
            regions.append(FaceRegion(name=(_prop(desc, "mwg-rs", "Name") or "").strip(),
                                      x=x, y=y, w=w, h=h,
                                      type=_prop(desc, "mwg-rs", "Type") or "Face"))
    return XmpRegions(regions, width, height, source)


def sidecar_paths(path: str) -> list[str]:
    """Sidecar names looked for, in order: ``photo.jpg.xmp`` (digiKam), ``photo.xmp``
    (Lightroom), each also with an upper-case ``.XMP``."""
    stem = os.path.splitext(path)[0]
    return [path + ".xmp", path + ".XMP", stem + ".xmp", stem + ".XMP"]


def read_regions(path: str, data: bytes | None = None) -> XmpRegions | None:
    """A photo's face regions: its sidecar's when a sidecar has regions, else the in-file
    packet's; None when neither has any.

    Args:
        path: the photo's local path (sidecars are looked for next to it).
        data: the photo's bytes when already read (else the in-file packet is not looked at).

    Raises:
        XmpError: a sidecar or packet is malformed or refused.
    """
    for candidate in (sidecar_paths(path) if path else []):
        try:
            size = os.path.getsize(candidate)
        except OSError:
            continue
        if size > MAX_XMP_BYTES:
            raise XmpError(f"{candidate}: sidecar of {size:,} bytes exceeds {MAX_XMP_BYTES:,}")
        with open(candidate, "rb") as handle:
            found = parse_regions(handle.read(), source=candidate)
        if found.regions:
            return found
    if data is not None:
        packet = extract_xmp_packet(data)
        if packet is not None:
            found = parse_regions(packet, source=f"{path} (XMP)")
            if found.regions:
                return found
    return None


# --------------------------------------------------------------------------------------------
# geometry


def orient_points(points: np.ndarray, orientation: int) -> np.ndarray:
    """Map normalised ``(..., 2)`` points of the stored image to the image displayed with EXIF
    ``orientation`` (what ``PIL.ImageOps.exif_transpose`` does to pixels)."""
    p = np.asarray(points, np.float64)
    x, y = p[..., 0], p[..., 1]
    table = {
        2: (1 - x, y), 3: (1 - x, 1 - y), 4: (x, 1 - y), 5: (y, x),
        6: (1 - y, x), 7: (1 - y, 1 - x), 8: (y, 1 - x),
    }
    ox, oy = table.get(int(orientation), (x, y))
    return np.stack([ox, oy], axis=-1)


_INVERSE = {6: 8, 8: 6}
_ROTATION_AS_ORIENTATION = {0: 1, 90: 6, 180: 3, 270: 8}


def _map_box(box: Sequence[float], orientation: int) -> tuple[float, float, float, float]:
    corners = orient_points(np.array([[box[0], box[1]], [box[2], box[3]]]), orientation)
    x1, x2 = sorted(corners[:, 0])
    y1, y2 = sorted(corners[:, 1])
    return (float(x1), float(y1), float(x2), float(y2))


def regions_to_display(regions: Iterable[FaceRegion], orientation: int,
                       rotation: int = 0) -> list[tuple[float, float, float, float]]:
    """Regions as normalised ``(x1, y1, x2, y2)`` boxes of the decoded image: the file's
    orientation, then the sideways retry's ``rotation`` (degrees clockwise)."""
    out = []
    for region in regions:
        box = _map_box(region.box, orientation or 1)
        out.append(_map_box(box, _ROTATION_AS_ORIENTATION.get(int(rotation) % 360, 1)))
    return out


def unorient_box(box: Sequence[float], orientation: int, rotation: int = 0
                 ) -> tuple[float, float, float, float]:
    """Inverse of :func:`regions_to_display` for one normalised box: decoded -> stored."""
    back = _ROTATION_AS_ORIENTATION.get(int(rotation) % 360, 1)
    box = _map_box(box, _INVERSE.get(back, back))
    o = orientation or 1
    return _map_box(box, _INVERSE.get(o, o))


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _inside(point: tuple[float, float], box: Sequence[float]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def match_regions(region_boxes: Sequence[Sequence[float]], face_boxes: np.ndarray,
                  width: int, height: int, min_iou: float = 0.3) -> list[tuple[int, int]]:
    """Pair regions with detected faces, one-to-one, best overlap first.

    A pair qualifies when their IoU is at least ``min_iou``, or when each box's centre lies
    inside the other (people draw regions larger or smaller than a detector's box).

    Args:
        region_boxes: normalised ``(x1, y1, x2, y2)`` boxes of the decoded image
            (:func:`regions_to_display`).
        face_boxes: ``(N, 4)`` detected boxes in pixels of the decoded image.
        width, height: the decoded image's size (px).
        min_iou: the IoU that qualifies a pair on its own.

    Returns:
        ``(region index, face index)`` pairs.
    """
    faces = np.asarray(face_boxes, np.float64).reshape(-1, 4) / [width, height, width, height]
    candidates = []
    for r, rb in enumerate(region_boxes):
        rc = ((rb[0] + rb[2]) / 2, (rb[1] + rb[3]) / 2)
        for f, fb in enumerate(faces):
            iou = _iou(rb, fb)
            fc = ((fb[0] + fb[2]) / 2, (fb[1] + fb[3]) / 2)
            if iou >= min_iou or (_inside(rc, fb) and _inside(fc, rb)):
                candidates.append((iou, r, f))
    pairs, used_r, used_f = [], set(), set()
    for iou, r, f in sorted(candidates, reverse=True):
        if r in used_r or f in used_f:
            continue
        used_r.add(r), used_f.add(f)
        pairs.append((r, f))
    return sorted(pairs)


# --------------------------------------------------------------------------------------------
# writing


def _region_element(face: FaceRegion) -> ET.Element:
    li = ET.Element(_q("rdf", "li"))
    desc = ET.SubElement(li, _q("rdf", "Description"))
    desc.set(_q("mwg-rs", "Name"), face.name)
    desc.set(_q("mwg-rs", "Type"), face.type)
    area = ET.SubElement(desc, _q("mwg-rs", "Area"))
    for key, value in (("x", face.x), ("y", face.y), ("w", face.w), ("h", face.h)):
        area.set(_q("stArea", key), f"{value:.6f}")
    area.set(_q("stArea", "unit"), "normalized")
    return li


def _regions_element(regions: list[FaceRegion], width: int, height: int) -> ET.Element:
    container = ET.Element(_q("mwg-rs", "Regions"), {_q("rdf", "parseType"): "Resource"})
    dims = ET.SubElement(container, _q("mwg-rs", "AppliedToDimensions"))
    dims.set(_q("stDim", "w"), str(int(width)))
    dims.set(_q("stDim", "h"), str(int(height)))
    dims.set(_q("stDim", "unit"), "pixel")
    bag = ET.SubElement(ET.SubElement(container, _q("mwg-rs", "RegionList")), _q("rdf", "Bag"))
    for region in regions:
        bag.append(_region_element(region))
    return container


def write_sidecar(photo_path: str, faces: Sequence[NamedFace], *, width: int, height: int,
                  orientation: int = 0, rotation: int = 0,
                  sidecar_path: str | None = None) -> str:
    """Write named faces as MWG regions into the photo's ``.xmp`` sidecar (never the photo).

    Args:
        photo_path: the photo (only its name is used).
        faces: names and pixel boxes in the *decoded* image (orientation and sideways retry
            applied), as the faces table stores them.
        width, height: the decoded image's size (px).
        orientation: the EXIF orientation the decoder applied (regions are stored relative to
            the stored image, MWG 5.9); ``rotation``: the sideways retry's angle.
        sidecar_path: where to write; default ``<photo>.xmp`` (digiKam's name; an existing
            ``<stem>.xmp`` is updated instead when it exists and ``<photo>.xmp`` does not).

    Returns:
        The sidecar's path. An existing sidecar keeps everything except its
        ``mwg-rs:Regions``, which are replaced; the write is atomic (temp file + rename).

    Raises:
        XmpError: an existing sidecar is malformed or refused (it is left untouched).
    """
    if sidecar_path is None:
        sidecar_path = photo_path + ".xmp"
        stem_sidecar = os.path.splitext(photo_path)[0] + ".xmp"
        if not os.path.exists(sidecar_path) and os.path.exists(stem_sidecar):
            sidecar_path = stem_sidecar
    swap = (orientation or 1) in (5, 6, 7, 8)
    turned = (rotation // 90) % 2 == 1
    stored_w, stored_h = (height, width) if swap != turned else (width, height)
    regions = []
    for face in faces:
        x1, y1, x2, y2 = face.box
        norm = (x1 / width, y1 / height, x2 / width, y2 / height)
        sx1, sy1, sx2, sy2 = unorient_box(norm, orientation, rotation)
        regions.append(FaceRegion(face.name, (sx1 + sx2) / 2, (sy1 + sy2) / 2, sx2 - sx1,
                                  sy2 - sy1))
    new_regions = _regions_element(regions, stored_w, stored_h)
    if os.path.exists(sidecar_path):
        with open(sidecar_path, "rb") as handle:
            root = _parse_xml(handle.read(), sidecar_path)
    else:
        root = ET.Element(_q("x", "xmpmeta"))
        ET.SubElement(ET.SubElement(root, _q("rdf", "RDF")), _q("rdf", "Description"),
                      {_q("rdf", "about"): ""})
    descriptions = list(root.iter(_q("rdf", "Description")))
    holder = None
    for desc in descriptions:
        for old in desc.findall(_q("mwg-rs", "Regions")):
            desc.remove(old)
            holder = holder or desc
    if holder is None:
        rdf = root if root.tag == _q("rdf", "RDF") else root.find(_q("rdf", "RDF"))
        if rdf is None:
            raise XmpError(f"{sidecar_path}: existing sidecar has no rdf:RDF element")
        holder = rdf.find(_q("rdf", "Description"))
        if holder is None:
            holder = ET.SubElement(rdf, _q("rdf", "Description"), {_q("rdf", "about"): ""})
    holder.append(new_regions)
    body = ET.tostring(root, encoding="unicode")
    text = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n' + body
            + '\n<?xpacket end="w"?>\n')
    folder = os.path.dirname(os.path.abspath(sidecar_path))
    fd, tmp = tempfile.mkstemp(prefix=".xmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, sidecar_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    logger.info("%s: %d named faces written", sidecar_path, len(regions))
    return sidecar_path


def write_sidecars(faces: Iterable[dict]) -> list[str]:
    """Write the named faces of an index's faces table as sidecars, one per photo.

    Args:
        faces: rows of the faces table (``read_faces(...).to_pylist()``) with a ``name`` key
            added (``""``/None: not written); needs ``path``, ``box``, ``image_width``,
            ``image_height``, ``orientation``, ``rotation`` and ``frame_time``. Faces of video
            or animation frames (``frame_time`` not null) and paths that are URIs are skipped.

    Returns:
        The sidecars written (``<photo>.xmp``), in path order.
    """
    by_path: dict[str, list[dict]] = {}
    for row in faces:
        if not row.get("name") or row.get("frame_time") is not None or "://" in row["path"]:
            continue
        by_path.setdefault(row["path"], []).append(row)
    written = []
    for path in sorted(by_path):
        rows = by_path[path]
        first = rows[0]
        written.append(write_sidecar(
            path, [NamedFace(str(r["name"]), tuple(float(v) for v in r["box"])) for r in rows],
            width=int(first["image_width"]), height=int(first["image_height"]),
            orientation=int(first.get("orientation") or 0),
            rotation=int(first.get("rotation") or 0)))
    return written
