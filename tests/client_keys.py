"""A client certificate whose key is encrypted, for the mutual-TLS tests of client_key_password."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization


@dataclass(frozen=True)
class EncryptedClientKey:
    #: The CA that issued the certificate: what a server requiring client certificates trusts.
    ca_certs: str
    client_cert: str
    #: The key, encrypted with the password given to :func:`write_encrypted_client_key`.
    client_key: str


def write_encrypted_client_key(directory: Path, password: str) -> EncryptedClientKey:
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(directory / "clients-ca.pem"))
    issued = authority.issue_cert("client@example.com")
    issued.cert_chain_pems[0].write_to_path(str(directory / "client.pem"))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode()),
    )
    (directory / "client.key").write_bytes(encrypted)
    return EncryptedClientKey(
        str(directory / "clients-ca.pem"),
        str(directory / "client.pem"),
        str(directory / "client.key"),
    )
