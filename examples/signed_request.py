"""Send signed requests to a licensed model from Python.

    CIDSERVE_PRIVATE_KEY=0x... .venv/bin/python examples/signed_request.py URL IMAGE [CONTENT_TYPE]

URL is the predict URL, e.g. 'http://127.0.0.1:8000/api/models/<model_id>/predict?top_k=3';
IMAGE the file sent as the body (CONTENT_TYPE default image/jpeg). The key is read from the
environment, never from the command line. The request is sent twice: once with the headers of
``sign_url`` (any HTTP client can send those), once through ``LicenseeAuth`` (httpx signs each
request itself). Each signature covers the method, URL, host, Content-Type and body, so they are
sent exactly as signed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.chain.client import LicenseeAuth, sign_url  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    key = os.environ.get("CIDSERVE_PRIVATE_KEY")
    if not key:
        print("set CIDSERVE_PRIVATE_KEY (the licensee's key)", file=sys.stderr)
        return 2
    url, image = argv[0], Path(argv[1]).read_bytes()
    headers = {"Content-Type": argv[2] if len(argv) == 3 else "image/jpeg"}

    # 1. Headers for one request, sent by any client.
    signed = sign_url(key, "POST", url, headers, image)
    r = httpx.post(url, content=image, headers=headers | signed, timeout=60)
    print(r.status_code, r.text)

    # 2. An httpx client that signs every request it sends.
    with httpx.Client(auth=LicenseeAuth(key), timeout=60) as client:
        r = client.post(url, content=image, headers=headers)
        print(r.status_code, r.text)
    return 0 if r.is_success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
