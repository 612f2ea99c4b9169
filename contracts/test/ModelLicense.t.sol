// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC721Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ModelLicense} from "../src/ModelLicense.sol";

/// The few Foundry cheatcodes these tests use (forge-std is not available offline).
interface Vm {
    function warp(uint256 newTimestamp) external;
    function prank(address sender) external;
    function startPrank(address sender) external;
    function stopPrank() external;
    function deal(address account, uint256 newBalance) external;
    function expectRevert(bytes4 revertData) external;
    function expectRevert(bytes calldata revertData) external;
    function expectEmit(bool checkTopic1, bool checkTopic2, bool checkTopic3, bool checkData, address emitter)
        external;
    function toString(uint256 value) external pure returns (string memory);
    function toString(address value) external pure returns (string memory);
}

/// Assertions that revert with a message naming both values.
abstract contract Assertions {
    Vm internal constant vm = Vm(0x7109709ECfa91a80626fF3989D68f67F5b1DD12D);

    function assertTrue(bool condition, string memory what) internal pure {
        if (!condition) revert(string.concat(what, ": expected true"));
    }

    function assertEq(uint256 actual, uint256 expected, string memory what) internal pure {
        if (actual != expected) {
            revert(string.concat(what, ": ", vm.toString(actual), " != expected ", vm.toString(expected)));
        }
    }

    function assertEq(address actual, address expected, string memory what) internal pure {
        if (actual != expected) {
            revert(string.concat(what, ": ", vm.toString(actual), " != expected ", vm.toString(expected)));
        }
    }

    function assertEq(string memory actual, string memory expected, string memory what) internal pure {
        if (keccak256(bytes(actual)) != keccak256(bytes(expected))) {
            revert(string.concat(what, ": '", actual, "' != expected '", expected, "'"));
        }
    }
}

/// Tries to withdraw twice: once normally and again from inside the payment it receives.
contract ReentrantSeller {
    ModelLicense private immutable licenses;
    bool public reentryFailed;

    constructor(ModelLicense licenses_) {
        licenses = licenses_;
    }

    function withdraw() external {
        licenses.withdraw();
    }

    function onERC721Received(address, address, uint256, bytes calldata) external pure returns (bytes4) {
        return this.onERC721Received.selector;
    }

    receive() external payable {
        if (address(licenses).balance > 0) {
            try licenses.withdraw() {}
            catch {
                reentryFailed = true;
            }
        }
    }
}

/// Owns a token and refuses any payment, so its withdrawal cannot be delivered.
contract RefusingSeller {
    function onERC721Received(address, address, uint256, bytes calldata) external pure returns (bytes4) {
        return this.onERC721Received.selector;
    }
}

contract ModelLicenseTest is Assertions {
    ModelLicense private licenses;

    address private constant PUBLISHER = address(0xB0B);
    address private constant USER = address(0xA11CE);
    address private constant BUYER = address(0xCAFE);
    address private constant STRANGER = address(0xBAD);
    address private constant NEW_OWNER = address(0xD00D);

    string private constant CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    // The same content (multihash sha2-256 c7d01489...) as CID, spelled and coded otherwise.
    string private constant CID_DAG_PB = "bafybeigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    string private constant CID_CODEC_240 = "bahyaceray7ibjciibbmmkaagla3mmwhyi6tmuz6eqzdbsijl4t4cadslxlha";
    string private constant CID_V0 = "QmbndsLC1CSf3kfubGmxeRRJbNUbm3JjyKwV1iw4jStAgm";
    string private constant CID_BASE58 = "zb2rhk6GMPQF3hfzwXTaNYFLKomMeC6UXdUt6jZKPpeVirLtV";
    string private constant CID_UPPER = "BAFKREIGH2AKISCAILDCQABSYG3DFR6CHU3FGPREGIYMSCK7E7AQA4S52ZY";
    bytes private constant MULTIHASH = hex"1220c7d01489080858c500065836c658f847a6ca67c4864619212be4f8200e4bbace";
    // Other contents (sha2-256 of "other", "seller", "refuser", "next"), raw codec.
    string private constant OTHER_CID = "bafkreigzfgfbbunqonmdpxcl3bo2yza3b46o6j5epzovhjkpf47vwl6p7i";
    string private constant SELLER_CID = "bafkreifee6pk4r5ku5ax3jregr4vuai4zmhmq4hx6vtenumbwviavcjkti";
    string private constant REFUSER_CID = "bafkreig7xrjstl623ghegkucr7qdqd2f5vqfm325oqgbqp37iokypt74om";
    string private constant NEXT_CID = "bafkreiggyhe2tscuh4pezwmaazgpcys65nq2sbydwjde77ydt4qwqjiiwm";
    uint256 private constant NOW = 1_700_000_000;
    uint256 private constant PRICE = 0.01 ether;
    uint64 private constant DURATION = 30 days;

    uint256 private tokenId;

    function setUp() public {
        vm.warp(NOW);
        licenses = new ModelLicense();
        vm.prank(PUBLISHER);
        tokenId = licenses.mint(PUBLISHER, CID);
    }

    function _inDays(uint256 d) private view returns (uint64) {
        return uint64(block.timestamp + d * 1 days);
    }

    function _forSale() private {
        vm.prank(PUBLISHER);
        licenses.setPrice(tokenId, PRICE, DURATION);
        vm.deal(BUYER, 1 ether);
    }

    // ---- mint, tokenURI --------------------------------------------------------------------

    function test_mint_numbersFromOneAndSetsTokenURI() public {
        assertEq(tokenId, 1, "first token id");
        assertEq(licenses.ownerOf(1), PUBLISHER, "owner");
        assertEq(licenses.tokenURI(1), string.concat("ipfs://", CID), "tokenURI");
        assertEq(licenses.metadataCid(1), CID, "metadataCid");
        assertEq(licenses.name(), "cidserve Model License", "name");
        assertEq(licenses.symbol(), "CIDML", "symbol");

        vm.prank(STRANGER); // anyone may publish, for anyone
        uint256 second = licenses.mint(USER, OTHER_CID);
        assertEq(second, 2, "second token id");
        assertEq(licenses.ownerOf(2), USER, "owner of second");
        assertEq(licenses.tokenURI(2), string.concat("ipfs://", OTHER_CID), "second tokenURI");
    }

    function test_mint_rejectsEmptyCid() public {
        vm.expectRevert(ModelLicense.EmptyMetadataCid.selector);
        licenses.mint(PUBLISHER, "");
    }

    function test_mint_toAContractThatCannotHoldTokensReverts() public {
        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721InvalidReceiver.selector, address(this)));
        licenses.mint(address(this), OTHER_CID);
    }

    function test_tokenURI_ofNonexistentTokenReverts() public {
        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721NonexistentToken.selector, 7));
        licenses.tokenURI(7);
    }

    // ---- one token per content -------------------------------------------------------------

    function _expectNonCanonical(string memory cid) private {
        vm.expectRevert(abi.encodeWithSelector(ModelLicense.NonCanonicalCid.selector, cid));
    }

    function test_mint_sameContentAgainRevertsWhateverTheCodec() public {
        bytes memory taken = abi.encodeWithSelector(ModelLicense.ContentAlreadyMinted.selector, tokenId);
        vm.startPrank(STRANGER);
        vm.expectRevert(taken);
        licenses.mint(STRANGER, CID);
        vm.expectRevert(taken); // dag-pb codec, same multihash
        licenses.mint(STRANGER, CID_DAG_PB);
        vm.expectRevert(taken); // a two-byte codec varint, same multihash
        licenses.mint(STRANGER, CID_CODEC_240);
        vm.stopPrank();
        vm.prank(PUBLISHER); // the first minter too
        vm.expectRevert(taken);
        licenses.mint(PUBLISHER, CID);
        assertEq(licenses.balanceOf(STRANGER), 0, "nothing minted");
    }

    function test_mint_otherSpellingsOfACidRevert() public {
        string[3] memory spellings = [CID_V0, CID_BASE58, CID_UPPER];
        for (uint256 i = 0; i < spellings.length; ++i) {
            _expectNonCanonical(spellings[i]);
            licenses.mint(STRANGER, spellings[i]);
        }
    }

    function test_mint_malformedCidsRevert() public {
        string[13] memory bad = [
            "b", // nothing after the multibase prefix
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zz", // trailing bits set
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zya", // a dangling character
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy====", // padding
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52", // digest cut short
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zyaa", // a byte after the digest
            "babkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", // version 0
            "bqeafkeray7ibjciibbmmkaagla3mmwhyi6tmuz6eqzdbsijl4t4cadslxlha", // version 1 as 0x81 0x00
            "bafkq", // version and codec, no multihash
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52Zy", // one upper-case letter
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s521y", // '1' is not base32
            "bafk reigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", // a space
            "not a cid"
        ];
        for (uint256 i = 0; i < bad.length; ++i) {
            _expectNonCanonical(bad[i]);
            licenses.mint(STRANGER, bad[i]);
        }
    }

    function test_mint_rejectsACidLongerThanTheLimit() public {
        bytes memory long = new bytes(licenses.MAX_CID_LENGTH() + 1);
        long[0] = "b";
        for (uint256 i = 1; i < long.length; ++i) {
            long[i] = "a";
        }
        _expectNonCanonical(string(long));
        licenses.mint(STRANGER, string(long));
    }

    function test_tokenOfCid_findsTheContentInAnyCodec() public {
        assertEq(licenses.tokenOfCid(CID), tokenId, "tokenOfCid");
        assertEq(licenses.tokenOfCid(CID_DAG_PB), tokenId, "tokenOfCid, dag-pb codec");
        assertEq(licenses.tokenOfCid(CID_CODEC_240), tokenId, "tokenOfCid, codec 240");
        assertEq(licenses.tokenOfCid(OTHER_CID), 0, "tokenOfCid of content without a token");
        assertEq(licenses.tokenOfMultihash(MULTIHASH), tokenId, "tokenOfMultihash");
        assertEq(licenses.tokenOfMultihash(hex"1220"), 0, "tokenOfMultihash of unknown content");

        vm.prank(STRANGER);
        uint256 other = licenses.mint(USER, OTHER_CID);
        assertEq(licenses.tokenOfCid(OTHER_CID), other, "tokenOfCid after a mint");
        (uint256 found, address minter) = licenses.tokenAndMinterOfCid(CID_DAG_PB);
        assertEq(found, tokenId, "tokenAndMinterOfCid.tokenId");
        assertEq(minter, PUBLISHER, "tokenAndMinterOfCid.minter");
        (found, minter) = licenses.tokenAndMinterOfCid(NEXT_CID);
        assertEq(found, 0, "tokenAndMinterOfCid.tokenId of content without a token");
        assertEq(minter, address(0), "tokenAndMinterOfCid.minter of content without a token");
    }

    function test_tokenOfCid_acceptsOnlyTheCanonicalSpelling() public {
        _expectNonCanonical(CID_V0);
        licenses.tokenOfCid(CID_V0);
        _expectNonCanonical(CID_BASE58);
        licenses.tokenOfCid(CID_BASE58);
        _expectNonCanonical(CID_UPPER);
        licenses.tokenAndMinterOfCid(CID_UPPER);
    }

    function test_minterOf_isTheCallerNotTheFirstOwner() public {
        vm.prank(STRANGER);
        uint256 other = licenses.mint(USER, OTHER_CID);
        assertEq(licenses.minterOf(tokenId), PUBLISHER, "minter of the first token");
        assertEq(licenses.minterOf(other), STRANGER, "minter");
        assertEq(licenses.ownerOf(other), USER, "owner");

        vm.prank(USER);
        licenses.transferFrom(USER, NEW_OWNER, other);
        assertEq(licenses.minterOf(other), STRANGER, "the minter stays after a transfer");

        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721NonexistentToken.selector, 5));
        licenses.minterOf(5);
    }

    // ---- grant, expiry, revoke -------------------------------------------------------------

    function test_grant_makesTheLicenseValid() public {
        assertTrue(!licenses.hasValidLicense(USER, tokenId), "no license before the grant");
        uint64 expiresAt = _inDays(10);
        vm.prank(PUBLISHER);
        licenses.grantLicense(tokenId, USER, expiresAt);

        assertTrue(licenses.hasValidLicense(USER, tokenId), "licensed after the grant");
        assertEq(licenses.licenseExpiry(tokenId, USER), expiresAt, "licenseExpiry");
        (bool valid, uint64 statusExpiry) = licenses.licenseStatus(USER, tokenId);
        assertTrue(valid, "licenseStatus.valid");
        assertEq(statusExpiry, expiresAt, "licenseStatus.expiresAt");
        assertTrue(!licenses.hasValidLicense(STRANGER, tokenId), "others stay unlicensed");
    }

    function test_license_expiresAtItsExpiry() public {
        uint64 expiresAt = _inDays(1);
        vm.prank(PUBLISHER);
        licenses.grantLicense(tokenId, USER, expiresAt);

        vm.warp(expiresAt - 1);
        assertTrue(licenses.hasValidLicense(USER, tokenId), "valid one second before expiry");
        vm.warp(expiresAt);
        assertTrue(!licenses.hasValidLicense(USER, tokenId), "invalid at expiry");
        (bool valid, uint64 statusExpiry) = licenses.licenseStatus(USER, tokenId);
        assertTrue(!valid, "licenseStatus.valid after expiry");
        assertEq(statusExpiry, expiresAt, "licenseStatus keeps the past expiry");
    }

    function test_grant_canShortenOrExtend() public {
        vm.startPrank(PUBLISHER);
        licenses.grantLicense(tokenId, USER, _inDays(30));
        licenses.grantLicense(tokenId, USER, _inDays(2));
        vm.stopPrank();
        assertEq(licenses.licenseExpiry(tokenId, USER), _inDays(2), "the last grant wins");
    }

    function test_grant_rejectsAnExpiryNotInTheFuture() public {
        vm.startPrank(PUBLISHER);
        vm.expectRevert(abi.encodeWithSelector(ModelLicense.ExpiryInPast.selector, uint64(NOW), NOW));
        licenses.grantLicense(tokenId, USER, uint64(NOW));
        vm.expectRevert(abi.encodeWithSelector(ModelLicense.ExpiryInPast.selector, uint64(NOW - 5), NOW));
        licenses.grantLicense(tokenId, USER, uint64(NOW - 5));
        vm.expectRevert(ModelLicense.InvalidLicensee.selector);
        licenses.grantLicense(tokenId, address(0), _inDays(1));
        vm.stopPrank();
    }

    function test_grant_onNonexistentTokenReverts() public {
        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721NonexistentToken.selector, 9));
        licenses.grantLicense(9, USER, _inDays(1));
    }

    function test_revoke_endsTheLicenseAtOnce() public {
        vm.startPrank(PUBLISHER);
        licenses.grantLicense(tokenId, USER, _inDays(10));
        licenses.revokeLicense(tokenId, USER);
        vm.stopPrank();
        assertTrue(!licenses.hasValidLicense(USER, tokenId), "revoked");
        assertEq(licenses.licenseExpiry(tokenId, USER), 0, "expiry cleared");
    }

    function test_owner_alwaysHoldsAValidLicense() public view {
        assertTrue(licenses.hasValidLicense(PUBLISHER, tokenId), "owner is licensed");
        (bool valid, uint64 expiresAt) = licenses.licenseStatus(PUBLISHER, tokenId);
        assertTrue(valid, "owner licenseStatus.valid");
        assertEq(expiresAt, type(uint64).max, "owner licenseStatus.expiresAt");
    }

    function test_nonexistentToken_isNeverLicensedAndDoesNotRevert() public view {
        assertTrue(!licenses.hasValidLicense(USER, 999), "token 999");
        assertTrue(!licenses.hasValidLicense(address(0), 0), "token 0, zero address");
        (bool valid, uint64 expiresAt) = licenses.licenseStatus(USER, 999);
        assertTrue(!valid, "licenseStatus.valid");
        assertEq(expiresAt, 0, "licenseStatus.expiresAt");
    }

    // ---- only the owner --------------------------------------------------------------------

    function test_onlyTheOwner_grantsRevokesAndSetsThePrice() public {
        bytes memory notOwner = abi.encodeWithSelector(ModelLicense.NotTokenOwner.selector, tokenId, STRANGER);
        vm.startPrank(STRANGER);
        vm.expectRevert(notOwner);
        licenses.grantLicense(tokenId, STRANGER, _inDays(1));
        vm.expectRevert(notOwner);
        licenses.revokeLicense(tokenId, USER);
        vm.expectRevert(notOwner);
        licenses.setPrice(tokenId, 1, 1);
        vm.stopPrank();

        // An approved operator may transfer the token but not grant licenses.
        vm.prank(PUBLISHER);
        licenses.setApprovalForAll(STRANGER, true);
        vm.prank(STRANGER);
        vm.expectRevert(notOwner);
        licenses.grantLicense(tokenId, STRANGER, _inDays(1));
    }

    function test_transfer_movesTheRightToGrantAndKeepsLicenses() public {
        vm.startPrank(PUBLISHER);
        licenses.grantLicense(tokenId, USER, _inDays(10));
        licenses.transferFrom(PUBLISHER, NEW_OWNER, tokenId);
        vm.expectRevert(abi.encodeWithSelector(ModelLicense.NotTokenOwner.selector, tokenId, PUBLISHER));
        licenses.grantLicense(tokenId, STRANGER, _inDays(1));
        vm.expectRevert(abi.encodeWithSelector(ModelLicense.NotTokenOwner.selector, tokenId, PUBLISHER));
        licenses.revokeLicense(tokenId, USER);
        vm.stopPrank();

        assertTrue(licenses.hasValidLicense(USER, tokenId), "license survives the transfer");
        assertTrue(licenses.hasValidLicense(NEW_OWNER, tokenId), "new owner is licensed");
        assertTrue(!licenses.hasValidLicense(PUBLISHER, tokenId), "old owner is not");

        vm.startPrank(NEW_OWNER);
        licenses.grantLicense(tokenId, STRANGER, _inDays(1));
        licenses.revokeLicense(tokenId, USER);
        vm.stopPrank();
        assertTrue(licenses.hasValidLicense(STRANGER, tokenId), "new owner grants");
        assertTrue(!licenses.hasValidLicense(USER, tokenId), "new owner revokes");
    }

    // ---- sales -----------------------------------------------------------------------------

    function test_buy_withTheExactPrice() public {
        _forSale();
        (uint256 price, uint64 duration) = licenses.priceOf(tokenId);
        assertEq(price, PRICE, "priceOf.price");
        assertEq(duration, DURATION, "priceOf.duration");

        vm.prank(BUYER);
        licenses.buyLicense{value: PRICE}(tokenId);
        assertTrue(licenses.hasValidLicense(BUYER, tokenId), "buyer is licensed");
        assertEq(licenses.licenseExpiry(tokenId, BUYER), NOW + DURATION, "expiry");
        assertEq(licenses.pendingWithdrawal(PUBLISHER), PRICE, "credited to the owner");
        assertEq(address(licenses).balance, PRICE, "contract holds the payment");
        assertEq(BUYER.balance, 1 ether - PRICE, "buyer paid");
    }

    function test_buy_withAnyOtherAmountReverts() public {
        _forSale();
        vm.startPrank(BUYER);
        vm.expectRevert(abi.encodeWithSelector(ModelLicense.WrongPayment.selector, PRICE, PRICE - 1));
        licenses.buyLicense{value: PRICE - 1}(tokenId);
        vm.expectRevert(abi.encodeWithSelector(ModelLicense.WrongPayment.selector, PRICE, PRICE + 1));
        licenses.buyLicense{value: PRICE + 1}(tokenId);
        vm.expectRevert(abi.encodeWithSelector(ModelLicense.WrongPayment.selector, PRICE, 0));
        licenses.buyLicense(tokenId);
        vm.stopPrank();
        assertTrue(!licenses.hasValidLicense(BUYER, tokenId), "not licensed");
        assertEq(licenses.pendingWithdrawal(PUBLISHER), 0, "nothing credited");
    }

    function test_buy_whenNotForSaleReverts() public {
        vm.deal(BUYER, 1 ether);
        vm.prank(BUYER);
        vm.expectRevert(abi.encodeWithSelector(ModelLicense.NotForSale.selector, tokenId));
        licenses.buyLicense{value: PRICE}(tokenId);

        _forSale();
        vm.prank(PUBLISHER);
        licenses.setPrice(tokenId, 0, 0); // withdrawn from sale
        vm.prank(BUYER);
        vm.expectRevert(abi.encodeWithSelector(ModelLicense.NotForSale.selector, tokenId));
        licenses.buyLicense{value: PRICE}(tokenId);

        vm.prank(BUYER);
        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721NonexistentToken.selector, 42));
        licenses.buyLicense{value: PRICE}(42);
    }

    function test_setPrice_needsADurationWhenForSale() public {
        vm.prank(PUBLISHER);
        vm.expectRevert(ModelLicense.ZeroDuration.selector);
        licenses.setPrice(tokenId, PRICE, 0);
    }

    function test_buy_againExtendsFromTheCurrentExpiry() public {
        _forSale();
        vm.startPrank(BUYER);
        licenses.buyLicense{value: PRICE}(tokenId);
        vm.warp(NOW + 5 days);
        licenses.buyLicense{value: PRICE}(tokenId); // still licensed: adds to the expiry
        assertEq(licenses.licenseExpiry(tokenId, BUYER), NOW + 2 * DURATION, "extended from the expiry");

        uint256 later = NOW + 100 days; // lapsed: runs from now
        vm.warp(later);
        assertTrue(!licenses.hasValidLicense(BUYER, tokenId), "lapsed");
        licenses.buyLicense{value: PRICE}(tokenId);
        vm.stopPrank();
        assertEq(licenses.licenseExpiry(tokenId, BUYER), later + DURATION, "runs from now after a lapse");
        assertEq(licenses.pendingWithdrawal(PUBLISHER), 3 * PRICE, "three payments credited");
    }

    function test_buy_afterATransferCreditsTheNewOwner() public {
        _forSale();
        vm.prank(PUBLISHER);
        licenses.transferFrom(PUBLISHER, NEW_OWNER, tokenId);
        vm.prank(BUYER);
        licenses.buyLicense{value: PRICE}(tokenId);
        assertEq(licenses.pendingWithdrawal(NEW_OWNER), PRICE, "new owner credited");
        assertEq(licenses.pendingWithdrawal(PUBLISHER), 0, "old owner not credited");
    }

    // ---- withdraw --------------------------------------------------------------------------

    function test_withdraw_paysTheSellerAndZeroesTheBalance() public {
        _forSale();
        vm.prank(BUYER);
        licenses.buyLicense{value: PRICE}(tokenId);

        uint256 before = PUBLISHER.balance;
        vm.prank(PUBLISHER);
        licenses.withdraw();
        assertEq(PUBLISHER.balance, before + PRICE, "seller paid");
        assertEq(licenses.pendingWithdrawal(PUBLISHER), 0, "balance zeroed");
        assertEq(address(licenses).balance, 0, "contract emptied");

        vm.prank(PUBLISHER);
        vm.expectRevert(abi.encodeWithSelector(ModelLicense.NothingToWithdraw.selector, PUBLISHER));
        licenses.withdraw();
    }

    function test_withdraw_cannotBeReenteredForASecondPayment() public {
        ReentrantSeller seller = new ReentrantSeller(licenses);
        uint256 theirs = licenses.mint(address(seller), SELLER_CID);
        vm.prank(address(seller));
        licenses.setPrice(theirs, PRICE, DURATION);
        _forSale(); // our token too, so the contract holds someone else's money
        vm.startPrank(BUYER);
        licenses.buyLicense{value: PRICE}(theirs);
        licenses.buyLicense{value: PRICE}(tokenId);
        vm.stopPrank();

        seller.withdraw();
        assertEq(address(seller).balance, PRICE, "paid exactly once");
        assertTrue(seller.reentryFailed(), "the reentrant withdraw was refused");
        assertEq(address(licenses).balance, PRICE, "the other seller's money stays");
        assertEq(licenses.pendingWithdrawal(PUBLISHER), PRICE, "the other seller's credit stays");
    }

    function test_withdraw_thatCannotBeDeliveredRevertsAndKeepsTheCredit() public {
        RefusingSeller seller = new RefusingSeller();
        uint256 theirs = licenses.mint(address(seller), REFUSER_CID);
        vm.prank(address(seller));
        licenses.setPrice(theirs, PRICE, DURATION);
        vm.deal(BUYER, 1 ether);
        vm.prank(BUYER);
        licenses.buyLicense{value: PRICE}(theirs);

        vm.prank(address(seller));
        vm.expectRevert(abi.encodeWithSelector(ModelLicense.WithdrawalFailed.selector, address(seller), PRICE));
        licenses.withdraw();
        assertEq(licenses.pendingWithdrawal(address(seller)), PRICE, "credit kept");
    }

    // ---- events ----------------------------------------------------------------------------

    function test_events_areEmittedForEveryChange() public {
        address emitter = address(licenses);

        vm.expectEmit(true, true, true, true, emitter);
        emit ModelLicense.ModelMinted(2, USER, USER, NEXT_CID);
        vm.prank(USER);
        licenses.mint(USER, NEXT_CID);

        uint64 expiresAt = _inDays(3);
        vm.startPrank(PUBLISHER);
        vm.expectEmit(true, true, true, true, emitter);
        emit ModelLicense.LicenseGranted(tokenId, USER, expiresAt, PUBLISHER);
        licenses.grantLicense(tokenId, USER, expiresAt);

        vm.expectEmit(true, true, true, true, emitter);
        emit ModelLicense.LicenseRevoked(tokenId, USER, PUBLISHER);
        licenses.revokeLicense(tokenId, USER);

        vm.expectEmit(true, true, true, true, emitter);
        emit ModelLicense.PriceSet(tokenId, PRICE, DURATION);
        licenses.setPrice(tokenId, PRICE, DURATION);
        vm.stopPrank();

        vm.deal(BUYER, 1 ether);
        vm.prank(BUYER);
        vm.expectEmit(true, true, true, true, emitter);
        emit ModelLicense.LicensePurchased(tokenId, BUYER, uint64(NOW + DURATION), PRICE);
        licenses.buyLicense{value: PRICE}(tokenId);

        vm.prank(PUBLISHER);
        vm.expectEmit(true, true, true, true, emitter);
        emit ModelLicense.Withdrawal(PUBLISHER, PRICE);
        licenses.withdraw();
    }
}
