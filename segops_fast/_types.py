"""The public data types, field for field the same as the reference ``segops`` SDK.

This module owns the shapes a caller builds. It does not validate them: validation
happens once, in :mod:`segops_fast._encoding`, when an event is tracked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class Event:
    """One user event: what happened (``event_type``), to whom (``user_id``), and its details."""

    user_id: str
    event_type: str
    #: An ISO-8601 string or a ``datetime``; ``None`` means the time of the ``track()`` call.
    occurred_at: str | datetime | None = None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """A user's traits, sent as a ``context_identified`` event whose payload is the traits."""

    user_id: str
    traits: dict[str, Any] = field(default_factory=dict)


@dataclass
class UserContext:
    """Who the current user is, exchanged for a session token when the key is a ``pk_`` key."""

    user_id: str | None = None
    anonymous_id: str | None = None
    #: Hex HMAC-SHA256 of ``"{user_id}|{user_id_ts}"``, from :func:`segops_fast.sign_user_id`.
    user_id_sig: str | None = None
    user_id_ts: int | None = None
