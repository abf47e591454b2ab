"""The exceptions segops_fast raises to its callers."""

from __future__ import annotations


class SegOpsApiError(RuntimeError):
    """Events could not be delivered: the server refused them, or could not be reached.

    A ``RuntimeError`` so that code written for the reference SDK, which raised a plain
    ``RuntimeError``, still catches it. ``status`` is the HTTP status of the last response
    (``None`` when no response came back), ``body`` its text, and ``undelivered`` how many
    events the failure concerns.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        undelivered: int = 0,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.undelivered = undelivered


class InvalidEventError(TypeError, ValueError):
    """``track()`` or ``identify()`` was given an event that cannot be sent.

    It is both a ``TypeError`` (a field of the wrong type) and a ``ValueError`` (an empty
    field, an oversized event), so callers may catch whichever they would naturally expect;
    the message always names the field and the problem.
    """
