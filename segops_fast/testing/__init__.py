"""Test support: a real SegOps ingest server on loopback.

``LocalIngestServer`` runs in the current process (threads); ``IngestServerProcess``
runs the same server as ``segops-fast serve`` in a child process. ``ServerTLS`` makes
either speak HTTPS.
"""

from ._faults import Faults
from ._process import IngestServerProcess
from ._server import (
    DEFAULT_PUBLIC_KEY,
    DEFAULT_SECRET_KEY,
    LocalIngestServer,
    PublicKey,
)
from ._store import ReceivedEvent
from ._tls import ServerTLS

__all__ = [
    "DEFAULT_PUBLIC_KEY",
    "DEFAULT_SECRET_KEY",
    "Faults",
    "IngestServerProcess",
    "LocalIngestServer",
    "PublicKey",
    "ReceivedEvent",
    "ServerTLS",
]
