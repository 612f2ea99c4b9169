// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

/// @title cidserve model licenses
/// @notice One ERC-721 token per published model; its token URI is `ipfs://<metadataCid>`.
/// A model's content has at most one token: `mint` takes the metadata CID in its canonical
/// spelling only (CIDv1, multibase base32 lower-case, `b` prefix) and keys the token by the CID's
/// multihash, so no other spelling or codec of the same content can be minted again.
/// The token's current owner grants time-limited licenses to addresses, revokes them, and can
/// sell licenses for a fixed price in the native coin. Licenses are kept per (tokenId, user)
/// and survive a transfer of the token; the right to grant, revoke and set the price, and the
/// proceeds of later sales, move with the token. The token owner always holds a valid license.
contract ModelLicense is ERC721 {
    struct Listing {
        uint256 price; // 0: not for sale
        uint64 duration; // seconds of license per purchase
    }

    /// Longest metadata CID `mint` accepts, in characters (a sha2-512 CIDv1 is 113).
    uint256 public constant MAX_CID_LENGTH = 256;

    uint256 private _lastTokenId;
    mapping(uint256 tokenId => string) private _metadataCids;
    mapping(uint256 tokenId => address) private _minters;
    mapping(bytes32 multihashKey => uint256 tokenId) private _tokenOfContent;
    mapping(uint256 tokenId => mapping(address user => uint64)) private _expiries;
    mapping(uint256 tokenId => Listing) private _listings;
    mapping(address account => uint256) private _pending;

    event ModelMinted(uint256 indexed tokenId, address indexed owner, address indexed minter, string metadataCid);
    event LicenseGranted(uint256 indexed tokenId, address indexed user, uint64 expiresAt, address indexed grantor);
    event LicenseRevoked(uint256 indexed tokenId, address indexed user, address indexed by);
    event PriceSet(uint256 indexed tokenId, uint256 price, uint64 duration);
    event LicensePurchased(uint256 indexed tokenId, address indexed buyer, uint64 expiresAt, uint256 price);
    event Withdrawal(address indexed account, uint256 amount);

    /// `mint` was given an empty metadata CID.
    error EmptyMetadataCid();
    /// The CID is not a CIDv1 in its canonical spelling: multibase base32 lower-case (`b`
    /// prefix, no padding, zero trailing bits), version 1, a codec, then a whole multihash.
    error NonCanonicalCid(string cid);
    /// The content (the CID's multihash, whatever its codec) already has a token.
    error ContentAlreadyMinted(uint256 existingTokenId);
    /// Only the token's current owner may do this.
    error NotTokenOwner(uint256 tokenId, address caller);
    /// A license must be granted for the zero address.
    error InvalidLicensee();
    /// A granted license must expire after the current block's timestamp.
    error ExpiryInPast(uint64 expiresAt, uint256 currentTime);
    /// A price above zero needs a license duration above zero.
    error ZeroDuration();
    /// The token has no price set (price 0).
    error NotForSale(uint256 tokenId);
    /// `buyLicense` needs exactly the listed price.
    error WrongPayment(uint256 expected, uint256 sent);
    /// The caller has no proceeds to withdraw.
    error NothingToWithdraw(address account);
    /// Sending the proceeds to the caller failed.
    error WithdrawalFailed(address account, uint256 amount);

    constructor() ERC721("cidserve Model License", "CIDML") {}

    modifier onlyTokenOwner(uint256 tokenId) {
        if (_requireOwned(tokenId) != msg.sender) revert NotTokenOwner(tokenId, msg.sender);
        _;
    }

    // ---- publishing ----------------------------------------------------------------------

    /// @notice Mint a token for a model. Anyone may publish; ids start at 1. `metadataCid` must
    /// be spelled canonically (see `NonCanonicalCid`), and its content must not have a token
    /// yet (`ContentAlreadyMinted`). The caller is recorded as the token's minter.
    function mint(address to, string calldata metadataCid) external returns (uint256 tokenId) {
        if (bytes(metadataCid).length == 0) revert EmptyMetadataCid();
        bytes32 key = _contentKey(metadataCid);
        uint256 existing = _tokenOfContent[key];
        if (existing != 0) revert ContentAlreadyMinted(existing);
        tokenId = ++_lastTokenId;
        _tokenOfContent[key] = tokenId;
        _metadataCids[tokenId] = metadataCid;
        _minters[tokenId] = msg.sender;
        _safeMint(to, tokenId);
        emit ModelMinted(tokenId, to, msg.sender, metadataCid);
    }

    /// @notice The token of the content `cid` names (0: none). `cid` must be spelled
    /// canonically; any codec matches, since the content is identified by the multihash.
    function tokenOfCid(string calldata cid) external view returns (uint256) {
        return _tokenOfContent[_contentKey(cid)];
    }

    /// @notice The token of the content with this multihash (0: none).
    function tokenOfMultihash(bytes calldata multihash) external view returns (uint256) {
        return _tokenOfContent[keccak256(multihash)];
    }

    /// @notice `tokenOfCid` and that token's minter in one call (`(0, address(0))`: none).
    function tokenAndMinterOfCid(string calldata cid) external view returns (uint256 tokenId, address minter) {
        tokenId = _tokenOfContent[_contentKey(cid)];
        minter = _minters[tokenId];
    }

    /// @notice The address that minted the token (the publisher; the first owner may differ).
    /// Reverts for a nonexistent token.
    function minterOf(uint256 tokenId) external view returns (address) {
        _requireOwned(tokenId);
        return _minters[tokenId];
    }

    /// @notice The metadata CID the token names. Reverts for a nonexistent token.
    function metadataCid(uint256 tokenId) external view returns (string memory) {
        _requireOwned(tokenId);
        return _metadataCids[tokenId];
    }

    /// @notice `ipfs://<metadataCid>`. Reverts for a nonexistent token.
    function tokenURI(uint256 tokenId) public view override returns (string memory) {
        _requireOwned(tokenId);
        return string.concat("ipfs://", _metadataCids[tokenId]);
    }

    // ---- licenses ------------------------------------------------------------------------

    /// @notice Set `user`'s license for `tokenId` to expire at `expiresAt` (replaces any
    /// earlier expiry, longer or shorter).
    function grantLicense(uint256 tokenId, address user, uint64 expiresAt) external onlyTokenOwner(tokenId) {
        if (user == address(0)) revert InvalidLicensee();
        if (expiresAt <= block.timestamp) revert ExpiryInPast(expiresAt, block.timestamp);
        _expiries[tokenId][user] = expiresAt;
        emit LicenseGranted(tokenId, user, expiresAt, msg.sender);
    }

    /// @notice End `user`'s license for `tokenId` now.
    function revokeLicense(uint256 tokenId, address user) external onlyTokenOwner(tokenId) {
        delete _expiries[tokenId][user];
        emit LicenseRevoked(tokenId, user, msg.sender);
    }

    /// @notice The stored license expiry (0 if none; the owner's implicit license is not stored).
    function licenseExpiry(uint256 tokenId, address user) external view returns (uint64) {
        return _expiries[tokenId][user];
    }

    /// @notice True if `user` owns `tokenId` or holds a license that has not expired; false
    /// for a nonexistent token.
    function hasValidLicense(address user, uint256 tokenId) external view returns (bool) {
        (bool valid,) = licenseStatus(user, tokenId);
        return valid;
    }

    /// @notice `hasValidLicense` and the expiry in one call: `expiresAt` is the stored expiry
    /// (type(uint64).max for the owner, 0 for a nonexistent token or no license).
    function licenseStatus(address user, uint256 tokenId) public view returns (bool valid, uint64 expiresAt) {
        address owner = _ownerOf(tokenId);
        if (owner == address(0)) return (false, 0);
        if (user == owner) return (true, type(uint64).max);
        expiresAt = _expiries[tokenId][user];
        valid = expiresAt > block.timestamp;
    }

    // ---- sales ---------------------------------------------------------------------------

    /// @notice Sell licenses of `duration` seconds for `price` wei each; price 0 stops sales.
    function setPrice(uint256 tokenId, uint256 price, uint64 duration) external onlyTokenOwner(tokenId) {
        if (price > 0 && duration == 0) revert ZeroDuration();
        _listings[tokenId] = Listing(price, duration);
        emit PriceSet(tokenId, price, duration);
    }

    /// @notice The price in wei (0: not for sale) and the duration one purchase buys.
    function priceOf(uint256 tokenId) external view returns (uint256 price, uint64 duration) {
        Listing storage listing = _listings[tokenId];
        return (listing.price, listing.duration);
    }

    /// @notice Buy (or extend) a license for the caller with exactly the listed price. The
    /// license runs from the later of now and the current expiry; the payment is credited to
    /// the token's current owner, who takes it out with `withdraw`.
    function buyLicense(uint256 tokenId) external payable {
        address owner = _requireOwned(tokenId);
        Listing memory listing = _listings[tokenId];
        if (listing.price == 0) revert NotForSale(tokenId);
        if (msg.value != listing.price) revert WrongPayment(listing.price, msg.value);
        uint256 current = _expiries[tokenId][msg.sender];
        uint256 start = current > block.timestamp ? current : block.timestamp;
        uint64 expiresAt = SafeCast.toUint64(start + listing.duration);
        _expiries[tokenId][msg.sender] = expiresAt;
        _pending[owner] += msg.value;
        emit LicensePurchased(tokenId, msg.sender, expiresAt, msg.value);
    }

    /// @notice Send the caller's credited proceeds to the caller.
    function withdraw() external {
        uint256 amount = _pending[msg.sender];
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        _pending[msg.sender] = 0; // before the call: a reentrant withdraw finds nothing
        emit Withdrawal(msg.sender, amount);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert WithdrawalFailed(msg.sender, amount);
    }

    /// @notice Proceeds credited to `account` and not yet withdrawn.
    function pendingWithdrawal(address account) external view returns (uint256) {
        return _pending[account];
    }

    // ---- canonical CIDs --------------------------------------------------------------------

    /// keccak256 of the multihash of a canonically spelled CIDv1; reverts `NonCanonicalCid`.
    function _contentKey(string calldata cid) private pure returns (bytes32 key) {
        bytes memory raw = _base32Decode(cid);
        // version 1, then the codec (any), then a multihash: code, digest length, digest
        (uint256 version, uint256 pos, bool ok) = _varint(raw, 0);
        if (!ok || version != 1) revert NonCanonicalCid(cid);
        (, pos, ok) = _varint(raw, pos);
        if (!ok) revert NonCanonicalCid(cid);
        uint256 start = pos;
        (, pos, ok) = _varint(raw, pos);
        if (!ok) revert NonCanonicalCid(cid);
        uint256 digestLength;
        (digestLength, pos, ok) = _varint(raw, pos);
        if (!ok || raw.length - pos != digestLength) revert NonCanonicalCid(cid);
        assembly ("memory-safe") {
            key := keccak256(add(add(raw, 0x20), start), sub(mload(raw), start))
        }
    }

    /// The bytes of `b` + RFC 4648 base32 in lower case without padding, whose unused trailing
    /// bits are zero (the one spelling of those bytes); reverts `NonCanonicalCid` otherwise.
    function _base32Decode(string calldata cid) private pure returns (bytes memory raw) {
        bytes calldata text = bytes(cid);
        uint256 length = text.length;
        if (length < 2 || length > MAX_CID_LENGTH || text[0] != "b") revert NonCanonicalCid(cid);
        raw = new bytes(((length - 1) * 5) / 8);
        uint256 buffer;
        uint256 bits;
        uint256 out;
        for (uint256 i = 1; i < length; ++i) {
            uint256 c = uint8(text[i]);
            uint256 value;
            if (c >= 0x61 && c <= 0x7a) {
                value = c - 0x61; // a-z: 0-25
            } else if (c >= 0x32 && c <= 0x37) {
                value = c - 0x32 + 26; // 2-7: 26-31
            } else {
                revert NonCanonicalCid(cid);
            }
            buffer = (buffer << 5) | value;
            bits += 5;
            if (bits >= 8) {
                bits -= 8;
                // casting to 'uint8' is safe because buffer holds fewer than bits + 8 bits
                // forge-lint: disable-next-line(unsafe-typecast)
                raw[out++] = bytes1(uint8(buffer >> bits));
                buffer %= 2 ** bits; // keep the bits not yet written
            }
        }
        // A whole unused character, or set bits after the last byte: not the canonical spelling.
        if (bits >= 5 || buffer != 0) revert NonCanonicalCid(cid);
    }

    /// An unsigned varint (multiformats: at most 9 bytes, minimally encoded) at `raw[pos]`:
    /// its value and the index after it; `ok` is false when it is truncated or not minimal.
    function _varint(bytes memory raw, uint256 pos) private pure returns (uint256 value, uint256 next, bool ok) {
        for (uint256 shift = 0; shift < 63; shift += 7) {
            if (pos >= raw.length) return (0, pos, false);
            uint256 b = uint8(raw[pos++]);
            value |= (b & 0x7f) << shift;
            if (b < 0x80) return (value, pos, b != 0 || shift == 0);
        }
        return (0, pos, false);
    }
}
