"""Shared by the client's tests: gateways on loopback and small published models."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.http.app import create_app
from services.wiring import build_services
from tests.anvil import LicenseChain
from tests.conftest import make_settings
from tests.harness import ServerThread
from tests.models import linear_model, linear_weights

ADMIN = "client-test-operator-token"
X = [0.5, -1.0, 0.25, 2.0, 0.0, 1.5, -0.5, 1.0]


def chain_settings(chain: LicenseChain) -> dict[str, object]:
    """Gateway settings naming ``chain`` (and the operator's token)."""
    return {
        "admin_token": ADMIN,
        "chain_rpc_url": chain.anvil.url,
        "license_contract": chain.contract,
        "chain_id": 31337,
        "chain_timeout_s": 2.0,
    }


@contextmanager
def serve(workdir: Path, store: LocalContentStore, **overrides: object) -> Iterator[str]:
    """A gateway on the shared store (prediction cache off); yields its URL."""
    settings = make_settings(workdir, prediction_cache=False, **overrides)
    services = build_services(settings, store=store)
    with ServerThread(create_app(settings, services)) as srv:
        yield srv.url


def publish_linear(store: LocalContentStore, tmp: Path, seed: int) -> PublishResult:
    path = linear_model(tmp / f"client-linear-{seed}.onnx", seed=seed)
    return asyncio.run(publish_model(store, path, name=f"client-linear-{seed}"))


def expected_y(seed: int, x: list[float] = X) -> np.ndarray:
    w, b = linear_weights(seed)
    return np.asarray([x], dtype=np.float32) @ w + b
