"""Transactions on the ModelLicense contract, for the CLI: deploy, mint, grant, revoke, sell.

These run once per command, so they use web3 (its per-call overhead does not matter here);
the service's hot path uses :mod:`services.chain.rpc` instead. Transactions are signed
locally with the key from :mod:`services.chain.keys` and sent raw; each call waits for the
receipt and raises :class:`ContractReverted` with the contract's error name when it fails.
``mint`` sends the metadata CID in its canonical spelling (the only one the contract accepts)
and raises :class:`ContentAlreadyMinted` when the content already has a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError, Web3RPCError
from web3.logs import DISCARD

from registry.unixfs import canonical_cid
from services.chain.abi import MAX_UINT64, Artifact, load_artifact, selector
from services.chain.reverts import ContentAlreadyMinted, ContractReverted

_CONTENT_ALREADY_MINTED = selector("ContentAlreadyMinted(uint256)")
_ZERO_ADDRESS = "0x" + "0" * 40

__all__ = ["ChainClient", "ContentAlreadyMinted", "ContractReverted", "LicenseInfo", "TxResult"]


@dataclass(frozen=True, slots=True)
class TxResult:
    tx_hash: str
    block: int
    gas_used: int
    value: Any = None

    def to_json(self) -> dict[str, Any]:
        return {"txHash": self.tx_hash, "block": self.block, "gasUsed": self.gas_used}


@dataclass(frozen=True, slots=True)
class LicenseInfo:
    valid: bool
    expires_at: int
    owner: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "expiresAt": None if self.owner else self.expires_at,
            "owner": self.owner,
        }


class ChainClient:
    """web3 on one RPC endpoint, with an optional local signing account."""

    def __init__(
        self,
        rpc_url: str,
        *,
        account: LocalAccount | None = None,
        contract: str | None = None,
        artifact: Artifact | None = None,
        chain_id: int | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
        self.account = account
        self.artifact = artifact or load_artifact()
        self.timeout_s = timeout_s
        self._chain_id = chain_id
        self.address = Web3.to_checksum_address(contract) if contract else None

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def contract(self) -> Any:
        if self.address is None:
            raise ValueError("no contract: set CIDSERVE_LICENSE_CONTRACT (or pass --contract)")
        return self.w3.eth.contract(address=self.address, abi=self.artifact.abi)

    @staticmethod
    def _revert_data(exc: Exception) -> bytes:
        data = getattr(exc, "data", None)
        if isinstance(data, str) and data.startswith("0x"):
            try:
                return bytes.fromhex(data[2:])
            except ValueError:
                return b""
        return b""

    def _explain(self, exc: Exception) -> str:
        data = self._revert_data(exc)
        return self.artifact.explain_revert(data) if data else str(exc)

    def _send(self, tx: dict[str, Any]) -> Any:
        if self.account is None:
            raise ValueError("this command sends a transaction: it needs a signing key")
        tx.setdefault("from", self.account.address)
        tx.setdefault("chainId", self.chain_id)
        tx.setdefault("nonce", self.w3.eth.get_transaction_count(self.account.address, "pending"))
        signed = self.account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.timeout_s)
        if receipt["status"] != 1:
            raise ContractReverted(f"transaction {tx_hash.hex()} reverted")
        return receipt

    def _transact(self, fn: Any, value: int = 0) -> Any:
        if self.account is None:
            raise ValueError("this command sends a transaction: it needs a signing key")
        try:
            tx = fn.build_transaction({"from": self.account.address, "value": value})
        except (ContractCustomError, ContractLogicError, Web3RPCError) as exc:
            raise ContractReverted(self._explain(exc), self._revert_data(exc)) from None
        return self._send(tx)

    @staticmethod
    def _result(receipt: Any, value: Any = None) -> TxResult:
        return TxResult(
            tx_hash="0x" + bytes(receipt["transactionHash"]).hex(),
            block=int(receipt["blockNumber"]),
            gas_used=int(receipt["gasUsed"]),
            value=value,
        )

    def deploy(self) -> TxResult:
        """Deploy the artifact's bytecode; ``value`` is the new contract's address."""
        factory = self.w3.eth.contract(abi=self.artifact.abi, bytecode=self.artifact.bytecode)
        if self.account is None:
            raise ValueError("deploying needs a signing key")
        tx = factory.constructor().build_transaction({"from": self.account.address})
        receipt = self._send(tx)
        self.address = Web3.to_checksum_address(receipt["contractAddress"])
        return self._result(receipt, self.address)

    def mint(self, metadata_cid: str, to: str | None = None) -> TxResult:
        """Mint a token naming ``metadata_cid`` (any spelling; sent canonical); ``value`` is the
        token id. Raises ``ValueError`` for a string that is not a CID and
        :class:`ContentAlreadyMinted` when the content has a token already."""
        if self.account is None:
            raise ValueError("minting needs a signing key")
        cid = canonical_cid(metadata_cid)
        owner = Web3.to_checksum_address(to) if to else self.account.address
        contract = self.contract()
        try:
            receipt = self._transact(contract.functions.mint(owner, cid))
        except ContractReverted as exc:
            if exc.data[:4] != _CONTENT_ALREADY_MINTED or len(exc.data) != 36:
                raise
            token_id = int.from_bytes(exc.data[4:], "big")
            raise ContentAlreadyMinted(cid, token_id, self.minter_of(token_id)) from None
        events = contract.events.ModelMinted().process_receipt(receipt, errors=DISCARD)
        token_id = int(events[0]["args"]["tokenId"]) if events else None
        return self._result(receipt, token_id)

    def grant(self, token_id: int, user: str, expires_at: int) -> TxResult:
        fn = self.contract().functions.grantLicense(
            token_id, Web3.to_checksum_address(user), expires_at
        )
        return self._result(self._transact(fn), expires_at)

    def revoke(self, token_id: int, user: str) -> TxResult:
        fn = self.contract().functions.revokeLicense(token_id, Web3.to_checksum_address(user))
        return self._result(self._transact(fn))

    def set_price(self, token_id: int, price_wei: int, duration_s: int) -> TxResult:
        fn = self.contract().functions.setPrice(token_id, price_wei, duration_s)
        return self._result(self._transact(fn))

    def buy(self, token_id: int) -> TxResult:
        """Buy a license at the listed price; ``value`` is the new expiry."""
        price, _duration = self.price_of(token_id)
        if price == 0:
            raise ContractReverted(f"token {token_id} is not for sale")
        receipt = self._transact(self.contract().functions.buyLicense(token_id), value=price)
        assert self.account is not None
        return self._result(receipt, self.license_status(token_id, self.account.address).expires_at)

    def withdraw(self) -> TxResult:
        return self._result(self._transact(self.contract().functions.withdraw()))

    # -- reads ----------------------------------------------------------------------------

    def _call(self, fn: Any) -> Any:
        try:
            return fn.call()
        except (ContractCustomError, ContractLogicError, Web3RPCError) as exc:
            raise ContractReverted(self._explain(exc)) from None

    def license_status(self, token_id: int, user: str) -> LicenseInfo:
        valid, expires_at = self._call(
            self.contract().functions.licenseStatus(Web3.to_checksum_address(user), token_id)
        )
        return LicenseInfo(bool(valid), int(expires_at), int(expires_at) == MAX_UINT64)

    def price_of(self, token_id: int) -> tuple[int, int]:
        price, duration = self._call(self.contract().functions.priceOf(token_id))
        return int(price), int(duration)

    def token_uri(self, token_id: int) -> str:
        return str(self._call(self.contract().functions.tokenURI(token_id)))

    def content_token(self, metadata_cid: str) -> tuple[int, str | None]:
        """The token of this content (any spelling of its CID; 0: none) and its minter."""
        fn = self.contract().functions.tokenAndMinterOfCid(canonical_cid(metadata_cid))
        token_id, minter = self._call(fn)
        return int(token_id), (None if int(token_id) == 0 else str(minter))

    def minter_of(self, token_id: int) -> str | None:
        """The address that minted the token; None when it cannot be read."""
        try:
            minter = str(self._call(self.contract().functions.minterOf(token_id)))
        except ContractReverted:
            return None
        return None if minter == _ZERO_ADDRESS else minter

    def block_timestamp(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])
