"""The public-key session handshake: exchanging a ``pk_`` key for a short-lived token.

This module owns the token: minting it (``POST /api/auth/session/`` with the key and the
current :class:`UserContext`), checking that it can be sent in a header, caching it until
60 seconds before it expires, dropping it when the server says it is no longer valid,
making concurrent callers share one mint, and waiting longer after each refused mint
(1 s, 2 s, 4 s... up to 30 s) instead of asking again at every send. It does not own
what to do with events while no token can be had: the caller keeps them.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Callable

import orjson

from ._errors import SegOpsApiError, bounded, sentences
from ._secrets import key_problem, mask_key
from ._transport import Transport
from ._types import UserContext

#: Refresh this long before the token expires, so no request carries a token about to lapse.
REFRESH_BEFORE_EXPIRY_SECONDS = 60.0
#: A token is a header value: far longer than any real one means a broken or hostile server.
MAX_TOKEN_CHARACTERS = 4096
#: After a mint is refused, the next waits this long, doubled at each refusal up to the cap:
#: a refusal (a wrong key, a stale signature) rarely mends itself within a second.
MINT_BACKOFF_BASE_SECONDS = 1.0
MINT_BACKOFF_CAP_SECONDS = 30.0

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
        #: The last refusal, repeated without asking the server until ``_mint_again_at``.
        self._refusal: SegOpsApiError | None = None
        self._refusals = 0
        self._mint_again_at = 0.0

    def __repr__(self) -> str:
        token = None if self._token is None else "***"
        return f"SessionManager(api_key={mask_key(self._api_key)!r}, token={token!r})"

    def authorization(self) -> str:
        """The ``Authorization`` header value, minting a token first if needed.

        Raises :class:`SegOpsApiError` when the server refuses the mint (or refused the
        last one, less than its backoff ago) and
        :class:`~segops_fast._transport.TransportError` when it cannot be reached.
        """
        with self._lock:
            if self._token is None or time.time() >= self._refresh_at:
                self._token, expires_at = self._mint_unless_refused()
                self._refresh_at = expires_at - REFRESH_BEFORE_EXPIRY_SECONDS
            return f"Bearer {self._token}"

    def invalidate(self) -> None:
        """Forget the token, and any refusal, so that the next request mints a new one."""
        with self._lock:
            self._token = None
            self._refusal = None
            self._refusals = 0

    def _mint_unless_refused(self) -> tuple[str, float]:
        now = time.monotonic()
        if self._refusal is not None and now < self._mint_again_at:
            refusal = self._refusal
            reason = f"{refusal.reason} (the next mint is in {self._mint_again_at - now:.1f}s)"
            raise SegOpsApiError(
                f"SegOps: {reason}",
                status=refusal.status,
                body=refusal.body,
                reason=reason,
                fix=refusal.fix,
            ) from refusal.__cause__
        try:
            minted = self._mint()
        except SegOpsApiError as refusal:
            if refusal.status is None:
                # Not the server's refusal (get_user failed): asking again costs it nothing.
                raise
            self._refusals += 1
            backoff = MINT_BACKOFF_BASE_SECONDS * 2.0 ** min(self._refusals - 1, 16)
            self._mint_again_at = now + min(MINT_BACKOFF_CAP_SECONDS, backoff)
            self._refusal = refusal
            raise
        self._refusal = None
        self._refusals = 0
        return minted

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
            fix = (
                "Check api_key, and that get_user signs the user id each time it is "
                "called (a signature is accepted for five minutes)"
                if response.status in (401, 403)
                else ""
            )
            reason = (
                f"the API refused a session for {mask_key(self._api_key)}: HTTP "
                f"{response.status}: {bounded(response.text())}"
            )
            raise SegOpsApiError(
                sentences(f"SegOps: {reason}", fix),
                status=response.status,
                body=response.text(),
                reason=reason,
                fix=fix,
            )
        try:
            answer = orjson.loads(response.body)
            token, expires_at = answer["token"], _parse_timestamp(str(answer["expires_at"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, OverflowError) as error:
            # The body may hold a token, so it is neither quoted nor kept.
            raise SegOpsApiError(
                "SegOps: the session mint's answer has no usable token and expires_at "
                f"({type(error).__name__})",
                status=response.status,
            ) from None
        problem = _token_problem(token)
        if problem is not None or not isinstance(token, str):
            raise SegOpsApiError(
                f"SegOps: the session mint's token cannot be sent in a header: it {problem}",
                status=response.status,
            )
        return token, expires_at


def _token_problem(token: object) -> str | None:
    """Why ``token`` cannot be a header value (never quoting it), or None."""
    if not isinstance(token, str) or not token:
        return f"is not a non-empty string but {type(token).__name__}"
    if len(token) > MAX_TOKEN_CHARACTERS:
        return f"is {len(token)} characters long, over {MAX_TOKEN_CHARACTERS}"
    return key_problem(token)


def _parse_timestamp(text: str) -> float:
    """Unix seconds of an ISO-8601 timestamp; a trailing ``Z`` and naive values mean UTC."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
