"""The public-key session handshake: exchanging a ``pk_`` key for a short-lived token.

This module owns the token: minting it (``POST /api/auth/session/`` with the key and the
current :class:`UserContext`), caching it until 60 seconds before it expires, dropping it
when the server says it is no longer valid, and making concurrent callers share one mint.
It does not own what to do with events while no token can be had: the caller keeps them.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Callable

import orjson

from ._errors import SegOpsApiError
from ._transport import Transport
from ._types import UserContext

#: Refresh this long before the token expires, so no request carries a token about to lapse.
REFRESH_BEFORE_EXPIRY_SECONDS = 60.0

SESSION_PATH = "/api/auth/session/"


def anonymous_user() -> UserContext:
    """The identity used when a pk_ client is given no ``get_user``."""
    return UserContext(anonymous_id="anonymous")


class SessionManager:
    """Mints, caches and refreshes the session token of one ``pk_`` key in one process."""

    def __init__(
        self, api_key: str, get_user: Callable[[], UserContext], transport: Transport
    ) -> None:
        self._api_key = api_key
        self._get_user = get_user
        self._transport = transport
        # Held for the whole mint: a caller that finds a mint under way waits for it and
        # then uses the token it produced, so concurrent callers share one mint.
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0

    def authorization(self) -> str:
        """The ``Authorization`` header value, minting a token first if needed.

        Raises :class:`SegOpsApiError` when the server refuses the mint and
        :class:`~segops_fast._transport.TransportError` when it cannot be reached.
        """
        with self._lock:
            if self._token is None or time.time() >= self._refresh_at:
                self._token, expires_at = self._mint()
                self._refresh_at = expires_at - REFRESH_BEFORE_EXPIRY_SECONDS
            return f"Bearer {self._token}"

    def invalidate(self) -> None:
        """Forget the token, so that the next request mints a new one."""
        with self._lock:
            self._token = None

    def _mint(self) -> tuple[str, float]:
        user = self._get_user()
        fields: dict[str, str | int] = {
            name: value
            for name, value in (
                ("user_id", user.user_id),
                ("anonymous_id", user.anonymous_id),
                ("user_id_sig", user.user_id_sig),
                ("user_id_ts", user.user_id_ts),
            )
            if value is not None
        }
        response = self._transport.post(
            SESSION_PATH, orjson.dumps(fields), {"Authorization": f"ApiKey {self._api_key}"}
        )
        if not response.ok:
            raise SegOpsApiError(
                f"SegOps: session mint failed: HTTP {response.status} {response.text()}",
                status=response.status,
                body=response.text(),
            )
        try:
            answer = orjson.loads(response.body)
            return str(answer["token"]), _parse_timestamp(str(answer["expires_at"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise SegOpsApiError(
                f"SegOps: session mint answered without a usable token: {error}",
                status=response.status,
                body=response.text(),
            ) from None


def _parse_timestamp(text: str) -> float:
    """Unix seconds of an ISO-8601 timestamp; a trailing ``Z`` and naive values mean UTC."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
