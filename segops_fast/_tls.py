"""TLS to the API: the verifying SSL context, and what a TLS failure means in words.

This module owns certificate verification, which is always on: the system trust store by
default (which honours ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``), or only the CA bundle given
as ``ca_certs``; host names are checked; TLS 1.2 is the oldest version spoken, whatever the
OpenSSL build would allow; a client certificate and key (decrypted with
``client_key_password``, never by prompting) are presented when given (mutual TLS). It
checks those files when the client is built, so that a wrong path or password raises at
construction. It also turns an OpenSSL failure into its reason and the setting that fixes
it. It does not open connections (the transport does).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field

#: Older versions have known weaknesses; Python 3.9's default depends on the OpenSSL build.
MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class TLSSettings:
    """Where trust and the client's own certificate come from; verification is always on."""

    #: A PEM bundle of the CAs to trust instead of the system's store.
    ca_certs: str | None = None
    #: A PEM client certificate (and its key, unless ``client_key`` is given) for mutual TLS.
    client_cert: str | None = None
    client_key: str | None = None
    #: The password of an encrypted client key; never shown.
    client_key_password: str | None = field(default=None, repr=False)

    def check(self) -> None:
        """Raise ``ValueError`` naming the option whose file cannot be used."""
        for name in ("ca_certs", "client_cert", "client_key"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a path (str) or None, got {value!r}")
        if self.client_key_password is not None and not isinstance(self.client_key_password, str):
            raise ValueError(
                "client_key_password must be a str or None, got "
                f"{type(self.client_key_password).__name__}"
            )
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert: the key of which certificate?")
        if self.client_key_password is not None and self.client_cert is None:
            raise ValueError("client_key_password needs client_cert (and its encrypted key)")
        if self.ca_certs is not None or self.client_cert is not None:
            # Loading the files is the only sure check that they are usable.
            self.context()

    def context(self) -> ssl.SSLContext:
        """A new context that verifies the server's certificate and host name."""
        try:
            context = ssl.create_default_context(cafile=self.ca_certs)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(
                f"ca_certs={self.ca_certs!r} is not a readable PEM CA bundle: {error}"
            ) from None
        # Raised, never lowered: a system policy may already ask for more.
        context.minimum_version = max(context.minimum_version, MINIMUM_TLS_VERSION)
        if self.client_cert is not None:
            self._load_client_certificate(context, self.client_cert)
        return context

    def _load_client_certificate(self, context: ssl.SSLContext, certificate: str) -> None:
        files = f"client_cert={certificate!r} / client_key={self.client_key!r}"
        # Without a password OpenSSL would prompt on the terminal for an encrypted key, and
        # block; asked for one it does not have, this refuses instead.
        password = self.client_key_password or _refuse_to_prompt
        try:
            context.load_cert_chain(certificate, self.client_key, password)
        except _PasswordNeededError:
            raise ValueError(
                f"{files}: the key is encrypted; give its password with "
                "client_key_password=... (segops_fast never prompts for it)"
            ) from None
        except (OSError, ssl.SSLError) as error:
            if self.client_key_password is not None:
                raise ValueError(
                    f"{files}: client_key_password does not decrypt the key, or these are "
                    f"not a readable PEM certificate and matching key ({error})"
                ) from None
            raise ValueError(
                f"{files}: not a readable PEM certificate and matching key: {error}"
            ) from None


class _PasswordNeededError(Exception):
    """The client key is encrypted and no password was given."""


def _refuse_to_prompt() -> str:
    raise _PasswordNeededError


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception behind it: causes, contexts, and exceptions passed as
    arguments (urllib3 wraps the OS's or OpenSSL's error in its own, several levels deep)."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        pending.extend(linked for linked in (current.__cause__, current.__context__) if linked)


def tls_failure(error: BaseException) -> ssl.SSLError | ssl.CertificateError | None:
    """The TLS error behind ``error``, if there is one."""
    for cause in causes(error):
        if isinstance(cause, (ssl.SSLError, ssl.CertificateError)):
            return cause
    return None


def refused_by_tls(failure: ssl.SSLError | ssl.CertificateError) -> bool:
    """True when TLS itself refused the connection, so no request can have been read:
    a certificate that does not verify, or an alert from the server (which reads no
    request before its own side of the handshake succeeds, mutual TLS included)."""
    if isinstance(failure, ssl.CertificateError):
        return True
    reason = getattr(failure, "reason", None) or ""
    return "ALERT" in reason or "CERTIFICATE" in reason or "HANDSHAKE" in reason


def explain(host: str, failure: ssl.SSLError | ssl.CertificateError) -> tuple[str, str]:
    """What failed, naming the host and OpenSSL's reason, and the fix: a sentence with a
    ``{setting}`` slot for each setting it names (see ``NetworkConfigError.fix``)."""
    reason = getattr(failure, "reason", None)
    detail = getattr(failure, "verify_message", None) or reason or str(failure)
    if reason and reason not in detail:
        detail = f"{detail} ({reason})"
    if "PROTOCOL_VERSION" in detail or "UNSUPPORTED_PROTOCOL" in detail:
        fix = (
            f"The oldest TLS spoken here is {MINIMUM_TLS_VERSION.name.replace('v', ' ')}".replace(
                "_", "."
            )
            + ": the server must be upgraded to it"
        )
    elif "mismatch" in detail or "doesn't match" in detail:
        fix = "Use the host name the server's certificate is issued for in {api_url}"
    elif "ALERT" in detail:
        fix = (
            "The server refused this client during the handshake: if it requires a client "
            "certificate, give {client_cert} and {client_key}"
        )
    else:
        fix = (
            "Give the CA bundle that signed the server's certificate with {ca_certs} (or "
            "the SSL_CERT_FILE environment variable)"
        )
    return f"TLS with {host} failed, so nothing was sent: {detail}", fix
