"""Errors of the CLI's chain transactions, importable without web3 (the `chain` extra)."""

from __future__ import annotations


class ContractReverted(RuntimeError):
    """A transaction or call reverted; the message names the contract's error, ``data`` holds
    the revert data when the node returned it."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data


class ContentAlreadyMinted(ContractReverted):
    """``mint``: the content already has a token (one token per content, whatever spelling)."""

    def __init__(self, metadata_cid: str, token_id: int, minter: str | None) -> None:
        by = f" minted by {minter}" if minter else ""
        super().__init__(
            f"{metadata_cid} already has token {token_id}{by}: the contract keeps one token "
            f"per content (any spelling or codec of the CID); use token {token_id}"
        )
        self.metadata_cid = metadata_cid
        self.token_id = token_id
        self.minter = minter
