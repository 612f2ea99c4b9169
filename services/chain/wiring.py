"""Build the chain licensing parts from settings (used by ``services.app.build_services``)."""

from __future__ import annotations

import logging

from services.chain.abi import ArtifactMissing, load_artifact
from services.chain.auth import SignatureAuthenticator
from services.chain.backend import ChainLicenseBackend
from services.chain.rpc import JsonRpcClient
from services.observability.metrics import Metrics
from services.settings import Settings
from services.state.kv import KeyValueStore

log = logging.getLogger("cidserve.licensing")


def build_chain_licensing(
    settings: Settings, kv: KeyValueStore, metrics: Metrics
) -> tuple[ChainLicenseBackend, SignatureAuthenticator]:
    """The license backend and the signature authenticator for ``settings``'s chain.

    Call only when ``settings.licensing_enabled``.
    """
    assert settings.chain_rpc_url is not None and settings.license_contract is not None
    try:
        artifact = load_artifact()
    except (ArtifactMissing, ValueError):
        artifact = None  # only used to name revert reasons in messages
    backend = ChainLicenseBackend(
        JsonRpcClient(settings.chain_rpc_url, timeout_s=settings.chain_timeout_s),
        settings.license_contract,
        kv,
        metrics=metrics,
        cache_ttl_s=settings.license_cache_ttl_s,
        negative_ttl_s=settings.license_negative_cache_ttl_s,
        fail_open=settings.license_fail_open,
        expected_chain_id=settings.chain_id,
        artifact=artifact,
        trusted_minters=settings.trusted_minters,
    )
    authenticator = SignatureAuthenticator(
        kv,
        skew_s=settings.signature_skew_s,
        metrics=metrics,
        store_timeout_s=settings.redis_replay_timeout_ms / 1000,
    )
    return backend, authenticator
