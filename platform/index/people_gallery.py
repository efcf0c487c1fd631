"""Named people are the gallery: what ``identify``, ``index search`` and Serve's
``/v1/identify`` match faces against.

:class:`PeopleGallery` holds one template set per visible person (hidden people are left out
entirely: never answered, never a reason to refuse) -- the templates ``people update`` and the
decisions wrote, from each person's good faces and enrolled photos -- plus the enrolled gallery
identities (``index enroll``) that no person is linked to yet (their templates are made from
their photos on load, the same way), so that an enrollment answers at once, before any
``people update``.

A face is decided as ``people update`` would decide it
(:func:`~facenet_platform.index.people_engine.identify_against_templates`): the person of the
nearest template within the people's ``assign_distance`` (the identification threshold here),
answered with that person's name; a nearest person without a name answers ``unknown`` with the
reason ``unnamed`` (and its id), a face under the quality floor ``unknown`` with the reason
``low_quality``. ``matches`` lists the nearest people (one entry each: their nearest template).

It offers the :class:`~facenet_platform.index.gallery.Gallery` reading interface the callers use
(``search``, ``identities``, ``version``, thresholds, ``model_id``, ``pipeline``, ``is_current``).
"""

from __future__ import annotations

import logging
import os
import numpy as np

from . import faiss_index as fx
from .gallery import Gallery, GalleryError, Match, check_same_model
from .layout import IndexLayout, read_manifest
from .people_store import PeopleState, PeopleStore

logger = logging.getLogger(__name__)

__all__ = ["PeopleGallery", "identity_version"]


def identity_version(layout: IndexLayout) -> tuple[int, int]:
    """``(gallery version, people version)``: what a server polls to know it must reload."""
    section = read_manifest(layout).get("gallery") or {}
    return int(section.get("version", 0)), PeopleStore(layout).version()


class PeopleGallery:
    """Visible people (and not yet linked enrolled identities) as templates (see module doc).

    Build one with :meth:`load`.
    """

    def __init__(self, layout: IndexLayout, state: PeopleState, *, gallery_section: dict,
                 person_ids: np.ndarray, names: np.ndarray, templates: np.ndarray,
                 owner: np.ndarray, model_id: str | None, embedding_size: int,
                 threshold: float, identify_threshold: float, min_quality: float):
        self.layout = layout
        self.state = state
        self.person_ids = person_ids    # (P,) object: person id, or None for an enrolled identity
        self.names = names              # (P,) object: name or None
        self.templates = templates      # (T, D) float32
        self.owner = owner              # (T,) int64 index into person_ids
        self.model_id = model_id
        self.embedding_size = int(embedding_size)
        self.threshold = float(threshold)
        self.identify_threshold = float(identify_threshold)
        self.identify_threshold_source = "people"
        self.min_quality = float(min_quality)
        self.version = int(gallery_section.get("version", 0))
        self.people_version = state.version
        self.index_type = "templates"
        self._enrolled: Gallery | None = None      # the enrolled gallery, when there is one
        self._collection_spec: dict | None = None  # the collection's recorded model spec
        self._index = None
        if len(templates):
            import faiss

            self._index = faiss.IndexFlatIP(templates.shape[1])
            self._index.add(np.ascontiguousarray(templates, np.float32))

    @classmethod
    def load(cls, index_dir) -> "PeopleGallery":
        """The people of ``index_dir`` as a gallery.

        Raises:
            GalleryError: the index has neither people nor an enrolled gallery.
        """
        from facenet_platform.core.weights import PRETRAINED

        from .people import options_of
        from .people_data import enrolled_faces
        from .people_engine import person_templates

        layout = IndexLayout.open(index_dir)
        section = read_manifest(layout).get("gallery") or {}
        state = PeopleStore(layout).load()
        if state.version == 0 and not section:
            raise GalleryError(
                f"{layout.root} has no people and no gallery: run `facenet-platform people "
                f"update --index {layout.root}` after `index build`, and name people, or enroll "
                f"photos with `facenet-platform index enroll GALLERY_DIR --index {layout.root}`")
        options = options_of(state.settings)
        visible = {pid: p for pid, p in state.people.items() if not p.hidden}
        hidden_names = {n for p in state.people.values() if p.hidden for n in p.enrolled_as}
        linked = {n for p in state.people.values() for n in p.enrolled_as}
        named = {p.name.casefold() for p in state.people.values() if p.name}
        tpl = state.templates
        keep = np.isin(tpl.person.astype(str), np.array(sorted(visible), dtype=str)) \
            if len(tpl) and visible else np.zeros(len(tpl), bool)
        pids = sorted(set(tpl.person[keep].tolist()))
        person_ids = list(pids)
        names = [visible[p].name for p in pids]
        code = {p: i for i, p in enumerate(pids)}
        vectors = [tpl.vectors[keep]]
        owner = [np.array([code[p] for p in tpl.person[keep]], np.int64)]
        enrolled_gallery = Gallery.load(layout, mmap=False) if section else None
        enrolled = enrolled_faces(layout, enrolled_gallery) if section else None
        if enrolled is not None and len(enrolled):
            loose = [n for n in enrolled.identities
                     if n not in linked and n not in hidden_names and n.casefold() not in named]
            if loose:
                rows = np.isin(enrolled.names.astype(str), np.array(loose, dtype=str))
                ids, t, own = person_templates(enrolled.embeddings[rows],
                                               np.ones(int(rows.sum()), np.float32),
                                               enrolled.names[rows], options)
                base = len(person_ids)
                person_ids += [None] * len(ids)
                names += [str(n) for n in ids]
                vectors.append(t)
                owner.append(own.astype(np.int64) + base)
        size = int(state.settings.get("embedding_size") or section.get("embedding_size")
                   or PRETRAINED.embedding_size)
        templates = np.concatenate([v.reshape(-1, size) for v in vectors]) if vectors else \
            np.zeros((0, size), np.float32)
        threshold = section.get("threshold") if section.get("threshold_source") == "fixed" \
            else PRETRAINED.threshold
        gallery = cls(layout, state, gallery_section=section,
                      person_ids=np.array(person_ids, dtype=object),
                      names=np.array(names, dtype=object), templates=templates,
                      owner=np.concatenate(owner) if owner else np.zeros(0, np.int64),
                      model_id=state.settings.get("model_id") or section.get("model_id")
                      or PRETRAINED.model_id, embedding_size=size,
                      threshold=float(threshold), identify_threshold=options.assign_distance,
                      min_quality=options.min_quality)
        gallery._enrolled = enrolled_gallery
        gallery._collection_spec = (read_manifest(layout).get("collection") or {}).get("model")
        logger.info("people gallery of %s: %d people (%d named), %d templates", layout.root,
                    len(person_ids), sum(n is not None for n in names), len(templates))
        return gallery

    # -- the Gallery reading interface ------------------------------------------------------

    def check_model(self, spec, flip: str = "none") -> None:
        """Raise :class:`GalleryError` unless a pipeline with this model spec and flip mode
        embeds like the people's faces were embedded: the collection's recorded model (crop,
        standardization) and the enrolled gallery's."""
        from facenet_platform.core.model_spec import ModelSpec

        check_same_model(spec, flip, self.model_id, self.embedding_size,
                         f"the people of {self.layout.root} hold", "use the same model")
        if self._collection_spec:
            recorded = ModelSpec.from_metadata(self._collection_spec, "the collection's model")
            differ = spec.differences(recorded.embedding_space())
            if differ:
                detail = ", ".join(f"{k}: collection {b!r}, now {a!r}"
                                   for k, (a, b) in differ.items())
                raise GalleryError(f"the collection of {self.layout.root} was indexed with other "
                                   f"pipeline settings ({detail}); use the same settings")
        if self._enrolled is not None:
            self._enrolled.check_model(spec, flip)

    def __len__(self) -> int:
        return int(len(self.templates))

    def identities(self) -> dict[str, int]:
        """``{name: faces}`` of the named people answered (enrolled-only identities: their
        photos), names sorted."""
        out: dict[str, int] = {}
        for i, (pid, name) in enumerate(zip(self.person_ids, self.names)):
            if name is None:
                continue
            if pid is not None:
                out[name] = self.state.people[pid].n_faces
            else:
                out[name] = int(np.sum(self.owner == i))
        return dict(sorted(out.items()))

    def is_current(self) -> bool:
        return identity_version(self.layout) == (self.version, self.people_version)

    def search(self, embeddings: np.ndarray, top_k: int = 5) -> list[list[Match]]:
        """The ``top_k`` nearest people of each query: one :class:`Match` each (the distance of
        its nearest template), named people with their name, unnamed ones with ``name=""`` and
        their id in ``person``."""
        from facenet_platform.core.errors import ConfigError

        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        queries = fx.as_unit_rows(embeddings, self.embedding_size, "query embeddings")
        if len(queries) == 0 or self._index is None:
            return [[] for _ in range(len(queries))]
        k = int(min(len(self.templates), max(4 * top_k, 16)))
        scores, hits = self._index.search(queries, k)
        distances = fx.to_squared_l2(scores)
        out = []
        for row in range(len(queries)):
            seen, matches = set(), []
            for j, d in zip(hits[row], distances[row]):
                if j < 0:
                    continue
                who = int(self.owner[j])
                if who in seen:
                    continue
                seen.add(who)
                name = self.names[who]
                matches.append(Match(name or "", float(d), self.person_ids[who]))
                if len(matches) == top_k:
                    break
            out.append(matches)
        return out

    def __repr__(self) -> str:
        return (f"PeopleGallery({self.layout.root!r}, people v{self.people_version}, gallery "
                f"v{self.version}, {len(self.person_ids)} people, {len(self)} templates)")


def load_identify_gallery(index_dir: str | os.PathLike | IndexLayout) -> PeopleGallery:
    """What identify answers with (alias of :meth:`PeopleGallery.load`)."""
    return PeopleGallery.load(index_dir)
