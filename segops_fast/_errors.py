"""The exceptions segops_fast raises to its callers, and the words its messages share.

Every message the library gives (an exception, an ``on_error`` report, a log line) names
what happened in the user's terms, how many events it concerns and where they are now,
and the fix as a keyword argument. This module owns the pieces every such message is made
of: counting events in words, bounding text a server sent, and describing a cause without
repeating the ``SegOps:`` of a message inside another. It does not own which message a
situation calls for (the modules that meet the situation do).
"""

from __future__ import annotations

import os
import traceback

from ._transport import NetworkConfigError, TransportError, UnreachableError

#: The most of a server's error text kept in a message, a log line or
#: :attr:`SegOpsApiError.body`: a server can answer with megabytes, and every batch it
#: refuses would otherwise carry a copy.
MAX_ERROR_TEXT_CHARS = 2048
#: The most of any message kept: room for one server text and our words around it.
_MAX_MESSAGE_CHARS = 2 * MAX_ERROR_TEXT_CHARS

_PREFIX = "SegOps: "


class SegOpsApiError(RuntimeError):
    """Events could not be delivered: the server refused them, or could not be reached.

    A ``RuntimeError`` so that code written for the reference SDK, which raised a plain
    ``RuntimeError``, still catches it. ``status`` is the HTTP status of the last response
    (``None`` when no response came back), ``body`` its text (at most
    ``MAX_ERROR_TEXT_CHARS`` characters), ``undelivered`` how many events the failure
    concerns, ``reason`` what went wrong in one phrase, without the count or what
    became of the events (the same text for every batch one cause refused), and ``fix``
    what to change, naming keyword arguments ("" when nothing on this side can help).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        undelivered: int = 0,
        reason: str = "",
        fix: str = "",
    ) -> None:
        # Bounded here too, whoever built the message: a server's text may be megabytes.
        message = bounded(message, _MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.status = status
        self.body = bounded(body)
        self.undelivered = undelivered
        self.reason = bounded(reason or message.removeprefix(_PREFIX), _MAX_MESSAGE_CHARS)
        self.fix = fix


class InvalidEventError(TypeError, ValueError):
    """``track()`` or ``identify()`` was given an event that cannot be sent.

    It is both a ``TypeError`` (a field of the wrong type) and a ``ValueError`` (an empty
    field, an oversized event), so callers may catch whichever they would naturally expect;
    the message always names the field and the problem.
    """


def count_events(count: int) -> str:
    """``"1 event"``, ``"2 events"``."""
    return f"{count} event" if count == 1 else f"{count} events"


def bounded(text: str, limit: int = MAX_ERROR_TEXT_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying so where it was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters cut]"


def describe(error: BaseException) -> str:
    """What ``error`` says happened, to be quoted inside another message.

    Our own errors are quoted without their ``SegOps:``, so that no message nests another.
    Any other exception is named by its type and where it was raised, never by its text:
    for a bad header value, http.client puts the whole header, API key included, into it.
    """
    if isinstance(error, SegOpsApiError):
        return error.reason
    if isinstance(error, TransportError):
        # The transport's own words: a host, a port and what the network said.
        return bounded(str(error).removeprefix(_PREFIX))
    return unexpected(error)


def fix_for(error: BaseException) -> str:
    """What the user can change about ``error``, as a sentence; "" if nothing."""
    if isinstance(error, SegOpsApiError):
        return error.fix
    if isinstance(error, UnreachableError) and not isinstance(error, NetworkConfigError):
        # A TLS or proxy refusal names its own fix.
        return "If the API should be reachable, check api_url (and proxy, if one is needed)"
    return ""


def sentences(*parts: str) -> str:
    """``parts`` as sentences, each ended with one full stop; empty parts left out."""
    return " ".join(part if part.endswith(".") else part + "." for part in parts if part)


def unexpected(error: BaseException) -> str:
    """An exception nobody expected, named without its text (see :func:`describe`)."""
    # walk_tb, not extract_tb: no source file is read on the sending thread.
    frames = list(traceback.walk_tb(error.__traceback__))
    place = ""
    if frames:
        frame, line = frames[-1]
        code = frame.f_code
        place = f" in {code.co_name}() at {os.path.basename(code.co_filename)}:{line}"
    return (
        f"an unexpected {type(error).__name__}{place} (its text is not shown: it may "
        "hold the API key); please report it"
    )
