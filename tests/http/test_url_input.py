"""The ``url`` input format against a real HTTP server on loopback: a listed host[:port] is
fetched and classified like the same image in base64; everything else that reaches inside
(loopback not listed, private and link-local ranges, numeric spellings of 127.0.0.1, IPv6
forms, redirects to a port not listed, other schemes, user info) is a 400 naming why; a body
over CIDSERVE_URL_MAX_BYTES is a 413 and a server slower than CIDSERVE_URL_TIMEOUT_S a 504."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from registry.local_store import LocalContentStore
from registry.publish import PublishResult
from services.http.url_input import refusal
from tests.conftest import b64, make_settings
from tests.harness import free_port
from tests.redis_support import App, running_app

MAX_BYTES = 1 << 20


class ImageServer:
    """A loopback HTTP server: the photo, redirects, a body too big, a slow answer."""

    def __init__(self, image: bytes) -> None:
        self.image = image
        self.other_port = free_port()  # never listed in CIDSERVE_URL_ALLOW
        self.hosts: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.hosts.append(self.headers.get("Host", ""))
                path = self.path
                if path == "/cat.jpg":
                    self._send(200, server.image, "image/jpeg")
                elif path == "/hop":
                    self._redirect("/cat.jpg")
                elif path == "/elsewhere":
                    self._redirect(f"http://127.0.0.1:{server.other_port}/cat.jpg")
                elif path == "/metadata":
                    self._redirect("http://169.254.169.254/latest/meta-data/")
                elif path == "/loop":
                    self._redirect("/loop")
                elif path == "/big-declared":
                    self._send(200, b"\0" * (MAX_BYTES + 1), "image/jpeg")
                elif path == "/big-streamed":
                    # No Content-Length: the body ends when the connection closes.
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for _ in range(8):
                        self.wfile.write(b"\0" * (MAX_BYTES // 4))
                    self.close_connection = True
                elif path == "/slow":
                    time.sleep(3)
                    self._send(200, server.image, "image/jpeg")
                else:
                    self._send(404, b"not here", "text/plain")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A client that stops reading a body too big is expected here, not an error to print.
        self.httpd.handle_error = lambda *_args: None  # type: ignore[method-assign]
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(photos: dict[str, bytes]) -> Iterator[ImageServer]:
    with ImageServer(photos["chelsea"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def app(
    workdir: Path, store: LocalContentStore, server: ImageServer, efficientnet: PublishResult
) -> Iterator[App]:
    settings = make_settings(
        workdir,
        prediction_cache=False,
        url_allow=f"127.0.0.1:{server.port}",
        url_max_bytes=MAX_BYTES,
        url_timeout_s=1.0,
    )
    with running_app(settings, store=store) as gw:
        r = gw.client.post("/api/models/load", json={"metadataCid": efficientnet.metadata_cid})
        assert r.status_code == 200, r.text
        yield gw


def _run(app: App, model_id: str, url: str) -> httpx.Response:
    return app.client.post(
        "/api/inference/execute",
        json={
            "model_id": model_id,
            "input_data": {"format": "url", "content": url},
            "options": {"top_k": 3},
        },
    )


def test_a_listed_url_is_classified_like_the_same_image_in_base64(
    app: App, server: ImageServer, efficientnet: PublishResult, photos: dict[str, bytes]
) -> None:
    model_id = efficientnet.model_id
    by_url = _run(app, model_id, f"{server.base}/cat.jpg")
    assert by_url.status_code == 200, by_url.text
    by_b64 = app.client.post(
        "/api/inference/execute",
        json={
            "model_id": model_id,
            "input_data": {"format": "base64_jpeg", "content": b64(photos["chelsea"])},
            "options": {"top_k": 3},
        },
    )
    assert by_url.json()["predictions"] == by_b64.json()["predictions"]
    # The connection went to the checked address with the name in Host.
    assert server.hosts[-1] == f"127.0.0.1:{server.port}"
    # A redirect within the listed host:port is followed.
    hop = _run(app, model_id, f"{server.base}/hop")
    assert hop.status_code == 200 and hop.json()["predictions"] == by_url.json()["predictions"]
    formats = app.client.get("/api/inference/formats").json()["formats"]
    assert "url" in {f["format"] for f in formats}


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:{other}/cat.jpg", "loopback"),
        ("http://localhost:{port}/cat.jpg", "loopback"),  # listed as 127.0.0.1, not by name
        ("http://0x7f.1:{port}/cat.jpg", "non-canonical"),
        ("http://2130706433:{port}/cat.jpg", "non-canonical"),
        ("http://0177.0.0.1:{port}/cat.jpg", "non-canonical"),
        ("http://127.1:{port}/cat.jpg", "non-canonical"),
        ("http://[::1]:{port}/cat.jpg", "loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/cat.jpg", "loopback"),
        ("http://[::ffff:7f00:1]:{port}/cat.jpg", "loopback"),
        ("http://0.0.0.0:{port}/cat.jpg", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.1.2.3/x.jpg", "private"),
        ("http://192.168.0.1/x.jpg", "private"),
        ("http://[fd00::1]/x.jpg", "private"),
        ("http://224.0.0.1/x.jpg", "multicast"),
        ("http://100.64.0.1/x.jpg", "not a public address"),
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.com/cat.jpg", "only http and https"),
        ("gopher://127.0.0.1:{port}/", "only http and https"),
        ("http://user:pw@127.0.0.1:{port}/cat.jpg", "user info"),
        ("http://127.0.0.1:{port}/hop\r\nX: y", "control characters"),
        ("http://127.0.0.1:{port}/elsewhere", "loopback"),  # redirect to a port not listed
        ("http://127.0.0.1:{port}/metadata", "link-local"),  # redirect inside
        ("http://127.0.0.1:{port}/loop", "redirects more than 3"),
        ("http://127.0.0.1:{port}/missing.jpg", "HTTP 404"),
    ],
)
def test_urls_that_reach_inside_are_refused_naming_why(
    app: App, server: ImageServer, efficientnet: PublishResult, url: str, why: str
) -> None:
    r = _run(app, efficientnet.model_id, url.format(port=server.port, other=server.other_port))
    assert r.status_code == 400, r.text
    assert why in r.json()["message"], r.json()["message"]


def test_not_a_url_string(app: App, efficientnet: PublishResult) -> None:
    r = app.client.post(
        "/api/inference/execute",
        json={
            "model_id": efficientnet.model_id,
            "input_data": {"format": "url", "content": {"href": "x"}},
        },
    )
    assert r.status_code == 400 and "URL string" in r.json()["message"]


@pytest.mark.parametrize("path", ["/big-declared", "/big-streamed"])
def test_a_body_over_the_bound_is_413(
    app: App, server: ImageServer, efficientnet: PublishResult, path: str
) -> None:
    r = _run(app, efficientnet.model_id, f"{server.base}{path}")
    assert r.status_code == 413, r.text
    assert "CIDSERVE_URL_MAX_BYTES" in r.json()["message"]


def test_a_slow_server_is_504_within_the_timeout(
    app: App, server: ImageServer, efficientnet: PublishResult
) -> None:
    t0 = time.monotonic()
    r = _run(app, efficientnet.model_id, f"{server.base}/slow")
    elapsed = time.monotonic() - t0
    assert r.status_code == 504, r.text
    assert "CIDSERVE_URL_TIMEOUT_S" in r.json()["message"]
    assert elapsed < 2.5


def test_an_unlicensed_or_unknown_model_is_refused_before_any_fetch(
    app: App, server: ImageServer
) -> None:
    before = len(server.hosts)
    r = _run(app, "nothing-0000beef", f"{server.base}/cat.jpg")
    assert r.status_code == 404
    assert len(server.hosts) == before


def test_refusal_of_addresses() -> None:
    import ipaddress

    assert refusal(ipaddress.ip_address("93.184.216.34")) is None
    assert refusal(ipaddress.ip_address("2606:4700::1111")) is None
    assert refusal(ipaddress.ip_address("::ffff:10.0.0.1")) is not None
    assert refusal(ipaddress.ip_address("2002:7f00:1::")) is not None  # 6to4 of 127.0.0.1
    assert refusal(ipaddress.ip_address("fe80::1")) is not None


def test_the_allow_list_is_checked_at_start_up(workdir: Path) -> None:
    from pydantic import ValidationError

    ok = make_settings(workdir, url_allow=" 127.0.0.1:8080, [::1], Images.Example ")
    assert ok.url_allow == ("127.0.0.1:8080", "[::1]", "images.example")
    for bad in ("http://x", "host:99999", "a@b", "host/path", "host:"):
        with pytest.raises(ValidationError):
            make_settings(workdir, url_allow=bad)
