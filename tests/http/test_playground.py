"""The playground page (``/playground``), driven in a real headless Chromium.

The page is served by the gateway with a strict Content-Security-Policy; the browser picks
the EfficientNet model, uploads a cat photo through the file input and shows the classes,
timings and cache status; loads a small model by CID through the form and runs a tensor;
and, for a model licensed on a real chain (anvil), signs its requests with an injected
EIP-1193 wallet whose ``personal_sign`` the test answers with a known key. The page's
canonical-string builder and SHA-256 are also compared with the server's for fixed inputs.

Skipped only when Chromium or chromedriver is not installed (``scripts/ci-deps.sh`` installs
them).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import time
import tomllib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.chain.signing import canonical_string, covered_headers
from services.http.routes.playground import ASSETS
from tests.anvil import LicenseChain, chain_gateway, license_chain
from tests.conftest import CAT_LABELS, Gateway
from tests.models import linear_model

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "services" / "http" / "static"
WAIT_S = 20

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="chromium and chromium-driver are not installed (scripts/ci-deps.sh installs them)",
)


# -- the page over plain HTTP -------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data.strip()


def test_home_links_to_the_playground(gateway: Gateway) -> None:
    r = gateway.client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert 'href="/playground"' in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_page_and_assets_are_served_with_a_strict_policy(gateway: Gateway) -> None:
    r = gateway.client.get("/playground")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    csp = r.headers["content-security-policy"]
    assert csp.startswith("default-src 'self';")
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    page = _Tags()
    page.feed(r.text)
    # No inline script, no event-handler attributes, nothing from another origin.
    assert page.script_text == ""
    for tag, attrs in page.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not re.match(r"(?i)^(https?:)?//", value), (tag, value)
    scripts = [a["src"] for t, a in page.tags if t == "script"]
    assert scripts == ["/playground/app.js"]
    for name, media_type in ASSETS.items():
        asset = gateway.client.get(f"/playground/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"] == media_type
        assert asset.headers["content-security-policy"] == csp
        if name.endswith((".js", ".css")):  # nothing fetched from another site
            assert "http://" not in asset.text and "https://" not in asset.text, name
    missing = gateway.client.get("/playground/secrets.txt")
    assert missing.status_code == 404
    assert missing.json()["success"] is False
    escape = gateway.client.get("/playground/..%2Fapp.py")
    assert escape.status_code == 404


def test_static_files_are_package_data() -> None:
    """Every file of services/http/static matches a package-data pattern of services.http, so
    an installed (non-editable) package serves the page too."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["services.http"]
    package = ROOT / "services" / "http"
    covered = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    files = {p for p in STATIC.rglob("*") if p.is_file()}
    assert files, "no static files"
    assert files <= covered, sorted(str(p.relative_to(package)) for p in files - covered)


# -- the browser --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromium-driver are not installed (scripts/ci-deps.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--window-size=1200,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(condition)
    except Exception:
        status = driver.execute_script(
            "return ['load-status','result-status','wallet-status']"
            ".map(id => id + ': ' + document.getElementById(id).textContent).join(' | ')"
        )
        raise AssertionError(f"timed out waiting for {what}; page says: {status}") from None


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.find_element("id", element_id).text)


def open_page(driver: Any, url: str) -> None:
    driver.get(url + "/playground")
    driver.get_log("browser")  # drop what came before this page
    wait_for(driver, lambda d: d.find_element("id", "model-select").is_enabled(), "the page")


def choose_model(driver: Any, model_id: str) -> None:
    from selenium.webdriver.support.ui import Select

    wait_for(
        driver,
        lambda d: d.find_elements("css selector", f"#model-select option[value='{model_id}']"),
        f"{model_id} in the model list",
    )
    Select(driver.find_element("id", "model-select")).select_by_value(model_id)
    wait_for(driver, lambda d: d.find_element("id", "model-info").is_displayed(), "model info")


def predictions(driver: Any) -> list[str]:
    items = driver.find_elements("css selector", "#predictions li .class-name")
    return [str(i.text) for i in items]


def page_errors(driver: Any) -> list[str]:
    """Console errors (a Content-Security-Policy violation is one), save failed requests the
    test provoked on purpose."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def timings(driver: Any) -> dict[str, float]:
    rows = driver.find_elements("css selector", "#timings-body tr")
    return {
        str(r.get_attribute("data-stage")): float(r.find_element("css selector", "td").text)
        for r in rows
    }


@needs_browser
def test_cat_photo_upload_shows_classes_timings_and_cache(
    browser: Any,
    gateway: Gateway,
    efficientnet: PublishResult,
    effnet_id: str,
    photos: dict[str, bytes],
    tmp_path: Path,
) -> None:
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(photos["chelsea"])
    # The session gateway's cache holds three models and other tests load theirs: make sure
    # the model is in memory, so the page lists it.
    r = gateway.client.post("/api/models/load", json={"metadataCid": efficientnet.metadata_cid})
    assert r.status_code == 200 and r.json()["model_id"] == effnet_id, r.text
    t0 = time.monotonic()
    open_page(browser, gateway.url)
    choose_model(browser, effnet_id)
    assert text_of(browser, "info-pre") == "image"
    assert not browser.find_element("id", "tensor-section").is_displayed()
    browser.find_element("id", "image-input").send_keys(str(photo))
    wait_for(browser, lambda d: predictions(d), "predictions")
    top = predictions(browser)
    assert top[0] in CAT_LABELS, top
    assert len(top) == 5
    bars = browser.find_elements("css selector", "#predictions li meter")
    values = [float(b.get_attribute("value")) for b in bars]
    assert values == sorted(values, reverse=True) and 0 < values[0] <= 1
    stages = timings(browser)
    assert set(stages) >= {"preprocessing_time_ms", "inference_time_ms", "total_time_ms"}
    assert stages["inference_time_ms"] > 0
    assert text_of(browser, "cache-status") == "bypass"  # the session gateway caches nothing
    assert re.fullmatch(r"[0-9a-f]{32}", text_of(browser, "request-id"))
    assert browser.find_element("id", "image-preview").is_displayed()
    assert page_errors(browser) == []
    assert time.monotonic() - t0 < 30


@pytest.fixture(scope="module")
def small_model(
    store: LocalContentStore, tmp_path_factory: pytest.TempPathFactory
) -> PublishResult:
    path = linear_model(tmp_path_factory.mktemp("playground") / "lin.onnx", seed=41)
    return asyncio.run(publish_model(store, path, name="playground-linear"))


@needs_browser
def test_load_by_cid_and_run_a_tensor(
    browser: Any, gateway: Gateway, small_model: PublishResult
) -> None:
    open_page(browser, gateway.url)
    browser.find_element("css selector", "#load-panel summary").click()
    browser.find_element("id", "load-cid").send_keys(small_model.metadata_cid)
    browser.find_element("id", "load-button").click()
    wait_for(browser, lambda d: small_model.model_id in text_of(d, "load-status"), "the load reply")
    assert browser.find_element("id", "model-select").get_attribute("value") == (
        small_model.model_id
    )
    wait_for(browser, lambda d: d.find_element("id", "tensor-section").is_displayed(), "tensor")
    assert not browser.find_element("id", "image-section").is_displayed()
    box = browser.find_element("id", "tensor-input")
    assert box.get_attribute("value") == "[[0,0,0,0,0,0,0,0]]"  # x [batch, 8], batch 1
    box.clear()
    box.send_keys("[[1, 2, 3]]")
    browser.find_element("id", "run-button").click()
    wait_for(
        browser,
        lambda d: "error" in (d.find_element("id", "result-status").get_attribute("class") or ""),
        "the error",
    )
    assert text_of(browser, "result-status").startswith("400")
    box.clear()
    box.send_keys("[[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]")
    browser.find_element("id", "run-button").click()
    wait_for(browser, lambda d: predictions(d), "predictions")
    assert len(predictions(browser)) == 4
    assert "total_time_ms" in timings(browser)
    errors = page_errors(browser)
    assert all("400" in e for e in errors), errors  # only the bad tensor, asked for above


OPERATOR_TOKEN = "playground-operator-0123456789"


@needs_browser
@pytest.mark.parametrize("private_gateway", [{"admin_token": OPERATOR_TOKEN}], indirect=True)
def test_load_needs_the_operator_token_when_one_is_set(
    browser: Any, private_gateway: Gateway, small_model: PublishResult
) -> None:
    open_page(browser, private_gateway.url)
    browser.find_element("css selector", "#load-panel summary").click()
    browser.find_element("id", "load-cid").send_keys(small_model.metadata_cid)
    browser.find_element("id", "load-button").click()
    wait_for(browser, lambda d: text_of(d, "load-status").startswith("401"), "the 401")
    assert "CIDSERVE_ADMIN_TOKEN" in text_of(browser, "load-status")
    browser.find_element("id", "admin-token").send_keys(OPERATOR_TOKEN)
    browser.find_element("id", "load-button").click()
    wait_for(browser, lambda d: small_model.model_id in text_of(d, "load-status"), "the load reply")
    assert "loaded" in text_of(browser, "load-status")


# -- signed requests from a wallet ----------------------------------------------------------


@needs_browser
def test_browser_canonical_string_matches_the_server(browser: Any, gateway: Gateway) -> None:
    """signing.js builds the server's canonical string and SHA-256 for fixed inputs, with
    WebCrypto and without it."""
    headers = {
        "Content-Type": " Application/X-Cidserve-Tensor ",
        "X-Tensor-Shape": " 1,3,224,224 ",
        "X-Tensor-Dtype": "float32",
        "X-Tensor-Order": "nchw",
        "Accept": "application/json",
    }
    parts = {
        "method": "post",
        "target": "/api/models/m-1a2b3c4d/predict?top_k=3&threshold=0.5",
        "host": "Gateway.Example:8000",
        "bodyHash": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "timestamp": 1700000000,
        "nonce": "abcdEFGH_-12",
        "signer": "0xAbCdEf0123456789aBcDeF0123456789AbCdEf01",
    }
    bodies = [b"", b"abc", bytes(55), bytes(56), bytes(64), bytes(range(256)) * 5]
    open_page(browser, gateway.url)
    got = browser.execute_async_script(
        """
        const [headers, parts, bodies, done] = arguments;
        import('/playground/signing.js').then(async (s) => {
          const lower = Object.fromEntries(
            Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
          const text = s.canonicalString({...parts, contentType: lower['content-type'],
                                          covered: s.coveredHeaders(headers)});
          const hashes = [];
          for (const body of bodies) {
            const bytes = new Uint8Array(body);
            hashes.push([await s.sha256Hex(bytes), s.sha256HexPlain(bytes)]);
          }
          let refused = '';
          try { s.canonicalString({...parts, target: '/a\\nb', contentType: '', covered: []}); }
          catch (e) { refused = e.message; }
          done({text, hashes, hex: s.utf8Hex('é\\n'), refused});
        }).catch((e) => done({error: String(e)}));
        """,
        headers,
        parts,
        [list(b) for b in bodies],
    )
    assert "error" not in got, got
    expected = canonical_string(
        parts["method"],
        parts["target"],
        host=parts["host"],
        content_type=headers["Content-Type"],
        covered=covered_headers(headers),
        body_hash=parts["bodyHash"],
        timestamp=parts["timestamp"],
        nonce=parts["nonce"],
        signer=parts["signer"],
    )
    assert got["text"] == expected
    for body, (webcrypto, plain) in zip(bodies, got["hashes"], strict=True):
        assert webcrypto == plain == hashlib.sha256(body).hexdigest(), len(body)
    assert got["hex"] == "0x" + "é\n".encode().hex()
    assert "line break" in got["refused"]


FAKE_WALLET = """
window.__wallet = {requests: []};
window.ethereum = {
  request: async ({method, params}) => {
    if (method === 'eth_requestAccounts' || method === 'eth_accounts') return ['%s'];
    if (method === 'personal_sign') {
      return new Promise((resolve, reject) =>
        window.__wallet.requests.push({params, resolve, reject}));
    }
    throw new Error('unsupported method ' + method);
  },
};
"""


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LicenseChain]:
    with license_chain(tmp_path_factory.mktemp("anvil")) as running:
        yield running


def answer_signature(driver: Any, account: Any, index: int) -> str:
    """Wait for the page's ``personal_sign`` number ``index``; sign its message with
    ``account`` (EIP-191, as a wallet would) and hand the signature back. Returns the text."""
    wait_for(
        driver,
        lambda d: d.execute_script("return window.__wallet.requests.length") > index,
        "the page's personal_sign",
    )
    message_hex, address = driver.execute_script(
        "return window.__wallet.requests[arguments[0]].params", index
    )
    assert address.lower() == account.address.lower()
    text = bytes.fromhex(message_hex.removeprefix("0x")).decode()
    signature = account.sign_message(encode_defunct(text=text)).signature
    driver.execute_script(
        "window.__wallet.requests[arguments[0]].resolve(arguments[1])",
        index,
        "0x" + bytes(signature).hex(),
    )
    return text


@needs_browser
def test_licensed_model_is_signed_by_the_injected_wallet(
    browser: Any,
    workdir: Path,
    store: LocalContentStore,
    chain: LicenseChain,
    tmp_path: Path,
) -> None:
    path = linear_model(tmp_path / "licensed.onnx", seed=42)
    published = asyncio.run(publish_model(store, path, name="playground-licensed"))
    token = int(chain.client().mint(published.metadata_cid).value)
    licensee = Account.create()
    chain.client().grant(token, licensee.address, chain.anvil.chain_time() + 3600)
    with chain_gateway(workdir, store, chain) as gw:
        r = gw.client.post(
            "/api/models/load",
            json={"metadataCid": published.metadata_cid, "tokenId": token, "warmup": False},
        )
        assert r.status_code == 200, r.text
        model_id = r.json()["model_id"]

        # No wallet in this browser: the page says so and sends nothing.
        open_page(browser, gw.url)
        choose_model(browser, model_id)
        assert text_of(browser, "info-licensed") == f"yes (token {token})"
        wallet_line = text_of(browser, "wallet-status")
        assert "no wallet" in wallet_line and "licensed" in wallet_line
        browser.find_element("id", "run-button").click()
        wait_for(browser, lambda d: "Not sent" in text_of(d, "result-status"), "the refusal")

        # An injected wallet: each run asks it to sign the request's canonical string.
        injected = browser.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument", {"source": FAKE_WALLET % licensee.address}
        )
        try:
            open_page(browser, gw.url)
            choose_model(browser, model_id)
            assert "signed by your wallet" in text_of(browser, "wallet-status")
            host = gw.url.removeprefix("http://")
            for index, cache in enumerate(("miss", "hit")):
                browser.find_element("id", "run-button").click()
                text = answer_signature(browser, licensee, index)
                lines = text.split("\n")
                assert lines[:5] == [
                    "cidserve-request-v2",
                    "POST",
                    "/api/inference/execute",
                    host,
                    "application/json",
                ]
                assert lines[8] == licensee.address.lower()
                wait_for(browser, lambda d: predictions(d), "predictions")
                assert len(predictions(browser)) == 4
                assert text_of(browser, "cache-status") == cache
            assert page_errors(browser) == []
        finally:
            browser.execute_cdp_cmd(
                "Page.removeScriptToEvaluateOnNewDocument", {"identifier": injected["identifier"]}
            )
