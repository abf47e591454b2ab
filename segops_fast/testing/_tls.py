"""HTTPS for LocalIngestServer: the server's certificate, and the CA bundle clients trust.

This module owns the server side of TLS in tests: a certificate given as files, or one
made for 127.0.0.1 (and ``localhost``) by a throwaway test CA (``trustme``, from the
``dev`` extra), whose bundle it writes to a file for clients (``ca_certs``); and,
optionally, requiring client certificates signed by a given CA (mutual TLS).
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ServerTLS:
    """The server's certificate chain and key (PEM files), and whom clients should trust."""

    certfile: str
    keyfile: str | None = None
    #: The CA bundle that verifies ``certfile``, for clients (None when not known).
    ca_certs: str | None = None
    #: Require client certificates signed by the CAs in this bundle (mutual TLS).
    client_ca_certs: str | None = None
    #: What keeps the files of a made certificate alive (their temporary directory).
    _keep: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def for_loopback(
        cls,
        *,
        hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
        client_ca_certs: str | None = None,
    ) -> ServerTLS:
        """A certificate for ``hosts`` from a new test CA; its bundle is ``ca_certs``."""
        try:
            import trustme  # noqa: PLC0415 (a test dependency, imported only when used)
        except ImportError:
            raise RuntimeError(
                "making a test certificate needs trustme: pip install 'segops-fast[dev]'"
            ) from None
        authority = trustme.CA()
        issued = authority.issue_cert(*hosts)
        directory = tempfile.TemporaryDirectory(prefix="segops-fast-tls-")
        certfile = os.path.join(directory.name, "server.pem")
        keyfile = os.path.join(directory.name, "server.key")
        ca_certs = os.path.join(directory.name, "ca.pem")
        issued.cert_chain_pems[0].write_to_path(certfile)
        for pem in issued.cert_chain_pems[1:]:
            pem.write_to_path(certfile, append=True)
        issued.private_key_pem.write_to_path(keyfile)
        authority.cert_pem.write_to_path(ca_certs)
        return cls(certfile, keyfile, ca_certs, client_ca_certs, directory)

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certfile, self.keyfile)
        if self.client_ca_certs is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.client_ca_certs)
        return context
