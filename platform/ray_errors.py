"""What killed a Ray job, in one line (Ray wraps errors in layers of its own, and sometimes keeps
only their text: an actor's creation error arrives as the traceback inside ``ActorDiedError``).

Imports nothing from Ray: it reads exception chains and text only.
"""

from __future__ import annotations

import re

from facenet_platform.core.errors import FaceNetPlatformError

__all__ = ["job_error_text"]

_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit|Interrupt)): (.+)$")


def job_error_text(exc: BaseException) -> str:
    """One line saying what killed a Ray job: the innermost error, even when Ray only kept it
    as text.

    The innermost :class:`FaceNetPlatformError` of the chain wins; else the last
    ``SomeError: message`` line of the chain's texts (one that names ``facenet_platform``
    preferred); else the innermost exception's type and last line.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in chain):
        chain.append(current)
        current = (getattr(current, "cause", None) if isinstance(
            getattr(current, "cause", None), BaseException) else None) \
            or current.__cause__ or current.__context__
    ours = [e for e in chain if isinstance(e, FaceNetPlatformError)]
    if ours:
        return str(ours[-1])
    best = None
    for error in chain:
        for line in str(error).splitlines():
            match = _ERROR_LINE.match(line)
            if match and match.group(1) not in ("SystemException", "RayTaskError"):
                candidate = f"{match.group(1)}: {match.group(2).strip()}"
                if best is None or "facenet_platform" in line:
                    best = candidate
    if best:
        return best
    inner = chain[-1]
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    return f"{type(inner).__name__}: {lines[-1]}" if lines else type(inner).__name__
