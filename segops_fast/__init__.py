"""segops_fast: a fast, fork-safe, drop-in replacement for the ``segops`` ingestion SDK.

    import segops_fast as segops

    client = segops.SegOpsClient("https://api.segops.ai", "sk_...")
    client.track(user_id="u-123", event_type="order_placed", payload={"total": 42})
    client.shutdown()

``track()`` serializes the event and appends it to an in-memory buffer in about a
microsecond; a background thread sends batches over a pooled connection.
"""

from ._client import SegOpsClient
from ._errors import InvalidEventError, SegOpsApiError
from ._hooks import BeforeSend, chain_before_send, sample_by_user
from ._serverless import flush_after
from ._signing import sign_user_id
from ._stats import Stats
from ._types import Context, Event, UserContext
from ._version import __version__

__all__ = [
    "BeforeSend",
    "Context",
    "Event",
    "InvalidEventError",
    "SegOpsApiError",
    "SegOpsClient",
    "Stats",
    "UserContext",
    "__version__",
    "chain_before_send",
    "flush_after",
    "sample_by_user",
    "sign_user_id",
]
