"""The ``url`` input format: fetch an image from an http(s) URL without reaching inside.

A caller's URL is untrusted: it may name the service's own network (loopback, a private
range, a cloud metadata address) in any notation, or a public name that resolves there, or
redirect there. :func:`fetch_url` therefore:

* takes ``http`` and ``https`` only, without user info (``user:pass@``);
* refuses numeric host spellings other than a canonical address (``0x7f.1``,
  ``2130706433``, ``0177.0.0.1``: what ``inet_aton`` would read as another address);
* resolves the host name once, checks every address it resolves to, and connects to the
  checked address itself (the ``Host`` header and TLS SNI carry the name), so a second
  resolution cannot point elsewhere (DNS rebinding);
* refuses loopback, private, link-local, shared, multicast, reserved and unspecified
  addresses (IPv4, IPv6, and IPv4 inside IPv6) unless ``host[:port]`` is in
  ``CIDSERVE_URL_ALLOW``;
* follows at most :data:`MAX_REDIRECTS` redirects itself, each target checked as above;
* streams the body and stops past ``CIDSERVE_URL_MAX_BYTES`` (413), under one deadline for
  the whole fetch, redirects included, ``CIDSERVE_URL_TIMEOUT_S`` (504).

Every refusal is a 400 that says why. The bytes fetched are then decoded like a base64 image.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import httpx

from preprocessing import ImagePayload
from services.http.errors import BadRequest, HttpError, PayloadTooLarge
from services.settings import Settings

MAX_REDIRECTS = 3
MAX_URL_CHARS = 8192
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlTimeout(HttpError):
    """The URL did not answer in full within ``CIDSERVE_URL_TIMEOUT_S``."""

    status_code = 504
    title = "Timeout"


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    max_bytes: int
    timeout_s: float
    allow: frozenset[str] = frozenset()
    """``host`` (any port) or ``host:port`` entries, lower-case, IPv6 in brackets."""

    def allows(self, host: str, port: int) -> bool:
        name = f"[{host}]" if ":" in host else host
        return name in self.allow or f"{name}:{port}" in self.allow


@dataclass(frozen=True, slots=True)
class Target:
    """A URL checked and resolved: where to connect, and what to say in ``Host`` and SNI."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def url_policy(settings: Settings) -> UrlPolicy:
    return UrlPolicy(settings.url_max_bytes, settings.url_timeout_s, frozenset(settings.url_allow))


def _parse(url: str) -> SplitResult:
    if len(url) > MAX_URL_CHARS:
        raise BadRequest(f"the URL has {len(url)} characters; the limit is {MAX_URL_CHARS}")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise BadRequest("the URL holds spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        raise BadRequest(
            f"URL scheme {parts.scheme or '(none)'!r} is refused: only http and https are fetched"
        )
    if "@" in parts.netloc:
        raise BadRequest("URLs with user info (user:password@) are refused")
    if not parts.hostname:
        raise BadRequest("the URL has no host")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise BadRequest("the URL has an invalid port") from None
    return parts


def _literal(host: str) -> IPAddress | None:
    """The address a numeric host names; 400 for a numeric spelling that is not canonical."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if labels and all(_NUMERIC_LABEL.fullmatch(label) for label in labels):
        raise BadRequest(
            f"host {host!r} is a non-canonical numeric address (octal, hex or integer "
            "spellings are refused); write the address as a.b.c.d"
        )
    return None


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` may not be reached (None: a public unicast address)."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            why = refusal(mapped)
            return None if why is None else f"{why} (inside an IPv6 address)"
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    )
    for name, hit in checks:
        if hit:
            return f"a {name} address"
    if not address.is_global:
        return "not a public address"
    return None


async def _resolve(host: str, port: int) -> list[IPAddress]:
    literal = _literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BadRequest(f"host {host!r} does not resolve: {exc}") from None
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise BadRequest(f"host {host!r} does not resolve")
    return found


async def check_url(url: str, policy: UrlPolicy) -> Target:
    """``url`` checked (scheme, user info, host spelling, every address it resolves to) and
    pinned to one checked address; 400 naming the reason otherwise."""
    parts = _parse(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port or _DEFAULT_PORTS[scheme]
    addresses = await _resolve(host, port)
    if not policy.allows(host, port):
        for address in addresses:
            why = refusal(address)
            if why is not None:
                raise BadRequest(
                    f"URL host {host!r} resolves to {address}, {why}; refused "
                    "(CIDSERVE_URL_ALLOW lists the host[:port] entries allowed)"
                )
    return Target(url, scheme, host, port, str(addresses[0]))


def _pinned(target: Target) -> tuple[str, dict[str, str], dict[str, str]]:
    """The URL to request (the checked address in place of the name), its ``Host`` header and
    the request extensions (SNI)."""
    parts = urlsplit(target.url)
    ip = f"[{target.address}]" if ":" in target.address else target.address
    url = urlunsplit((target.scheme, f"{ip}:{target.port}", parts.path or "/", parts.query, ""))
    name = f"[{target.host}]" if ":" in target.host else target.host
    default = _DEFAULT_PORTS[target.scheme] == target.port
    host_header = name if default else f"{name}:{target.port}"
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return (
        url,
        {
            "Host": host_header,
            "Accept": "image/*",
            "Accept-Encoding": "identity",
        },
        extensions,
    )


async def _get(client: httpx.AsyncClient, target: Target, policy: UrlPolicy) -> str | bytes:
    """One GET: the body (bounded), or the next URL when the reply is a redirect."""
    url, headers, extensions = _pinned(target)
    request = client.build_request("GET", url, headers=headers, extensions=extensions)
    try:
        response = await client.send(request, stream=True)
    except httpx.TimeoutException:
        raise
    except httpx.HTTPError as exc:
        raise BadRequest(f"fetching the URL failed: {type(exc).__name__}: {exc}") from None
    try:
        if response.is_redirect:
            location = response.headers.get("location", "")
            if not location:
                raise BadRequest(f"the URL answered {response.status_code} without a Location")
            return urljoin(target.url, location)
        if response.status_code != 200:
            raise BadRequest(f"the URL answered HTTP {response.status_code}, not 200")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > policy.max_bytes:
            raise _too_large(int(declared), policy)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > policy.max_bytes:
                raise _too_large(size, policy, at_least=True)
            chunks.append(chunk)
        body = b"".join(chunks)
    finally:
        await response.aclose()
    if not body:
        raise BadRequest("the URL answered an empty body")
    return body


def _too_large(size: int, policy: UrlPolicy, *, at_least: bool = False) -> PayloadTooLarge:
    more = "more than " if at_least else ""
    return PayloadTooLarge(
        f"the URL's body is {more}{size if not at_least else policy.max_bytes} bytes; the "
        f"limit is {policy.max_bytes} (CIDSERVE_URL_MAX_BYTES)"
    )


async def fetch_url(url: object, policy: UrlPolicy) -> bytes:
    """The body of ``url`` under ``policy``: checked, pinned, redirects followed by hand."""
    if not isinstance(url, str) or not url:
        raise BadRequest("input_data.content of the 'url' format must be a URL string")
    timeout = httpx.Timeout(policy.timeout_s)
    # No environment proxies, no automatic redirects, no decompression of the stream (the
    # bound counts the bytes received).
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as c:
        try:
            async with asyncio.timeout(policy.timeout_s):
                current = url
                for hop in range(MAX_REDIRECTS + 1):
                    target = await check_url(current, policy)
                    got = await _get(c, target, policy)
                    if isinstance(got, bytes):
                        return got
                    if hop == MAX_REDIRECTS:
                        break
                    current = got
        except (TimeoutError, httpx.TimeoutException):
            raise UrlTimeout(
                f"the URL did not answer in full within {policy.timeout_s:g} s "
                "(CIDSERVE_URL_TIMEOUT_S)"
            ) from None
    raise BadRequest(f"the URL redirects more than {MAX_REDIRECTS} times")


async def fetch_image(url: object, policy: UrlPolicy) -> ImagePayload:
    """A ``url`` input as the image payload a base64 image would give."""
    return ImagePayload(await fetch_url(url, policy))
