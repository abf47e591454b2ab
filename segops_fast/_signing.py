"""Signing a user id for public-key sessions; run on the caller's backend, never in a client."""

from __future__ import annotations

import hashlib
import hmac
import time


def sign_user_id(secret_hex: str, user_id: str, ts: int | None = None) -> dict[str, str | int]:
    """Sign ``user_id`` with a public key's HMAC secret (hex) at unix time ``ts`` (default: now).

    Returns ``{"user_id", "user_id_sig", "user_id_ts"}``, the fields that ``get_user`` hands
    to the session handshake. The server accepts the signature for five minutes either side
    of ``ts``.
    """
    timestamp = int(time.time()) if ts is None else ts
    message = f"{user_id}|{timestamp}".encode()
    signature = hmac.new(bytes.fromhex(secret_hex), message, hashlib.sha256).hexdigest()
    return {"user_id": user_id, "user_id_sig": signature, "user_id_ts": timestamp}
