"""Which HTTP proxy, if any, requests to the API go through, decided once at construction.

This module owns choosing the proxy and its credentials: the ``proxy`` option when given
(``""``: none; a URL: that proxy), otherwise the environment, read exactly as the
reference SDK's ``urllib.request`` reads it for the same URL (``getproxies()`` for the
API's scheme, then ``proxy_bypass()`` for its host and port, which is where ``NO_PROXY``
applies). Credentials in the proxy URL become a ``Proxy-Authorization`` header, and the
URL is only ever shown with them masked. It does not open connections: the transport
does, through urllib3's ``ProxyManager``, which tunnels HTTPS with ``CONNECT`` so that
the proxy never sees a request, its headers or the API key.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from urllib3.exceptions import LocationParseError
from urllib3.util import make_headers, parse_url

from ._secrets import mask_url


@dataclass(frozen=True)
class Proxy:
    """One proxy: its URL without credentials, and the headers that authenticate to it."""

    #: ``http://host:port``, credentials removed.
    url: str
    #: Where it came from: ``proxy=`` or the environment.
    source: str = "proxy="
    #: The ``Proxy-Authorization`` value when the URL had credentials; never shown.
    authorization: str | None = field(default=None, repr=False)

    def headers(self) -> dict[str, str]:
        """The headers that authenticate to the proxy (none without credentials)."""
        if self.authorization is None:
            return {}
        return {"Proxy-Authorization": self.authorization}

    def describe(self) -> str:
        """The proxy for a message: its URL, with ``***`` for any credentials."""
        if self.authorization is not None:
            scheme, _, rest = self.url.partition("://")
            return f"{scheme}://***@{rest} (from {self.source})"
        return f"{self.url} (from {self.source})"


def resolve_proxy(option: str | None, api_url: str) -> Proxy | None:
    """The proxy for ``api_url``: ``option`` if given (``""`` means none), else the
    environment as ``urllib.request`` reads it. Raises ``ValueError`` for a malformed URL,
    naming it masked."""
    if option is not None:
        if not isinstance(option, str):
            raise ValueError(f"proxy must be a str URL, '' or None, got {type(option).__name__}")
        return _parse(option, "proxy=") if option else None
    target = urllib.parse.urlsplit(api_url)
    url = urllib.request.getproxies().get(target.scheme)
    if not url:
        return None
    # urllib.request's ProxyHandler asks proxy_bypass() with the host and port of the
    # request; NO_PROXY (and no_proxy) entries are matched there, ports included.
    if urllib.request.proxy_bypass(target.netloc):
        return None
    return _parse(url, f"the {target.scheme}_proxy environment variable")


def _parse(text: str, source: str) -> Proxy:
    # urllib.request accepts a proxy without a scheme ("host:3128") as plain HTTP, and
    # credentials up to the last "@", so a password may hold "/", "?", "#" or "@" unescaped.
    scheme, _, rest = text.rpartition("://")
    userinfo, at, address = rest.rpartition("@")
    try:
        url = parse_url(f"{scheme or 'http'}://{address}")
    except LocationParseError:
        url = None
    if url is None or url.scheme != "http" or not url.host or url.path not in (None, "", "/"):
        raise ValueError(
            f"the proxy URL {mask_url(text)!r} (from {source}) is not usable: give "
            "http://[user:password@]host:port; TLS to the proxy itself (https://) is not "
            "supported, and HTTPS to the API is tunnelled through the proxy with CONNECT"
        )
    authorization = None
    if at:
        user, _, password = userinfo.partition(":")
        credentials = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
        authorization = make_headers(proxy_basic_auth=credentials)["proxy-authorization"]
    return Proxy(f"http://{url.host}:{url.port or 80}", source, authorization)
