"""Client side of signed requests: sign a request the way an HTTP client sends it.

:func:`sign_url` signs a ``(method, url, headers, body)``: the request target and the host are
taken from the URL as httpx puts them on the wire (percent-encoded path and query; the host with
its port unless it is the scheme's default), ``Content-Type`` and the covered headers from
``headers``. :class:`LicenseeAuth` does the same for every request an ``httpx`` client sends,
after the client has added its own headers (``Host``, the ``Content-Type`` of ``json=``)::

    with httpx.Client(auth=LicenseeAuth(private_key)) as client:
        client.post(url, content=image, headers={"Content-Type": "image/jpeg"})

The canonical string itself is :mod:`services.chain.signing`.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping

import httpx

from services.chain.signing import sign_request


def request_target(url: httpx.URL) -> str:
    """The request target httpx sends for ``url``: path plus ``?query``."""
    return url.raw_path.decode("ascii")


def request_host(url: httpx.URL) -> str:
    """The ``Host`` header httpx sends for ``url`` (no port when it is the default one)."""
    return url.netloc.decode("ascii")


def sign_url(
    private_key: str | bytes,
    method: str,
    url: str | httpx.URL,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The ``X-Cidserve-*`` headers for one request to ``url`` (absolute, ``http(s)://``).

    ``headers`` are the other headers the request is sent with; a ``Host`` among them wins
    over the URL's. Send the body and those headers unchanged: each is covered.
    """
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"not an absolute http(s) URL: {str(url)[:200]!r}")
    sent = dict(headers or {})
    host = next((v for k, v in sent.items() if k.lower() == "host"), request_host(parsed))
    return sign_request(
        private_key,
        method,
        request_target(parsed),
        body,
        host=host,
        headers=sent,
        timestamp=timestamp,
        nonce=nonce,
    )


class LicenseeAuth(httpx.Auth):
    """httpx authentication that signs each request as it is sent (a fresh nonce each time)."""

    requires_request_body = True

    def __init__(self, private_key: str | bytes) -> None:
        self._key = private_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(
            sign_request(
                self._key,
                request.method,
                request_target(request.url),
                request.content,
                host=request.headers.get("host", request_host(request.url)),
                headers=request.headers,
            )
        )
        yield request
