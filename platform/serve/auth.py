"""API keys of the Serve application: two roles, keys compared by hash in constant time.

Roles
    ``read``  identify, verify, embed, browse people and photos, thumbnails, search by face,
              history, stats.
    ``admin`` everything ``read`` may, plus every change: enrollment, deletion, people decisions
              (rename, merge, move, reject, hide, undo).

Where keys come from (any mix; several keys per role allow rotation)
    * the ingress replica's environment: ``FACENET_READ_KEY`` and ``FACENET_ADMIN_KEY`` (each a
      comma-separated list of keys); ``FACENET_API_KEY`` (the single key of earlier versions)
      is an admin key;
    * the application's ``args.auth`` (:class:`AuthOptions`): ``read_key_sha256`` and
      ``admin_key_sha256`` list the sha256 hex digests of keys, so that a Serve config file or
      a KubeRay manifest never holds a key itself (``facenet-platform serve-key`` makes a key
      and prints its digest).

A request sends its key as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``. The given key is
hashed and compared with every configured digest with :func:`hmac.compare_digest` (no early exit,
so the time taken says nothing about which key or how much of it matched). No key or an unknown
key: **401** ``unauthorized`` (with ``WWW-Authenticate: Bearer``); a read key on a change:
**403** ``forbidden``. Both carry the service's usual ``{"error": ..., "code": ...}`` body.

No key configured: the ingress refuses to start (:class:`~facenet_platform.core.errors.
ConfigError`) unless ``auth.insecure_no_auth`` is true, which every replica logs as a warning
when it starts. ``facenet-platform serve`` without keys generates an admin key for the session
and prints it (``--insecure-no-auth`` turns keys off for local development).

No Ray import here: the CLI and the unit tests use this module without a cluster.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from typing import Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from facenet_platform.core.errors import ConfigError

logger = logging.getLogger(__name__)

READ, ADMIN = "read", "admin"
ROLES = (READ, ADMIN)

#: Environment variables (of the ingress replicas) holding comma-separated keys.
READ_KEY_ENV = "FACENET_READ_KEY"
ADMIN_KEY_ENV = "FACENET_ADMIN_KEY"
#: The single key of earlier versions: an admin key.
LEGACY_KEY_ENV = "FACENET_API_KEY"

#: Shortest key accepted from configuration (a short key is a guessable key).
MIN_KEY_CHARS = 16
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class AuthOptions(BaseModel):
    """The ``auth`` section of the application's arguments.

    Attributes:
        read_key_sha256: sha256 hex digests of read keys.
        admin_key_sha256: sha256 hex digests of admin keys.
        insecure_no_auth: serve without any key (local development only; logged loudly).
    """

    model_config = ConfigDict(extra="forbid")

    read_key_sha256: list[str] = Field(default_factory=list)
    admin_key_sha256: list[str] = Field(default_factory=list)
    insecure_no_auth: bool = False

    @field_validator("read_key_sha256", "admin_key_sha256")
    @classmethod
    def _digests(cls, values: list[str]) -> list[str]:
        out = []
        for value in values:
            digest = value.strip().lower()
            if not _SHA256_HEX.fullmatch(digest):
                raise ValueError("expected sha256 hex digests (64 hex digits) of the keys, not "
                                 "the keys themselves (`facenet-platform serve-key` prints one)")
            out.append(digest)
        return out


def key_digest(key: str) -> str:
    """The sha256 hex digest of a key, as ``AuthOptions`` lists them."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random key (32 url-safe characters, 192 bits)."""
    return secrets.token_urlsafe(24)


def _env_keys(environ: Mapping[str, str], name: str) -> list[str]:
    keys = [k.strip() for k in environ.get(name, "").split(",") if k.strip()]
    for key in keys:
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(f"{name}: every key must have at least {MIN_KEY_CHARS} characters "
                              f"(`facenet-platform serve-key` makes one)")
    return keys


@dataclass(frozen=True)
class AuthDenied(Exception):
    """A request without the right key: ``status`` 401 or 403, an error ``code`` and why."""

    status: int
    code: str
    message: str


class KeyRing:
    """The digests of the configured keys and the role of each; answers "may this key do that"."""

    def __init__(self, digests: Mapping[str, str], insecure_no_auth: bool = False):
        """``digests``: sha256 hex digest -> role (``read`` or ``admin``)."""
        bad = {r for r in digests.values() if r not in ROLES}
        if bad:
            raise ConfigError(f"unknown key roles {sorted(bad)}; expected {ROLES}")
        self._digests = [(bytes.fromhex(d), role) for d, role in digests.items()]
        self.insecure_no_auth = bool(insecure_no_auth)

    @classmethod
    def from_config(cls, options: Optional[AuthOptions], environ: Mapping[str, str]) -> "KeyRing":
        """The keys of ``options`` and of the environment variables (see the module doc)."""
        options = options or AuthOptions()
        digests: dict[str, str] = {}
        for digest in options.read_key_sha256:
            digests.setdefault(digest, READ)
        for key in _env_keys(environ, READ_KEY_ENV):
            digests.setdefault(key_digest(key), READ)
        # An admin key listed as read key too is an admin key.
        for digest in options.admin_key_sha256:
            digests[digest] = ADMIN
        for key in _env_keys(environ, ADMIN_KEY_ENV) + _env_keys(environ, LEGACY_KEY_ENV):
            digests[key_digest(key)] = ADMIN
        return cls(digests, options.insecure_no_auth)

    def __len__(self) -> int:
        return len(self._digests)

    def counts(self) -> dict[str, int]:
        """Keys per role (for logs and /v1/stats; never the keys)."""
        return {role: sum(1 for _, r in self._digests if r == role) for role in ROLES}

    def check_startable(self) -> None:
        """Raise :class:`ConfigError` when there is no key and keys are not turned off."""
        if not self._digests and not self.insecure_no_auth:
            raise ConfigError(
                f"no API key configured: set {READ_KEY_ENV} and/or {ADMIN_KEY_ENV} in the "
                "ingress' environment (or list key digests in args.auth), or set "
                "auth.insecure_no_auth (--insecure-no-auth) to serve without keys on a private "
                "machine")

    def role_of(self, key: Optional[str]) -> Optional[str]:
        """The role of ``key``, or None when it is not a configured key. Every digest is
        compared, with :func:`hmac.compare_digest`, whatever matches first."""
        if not key:
            return None
        given = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found = None
        for digest, role in self._digests:
            if hmac.compare_digest(given, digest) and found != ADMIN:
                found = role
        return found

    def authorize(self, key: Optional[str], needed: str) -> str:
        """The role of ``key`` when it may do what needs ``needed``, else :class:`AuthDenied`.

        With keys turned off (``insecure_no_auth`` and no key), everyone is admin."""
        if not self._digests and self.insecure_no_auth:
            return ADMIN
        role = self.role_of(key)
        if role is None:
            raise AuthDenied(401, "unauthorized",
                             ("missing API key" if not key else "unknown API key")
                             + ": send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'")
        if needed == ADMIN and role != ADMIN:
            raise AuthDenied(403, "forbidden",
                             "this needs an admin key; the key sent is a read key")
        return role
