"""The ModelLicense contract's interface: the build artifact and the calls the service makes.

The artifact (``services/chain/ModelLicense.json``, ``{"abi", "bytecode", ...}``) is produced
from ``contracts/`` by ``scripts/build-contracts.sh``; the CLI deploys its bytecode.

The service itself does not need web3 on the hot path: :class:`Function` holds one function's
signature and 4-byte selector and encodes its calldata / decodes its return data with
``eth_abi``. :func:`check_artifact` confirms that the artifact really has every function
described here, so a contract change that breaks the service is caught by a test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from eth_hash.auto import keccak

ARTIFACT_PATH = Path(__file__).with_name("ModelLicense.json")
MAX_UINT64 = 2**64 - 1


class ArtifactMissing(FileNotFoundError):
    """The contract build artifact is not there (run ``scripts/build-contracts.sh``)."""


class AbiDecodeError(ValueError):
    """Return data that does not decode as the function's outputs (no contract at the
    address, or another contract)."""


def selector(signature: str) -> bytes:
    """The 4-byte selector of ``name(type,...)``."""
    return keccak(signature.encode("ascii"))[:4]


@dataclass(frozen=True, slots=True)
class Function:
    """One contract function: encode its calldata, decode its return data."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    signature: str = field(init=False)
    selector: bytes = field(init=False)

    def __post_init__(self) -> None:
        sig = f"{self.name}({','.join(self.inputs)})"
        object.__setattr__(self, "signature", sig)
        object.__setattr__(self, "selector", selector(sig))

    def encode(self, *args: Any) -> bytes:
        return self.selector + abi_encode(list(self.inputs), list(args))

    def decode(self, data: bytes) -> tuple[Any, ...]:
        try:
            return tuple(abi_decode(list(self.outputs), data, strict=True))
        except (DecodingError, ValueError, TypeError) as exc:
            raise AbiDecodeError(
                f"{self.signature} returned {len(data)} bytes that do not decode as "
                f"({','.join(self.outputs)}): is the address a ModelLicense contract? ({exc})"
            ) from None


# The calls the service and the CLI make (the exact interface of contracts/src/ModelLicense.sol).
LICENSE_STATUS = Function("licenseStatus", ("address", "uint256"), ("bool", "uint64"))
HAS_VALID_LICENSE = Function("hasValidLicense", ("address", "uint256"), ("bool",))
TOKEN_URI = Function("tokenURI", ("uint256",), ("string",))
METADATA_CID = Function("metadataCid", ("uint256",), ("string",))
OWNER_OF = Function("ownerOf", ("uint256",), ("address",))
LICENSE_EXPIRY = Function("licenseExpiry", ("uint256", "address"), ("uint64",))
PRICE_OF = Function("priceOf", ("uint256",), ("uint256", "uint64"))
PENDING_WITHDRAWAL = Function("pendingWithdrawal", ("address",), ("uint256",))
TOKEN_OF_CID = Function("tokenOfCid", ("string",), ("uint256",))
TOKEN_OF_MULTIHASH = Function("tokenOfMultihash", ("bytes",), ("uint256",))
TOKEN_AND_MINTER_OF_CID = Function("tokenAndMinterOfCid", ("string",), ("uint256", "address"))
MINTER_OF = Function("minterOf", ("uint256",), ("address",))
MINT = Function("mint", ("address", "string"), ("uint256",))
GRANT_LICENSE = Function("grantLicense", ("uint256", "address", "uint64"), ())
REVOKE_LICENSE = Function("revokeLicense", ("uint256", "address"), ())
SET_PRICE = Function("setPrice", ("uint256", "uint256", "uint64"), ())
BUY_LICENSE = Function("buyLicense", ("uint256",), ())
WITHDRAW = Function("withdraw", (), ())

FUNCTIONS: tuple[Function, ...] = (
    LICENSE_STATUS,
    HAS_VALID_LICENSE,
    TOKEN_URI,
    METADATA_CID,
    OWNER_OF,
    LICENSE_EXPIRY,
    PRICE_OF,
    PENDING_WITHDRAWAL,
    TOKEN_OF_CID,
    TOKEN_OF_MULTIHASH,
    TOKEN_AND_MINTER_OF_CID,
    MINTER_OF,
    MINT,
    GRANT_LICENSE,
    REVOKE_LICENSE,
    SET_PRICE,
    BUY_LICENSE,
    WITHDRAW,
)


def _canonical_type(param: dict[str, Any]) -> str:
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_canonical_type(c) for c in param.get("components", []))
        return f"({inner}){kind[5:]}"
    return kind


@dataclass(frozen=True)
class Artifact:
    """The compiled contract: ABI and deployable bytecode."""

    abi: list[dict[str, Any]]
    bytecode: str
    path: Path | None = None

    @cached_property
    def function_signatures(self) -> dict[str, tuple[str, ...]]:
        """``name(types)`` -> output types, for every function in the ABI."""
        out: dict[str, tuple[str, ...]] = {}
        for item in self.abi:
            if item.get("type") == "function":
                ins = ",".join(_canonical_type(p) for p in item.get("inputs", []))
                outs = tuple(_canonical_type(p) for p in item.get("outputs", []))
                out[f"{item['name']}({ins})"] = outs
        return out

    @cached_property
    def errors(self) -> dict[bytes, tuple[str, tuple[str, ...]]]:
        """Custom-error selector -> (name, input types), to explain reverts."""
        out: dict[bytes, tuple[str, tuple[str, ...]]] = {
            selector("Error(string)"): ("Error", ("string",)),
            selector("Panic(uint256)"): ("Panic", ("uint256",)),
        }
        for item in self.abi:
            if item.get("type") == "error":
                types = tuple(_canonical_type(p) for p in item.get("inputs", []))
                out[selector(f"{item['name']}({','.join(types)})")] = (item["name"], types)
        return out

    def explain_revert(self, data: bytes) -> str:
        """``NotTokenOwner(7, 0xabc...)`` for revert data, or a short hex fallback."""
        if len(data) < 4:
            return "reverted without a reason"
        known = self.errors.get(data[:4])
        if known is None:
            return f"reverted with unknown error 0x{data[:4].hex()}"
        name, types = known
        try:
            values = abi_decode(list(types), data[4:])
        except (DecodingError, ValueError):
            return f"{name}(...)"
        if name == "Error":
            return str(values[0])
        return f"{name}({', '.join(str(v) for v in values)})"


def load_artifact(path: Path | None = None) -> Artifact:
    """Read the build artifact. Raises :class:`ArtifactMissing` with the fix in the message."""
    path = path or ARTIFACT_PATH
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactMissing(
            f"{path} does not exist: build the contract with scripts/build-contracts.sh"
        ) from None
    abi = doc.get("abi")
    bytecode = doc.get("bytecode")
    if isinstance(bytecode, dict):  # forge's {"object": "0x..."}
        bytecode = bytecode.get("object")
    if not isinstance(abi, list) or not isinstance(bytecode, str) or len(bytecode) < 4:
        raise ValueError(f"{path} is not a contract artifact (needs 'abi' and 'bytecode')")
    if not bytecode.startswith("0x"):
        bytecode = "0x" + bytecode
    return Artifact(abi=abi, bytecode=bytecode, path=path)


def check_artifact(artifact: Artifact) -> list[str]:
    """Functions of :data:`FUNCTIONS` that the artifact lacks or declares with other
    outputs (empty when the service and the contract agree)."""
    problems = []
    sigs = artifact.function_signatures
    for fn in FUNCTIONS:
        outs = sigs.get(fn.signature)
        if outs is None:
            problems.append(f"missing {fn.signature}")
        elif outs != fn.outputs:
            problems.append(f"{fn.signature} returns ({','.join(outs)}), expected {fn.outputs}")
    return problems
