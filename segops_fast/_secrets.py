"""Secrets as they are shown and checked: masking keys for output, refusing unusable ones.

This module owns what may be printed of a secret (an API key, a session token, an HMAC
secret, a password, the credentials in a proxy URL) and the check that a key or token is
usable as an HTTP header value before any request is built. It does not own where secrets
come from (options, the environment) or how they are sent (the transport and the session).
"""

from __future__ import annotations

#: Shorter keys show no tail: four characters of a short key are too much of it.
_SHORTEST_KEY_WITH_TAIL_SHOWN = 12


def mask_key(api_key: str) -> str:
    """``sk_...abcd``: enough to tell keys apart in a log, not enough to use one."""
    prefix = api_key[:3] if api_key[:3] in ("sk_", "pk_") else ""
    tail = api_key[-4:] if len(api_key) >= _SHORTEST_KEY_WITH_TAIL_SHOWN else ""
    return f"{prefix}...{tail}"


def key_problem(api_key: str) -> str | None:
    """What makes ``api_key`` unusable in an ``Authorization`` header, or None if nothing.

    A key read from a mounted secret file or a CRLF ``.env`` often ends in a newline; sent
    as it is, http.client refuses the header and puts the whole header, key included, in
    its error. Such a key is refused, never stripped silently: the caller strips it where
    it reads it.
    """
    for position, character in enumerate(api_key):
        if character.isspace() or not character.isprintable() or not character.isascii():
            where = "ends with" if position == len(api_key) - 1 else "contains"
            return f"{where} {_describe(character)} (at character {position + 1})"
    return None


def mask_url(url: str) -> str:
    """``url`` with everything before the last ``@`` of its authority replaced by ``***``.

    The last ``@``, not the authority as a URL parser sees it: a password written with an
    unescaped ``/``, ``?``, ``#`` or ``@`` (which ``urllib.request`` accepts in a proxy URL)
    would otherwise end the authority early and be shown as if it were a host or a path.
    Masking too much is harmless; masking too little is not.
    """
    scheme, separator, rest = url.rpartition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{separator}{rest}"


def _describe(character: str) -> str:
    names = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab", " ": "a space"}
    return names.get(character, f"the character {character!r}")
