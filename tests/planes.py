"""Fixtures for unit tests of the data plane and the repository: the parts built by the
composition root (no HTTP) on small real ONNX models in a real content store."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from registry.local_store import LocalContentStore
from registry.publish import PublishResult, publish_model
from services.licensing import Caller
from services.settings import Settings
from services.wiring import Services, build_services
from tests.models import linear_model, slow_model


class Grants:
    """A license backend that grants licenses from a list (the chain's own tests are in
    tests/chain/test_licensing_chain.py): which caller holds which token."""

    name = "grants"
    enabled = True

    def __init__(self, grants: set[tuple[str, int]]) -> None:
        self.grants = grants
        self.checks = 0

    async def has_valid_license(self, caller: Caller, token_id: int) -> bool:
        self.checks += 1
        return (caller.address, token_id) in self.grants

    async def check_token_metadata(self, token_id: int, metadata_cid: str) -> None:
        return None

    async def token_of_content(self, metadata_cid: str) -> int | None:
        return None  # no chain: the token a load names is the model's

    async def health(self) -> dict[str, object]:
        return {"status": "ok"}


class Holders:
    """Licensing on, no chain: the addresses that hold a license to every token."""

    name = "test-holders"
    enabled = True

    def __init__(self, holders: set[str]) -> None:
        self.holders = {h.lower() for h in holders}

    async def has_valid_license(self, caller: Caller, token_id: int) -> bool:
        return caller.address.lower() in self.holders

    async def check_token_metadata(self, token_id: int, metadata_cid: str) -> None:
        return None

    async def token_of_content(self, metadata_cid: str) -> int | None:
        return None  # no chain: the token a load names is the model's

    async def health(self) -> dict[str, object]:
        return {"status": "ok"}


@pytest.fixture(scope="module")
def unit_store(tmp_path_factory: pytest.TempPathFactory) -> LocalContentStore:
    return LocalContentStore(tmp_path_factory.mktemp("unit-store"))


@pytest.fixture(scope="module")
def linear(unit_store: LocalContentStore, tmp_path_factory: pytest.TempPathFactory):
    """Three small classifiers (x [batch, 8] -> 4 classes), published."""
    d = tmp_path_factory.mktemp("linear")
    return [
        asyncio.run(
            publish_model(
                unit_store, linear_model(d / f"l{seed}.onnx", seed=seed), name=f"lin-{seed}"
            )
        )
        for seed in range(3)
    ]


@pytest.fixture(scope="module")
def slow(unit_store: LocalContentStore, tmp_path_factory: pytest.TempPathFactory) -> PublishResult:
    path = slow_model(tmp_path_factory.mktemp("slow") / "slow.onnx")
    return asyncio.run(publish_model(unit_store, path, name="slow"))


@pytest.fixture
def run_with(tmp_path: Path, unit_store: LocalContentStore):
    """``run_with(fn, **settings)``: ``fn(services)`` on a fresh instance, closed after."""

    def runner(
        fn: Callable[[Services], Coroutine[Any, Any, Any]], licensing: Any = None, **overrides: Any
    ) -> Any:
        # The slow test models' warm-up may take seconds on a busy 2-core machine: a generous
        # deadline unless a test sets its own (the hostile-model tests do).
        overrides.setdefault("warmup_timeout_ms", 60_000)
        settings = Settings(data_dir=tmp_path / "data", **overrides)

        async def main() -> Any:
            services = build_services(settings, store=unit_store, licensing=licensing)
            try:
                return await fn(services)
            finally:
                await services.aclose()

        return asyncio.run(main())

    return runner
