"""The license backend on an EVM chain: ``licenseStatus`` by raw ``eth_call``, cached.

:class:`ChainLicenseBackend` implements :class:`services.licensing.LicenseBackend`.

* ``has_valid_license(caller, token_id)``: one ``eth_call`` of
  ``licenseStatus(user, tokenId) -> (valid, expiresAt)``. The answer is cached in the
  :class:`~services.kv.KeyValueStore` (shared by replicas when it is Redis): a valid license
  for ``CIDSERVE_LICENSE_CACHE_TTL_S``, but never past its own ``expiresAt`` (checked again on
  every cache hit against the chain's clock), a missing one for
  ``CIDSERVE_LICENSE_NEGATIVE_CACHE_TTL_S``. Concurrent misses for the same caller and token
  share one call. A cache that cannot answer is bypassed.
* The chain cannot be reached: 503 with ``Retry-After`` (fail closed), or, with
  ``CIDSERVE_LICENSE_FAIL_OPEN``, the request is allowed and a warning is logged.
* ``check_token_metadata(token_id, cid)``: ``tokenURI(tokenId)`` must be ``ipfs://<cid>``
  (compared as CIDs, so base32/CIDv0 spellings of the same CID agree); else the load is
  refused (409, or 404 for a token that does not exist). Loads always fail closed.
* ``token_of_content(cid)``: the token the contract records for this content, with its minter,
  in one ``eth_call`` of ``tokenAndMinterOfCid(cid)`` (the contract keeps one token per
  multihash, so every spelling and codec of a CID finds the same token). A token, once minted,
  never changes, so it is cached for ``content_cache_ttl_s`` (a day); "no token yet" for
  ``CIDSERVE_LICENSE_NEGATIVE_CACHE_TTL_S``. That cache is this process's own
  (``content_cache``, bounded), never the shared store: whether content is licensed is not
  taken from state that Redis or another replica can write. With ``CIDSERVE_TRUSTED_MINTERS``,
  a token minted by any other address is refused (:class:`~services.errors.UntrustedToken`).
  Fails closed.

The chain's clock: expiries are block timestamps. :class:`ChainClock` keeps the offset between
the latest block's timestamp and this host's clock, refreshed in the background, so a cached
license stops being served when the chain's time passes its expiry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import time
from typing import Any

from eth_utils import to_checksum_address

from registry.unixfs import canonical_cid, cid_to_str
from services.chain import abi
from services.chain.rpc import JsonRpcClient, RpcError, RpcUnavailable
from services.errors import DependencyUnavailable, TokenMismatch, TokenNotFound, UntrustedToken
from services.licensing import Caller
from services.observability.metrics import Metrics
from services.state.kv import KeyValueStore, KVUnavailable, MemoryKV

log = logging.getLogger("cidserve.licensing.chain")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_BASE32_CID = re.compile(r"b[a-z2-7]{8,255}")
CONTENT_CACHE_TTL_S = 86_400.0
"""How long a content's token is cached: the contract never changes it once minted."""


class ChainConfigError(RuntimeError):
    """The configured chain or contract is not the one expected (wrong chain id, no code)."""


class ChainClock:
    """The chain's current time, as this host's clock plus a measured offset.

    The offset is ``latest block timestamp - local time`` when it was read; it is refreshed at
    most every ``refresh_s`` seconds, in the background once known, so the hot path does not
    wait for it. Until the first reading it is 0 (real chains follow wall-clock time).
    """

    def __init__(self, rpc: JsonRpcClient, refresh_s: float = 5.0) -> None:
        self.rpc = rpc
        self.refresh_s = refresh_s
        self.offset_s = 0.0
        self.known = False
        self._read_at = -float("inf")
        self._task: asyncio.Task[None] | None = None

    def now(self) -> float:
        return time.time() + self.offset_s

    async def refresh(self) -> None:
        self._read_at = time.monotonic()
        stamp = await self.rpc.latest_block_timestamp()
        self.offset_s = stamp - time.time()
        self.known = True

    def maybe_refresh(self) -> None:
        """Start a background refresh when the reading is older than ``refresh_s``."""
        if time.monotonic() - self._read_at < self.refresh_s:
            return
        if self._task is not None and not self._task.done():
            return
        self._read_at = time.monotonic()
        self._task = asyncio.ensure_future(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        with contextlib.suppress(RpcUnavailable, RpcError):
            await self.refresh()

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class ChainLicenseBackend:
    """Licenses from a ModelLicense contract; see the module docstring."""

    name = "chain"
    enabled = True

    def __init__(
        self,
        rpc: JsonRpcClient,
        contract: str,
        kv: KeyValueStore,
        *,
        metrics: Metrics | None = None,
        cache_ttl_s: float = 30.0,
        negative_ttl_s: float = 2.0,
        fail_open: bool = False,
        expected_chain_id: int | None = None,
        retry_after_s: int = 5,
        clock_refresh_s: float = 5.0,
        artifact: abi.Artifact | None = None,
        trusted_minters: frozenset[str] = frozenset(),
        content_cache_ttl_s: float = CONTENT_CACHE_TTL_S,
        content_cache: KeyValueStore | None = None,
    ) -> None:
        self.rpc = rpc
        self.contract = contract
        self.kv = kv
        self.metrics = metrics
        self.cache_ttl_s = cache_ttl_s
        self.negative_ttl_s = min(negative_ttl_s, cache_ttl_s) if cache_ttl_s else 0.0
        self.fail_open = fail_open
        self.expected_chain_id = expected_chain_id
        self.retry_after_s = retry_after_s
        self.clock = ChainClock(rpc, clock_refresh_s)
        self.artifact = artifact
        self.trusted_minters = frozenset(m.lower() for m in trusted_minters)
        self.content_cache_ttl_s = content_cache_ttl_s if cache_ttl_s else 0.0
        if content_cache is None:  # (an empty store is falsy: no `or` here)
            content_cache = MemoryKV(max_entries=10_000, max_bytes=4 << 20)
        self.content_cache = content_cache
        self._prefix = f"license:{expected_chain_id or 0}:{contract.lower()}:"
        self._content_prefix = f"content-token:{expected_chain_id or 0}:{contract.lower()}:"
        self._inflight: dict[str, asyncio.Future[tuple[bool, int]]] = {}
        self._content_inflight: dict[str, asyncio.Future[tuple[int, str]]] = {}
        self._last_outage_log = -float("inf")

    # -- the hot path ---------------------------------------------------------------------

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.license_checks.labels(result).inc()

    async def has_valid_license(self, caller: Caller, token_id: int) -> bool:
        if not _ADDRESS.fullmatch(caller.address) or not 0 <= token_id < 2**256:
            self._count("invalid")  # not an EVM address (another authenticator): no license
            return False
        key = f"{self._prefix}{token_id}:{caller.address.lower()}"
        self.clock.maybe_refresh()
        if self.cache_ttl_s > 0:
            cached = await self._cache_get(key)
            if cached is not None:
                valid, expires_at = cached
                if not valid:
                    self._count("cached_invalid")
                    return False
                if expires_at > self.clock.now():
                    self._count("cached_valid")
                    return True
                # Expired by the chain's clock since it was cached: ask again.
        try:
            valid, expires_at = await self._status_once(key, caller.address, token_id)
        except (RpcUnavailable, RpcError, abi.AbiDecodeError) as exc:
            self._count("error")
            return self._outage(exc, token_id)
        self._count("valid" if valid else "invalid")
        return valid

    async def _status_once(self, key: str, address: str, token_id: int) -> tuple[bool, int]:
        """``licenseStatus`` for this key; concurrent misses share one call."""
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch_and_cache(key, address, token_id))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(key, None))
        return await asyncio.shield(pending)

    async def _fetch_and_cache(self, key: str, address: str, token_id: int) -> tuple[bool, int]:
        if not self.clock.known:
            with contextlib.suppress(RpcUnavailable, RpcError):
                await self.clock.refresh()
        data = await self.rpc.eth_call(self.contract, abi.LICENSE_STATUS.encode(address, token_id))
        valid, expires_at = abi.LICENSE_STATUS.decode(data)
        valid, expires_at = bool(valid), int(expires_at)
        if self.cache_ttl_s > 0:
            if valid:
                ttl = min(self.cache_ttl_s, expires_at - self.clock.now())
            else:
                ttl = self.negative_ttl_s
            if ttl > 0:
                await self._cache_set(key, valid, expires_at, ttl)
        return valid, expires_at

    async def _cache_get(self, key: str) -> tuple[bool, int] | None:
        try:
            raw = await self.kv.get(key)
        except KVUnavailable:
            return None
        if raw is None:
            return None
        try:
            flag, _, expires = raw.decode("ascii").partition(" ")
            return flag == "1", int(expires)
        except (UnicodeDecodeError, ValueError):
            return None

    async def _cache_set(self, key: str, valid: bool, expires_at: int, ttl: float) -> None:
        with contextlib.suppress(KVUnavailable):
            await self.kv.set(key, f"{int(valid)} {expires_at}".encode("ascii"), ttl)

    def _outage(self, exc: Exception, token_id: int) -> bool:
        now = time.monotonic()
        if now - self._last_outage_log > 10.0:
            self._last_outage_log = now
            if self.fail_open:
                log.warning(
                    "license chain unreachable (%s): CIDSERVE_LICENSE_FAIL_OPEN is set, "
                    "serving licensed models without a check",
                    exc,
                )
            else:
                log.error("license chain unreachable (%s): refusing licensed requests", exc)
        if self.fail_open:
            return True
        raise DependencyUnavailable(
            f"the license of token {token_id} cannot be checked: the chain does not answer",
            retry_after_s=self.retry_after_s,
        )

    # -- loads ----------------------------------------------------------------------------

    async def check_token_metadata(self, token_id: int, metadata_cid: str) -> None:
        try:
            data = await self.rpc.eth_call(self.contract, abi.TOKEN_URI.encode(token_id))
            (uri,) = abi.TOKEN_URI.decode(data)
        except RpcError as exc:
            revert = exc.revert_data
            reason = self.artifact.explain_revert(revert) if self.artifact and revert else ""
            if exc.is_revert:
                raise TokenNotFound(
                    f"token {token_id} does not exist on contract {self.contract}"
                    + (f" ({reason})" if reason else ""),
                    tokenId=str(token_id),
                ) from None
            raise self._load_unavailable(exc) from None
        except (RpcUnavailable, abi.AbiDecodeError) as exc:
            raise self._load_unavailable(exc) from None
        named = uri[len("ipfs://") :] if uri.startswith("ipfs://") else None
        if named is None or not _same_cid(named, metadata_cid):
            raise TokenMismatch(
                f"token {token_id} names metadata CID {named or uri!r}, not {metadata_cid}: "
                f"refusing to serve {metadata_cid} under token {token_id}",
                tokenId=str(token_id),
                tokenMetadataCid=named or uri,
                metadataCid=metadata_cid,
            )

    async def token_of_content(self, metadata_cid: str) -> int | None:
        cid = _canonical(metadata_cid)  # ValueError naming it when it is not a CID
        key = self._content_prefix + cid
        record = await self._content_cache_get(key) if self.content_cache_ttl_s > 0 else None
        if record is None:
            pending = self._content_inflight.get(key)
            if pending is None:
                pending = asyncio.ensure_future(self._fetch_content(key, cid))
                self._content_inflight[key] = pending
                pending.add_done_callback(lambda _f: self._content_inflight.pop(key, None))
            record = await asyncio.shield(pending)
        token_id, minter = record
        if token_id == 0:
            return None
        if self.trusted_minters and minter.lower() not in self.trusted_minters:
            raise UntrustedToken(
                f"token {token_id} of {cid} was minted by {minter}, which is not in "
                "CIDSERVE_TRUSTED_MINTERS: refusing to serve this content",
                tokenId=str(token_id),
                minter=minter,
                metadataCid=cid,
            )
        return token_id

    async def _fetch_content(self, key: str, cid: str) -> tuple[int, str]:
        try:
            data = await self.rpc.eth_call(self.contract, abi.TOKEN_AND_MINTER_OF_CID.encode(cid))
            token_id, minter = abi.TOKEN_AND_MINTER_OF_CID.decode(data)
        except RpcError as exc:
            if not exc.is_revert:
                raise self._load_unavailable(exc) from None
            revert = exc.revert_data
            reason = self.artifact.explain_revert(revert) if self.artifact and revert else ""
            log.error(
                "tokenAndMinterOfCid(%s) reverted on %s%s: is it a ModelLicense contract that "
                "keeps one token per content?",
                cid,
                self.contract,
                f" ({reason})" if reason else "",
            )
            raise DependencyUnavailable(
                f"the token of {cid} cannot be looked up on contract {self.contract}",
                retry_after_s=self.retry_after_s,
            ) from None
        except (RpcUnavailable, abi.AbiDecodeError) as exc:
            raise self._load_unavailable(exc) from None
        record = (int(token_id), to_checksum_address(minter))
        ttl = self.content_cache_ttl_s if record[0] else self.negative_ttl_s
        if self.content_cache_ttl_s > 0 and ttl > 0:
            with contextlib.suppress(KVUnavailable):
                await self.content_cache.set(key, f"{record[0]} {record[1]}".encode("ascii"), ttl)
        return record

    async def _content_cache_get(self, key: str) -> tuple[int, str] | None:
        try:
            raw = await self.content_cache.get(key)
        except KVUnavailable:
            return None
        if raw is None:
            return None
        try:
            token, _, minter = raw.decode("ascii").partition(" ")
            record = int(token), minter
        except (UnicodeDecodeError, ValueError):
            return None
        return record if _ADDRESS.fullmatch(minter) else None

    def _load_unavailable(self, exc: Exception) -> DependencyUnavailable:
        log.error("cannot check a token on chain: %s", exc)
        return DependencyUnavailable(
            f"the token cannot be checked on chain ({type(exc).__name__}); try again",
            retry_after_s=self.retry_after_s,
        )

    # -- start-up, health, shutdown -------------------------------------------------------

    async def verify(self) -> None:
        """At start-up: the endpoint is on the expected chain and the contract has code.

        Raises :class:`ChainConfigError` on a mismatch; an unreachable endpoint is only logged
        (requests fail closed until it answers).
        """
        try:
            chain_id = await self.rpc.chain_id()
            code = await self.rpc.get_code(self.contract)
            await self.clock.refresh()
        except (RpcUnavailable, RpcError) as exc:
            log.warning("license chain not reachable at start-up (%s); checks will retry", exc)
            return
        if self.expected_chain_id is not None and chain_id != self.expected_chain_id:
            raise ChainConfigError(
                f"{self.rpc.display_url} is chain {chain_id}, but CIDSERVE_CHAIN_ID is "
                f"{self.expected_chain_id}"
            )
        if not code:
            raise ChainConfigError(
                f"no contract at CIDSERVE_LICENSE_CONTRACT={self.contract} on chain {chain_id}"
            )
        log.info(
            "licensing on chain %d via %s, contract %s (cache %.0f s, %s); models loaded "
            "without a tokenId are open to every caller",
            chain_id,
            self.rpc.display_url,
            self.contract,
            self.cache_ttl_s,
            "fail open" if self.fail_open else "fail closed",
        )

    async def health(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.name,
            "rpc": self.rpc.display_url,
            "contract": self.contract,
            "cache_ttl_s": self.cache_ttl_s,
            "on_chain_outage": "allow (fail open)" if self.fail_open else "503 (fail closed)",
            "trusted_minters": sorted(self.trusted_minters) or "any",
            "open_models": "models loaded without a tokenId are open to every caller",
        }
        try:
            info["chain_id"] = await self.rpc.chain_id()
            info["block"] = await self.rpc.block_number()
        except (RpcUnavailable, RpcError) as exc:
            info["status"] = "degraded" if self.fail_open else "down"
            info["message"] = str(exc)
            return info
        info["status"] = "ok"
        return info

    async def aclose(self) -> None:
        await self.clock.aclose()
        await self.rpc.aclose()


def _same_cid(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return canonical_cid(a) == canonical_cid(b)
    except ValueError:
        return False


def _canonical(cid: str) -> str:
    """``canonical_cid``, with a fast path for a string already spelled canonically (what
    callers pass): a base32 round trip costs microseconds, a full parse hundreds of them."""
    if _BASE32_CID.fullmatch(cid):
        body = cid[1:].upper()
        try:
            raw = base64.b32decode(body + "=" * (-len(body) % 8))
        except binascii.Error:
            raw = b""
        if raw[:1] == b"\x01" and cid_to_str(raw) == cid:
            return cid
    return canonical_cid(cid)
