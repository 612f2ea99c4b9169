"""The CLI's signing key: from ``CIDSERVE_PRIVATE_KEY`` or an encrypted keystore file.

Keys never come from command-line arguments (visible to every user in ``ps``) and are never
printed or logged: errors say which variable is missing or wrong, not its value.
"""

from __future__ import annotations

import json

from eth_account import Account
from eth_account.signers.local import LocalAccount

from services.settings import Settings

MAX_KEYSTORE_BYTES = 64 << 10


class KeyConfigError(ValueError):
    """No usable key is configured; the message names the variables to set."""


def load_account(settings: Settings) -> LocalAccount:
    """The account of ``CIDSERVE_PRIVATE_KEY``, else of ``CIDSERVE_KEYSTORE`` (decrypted
    with ``CIDSERVE_KEYSTORE_PASSWORD``)."""
    if settings.private_key is not None:
        return Account.from_key(settings.private_key.get_secret_value())
    if settings.keystore is not None:
        if settings.keystore_password is None:
            raise KeyConfigError("CIDSERVE_KEYSTORE is set: set CIDSERVE_KEYSTORE_PASSWORD too")
        raw = settings.keystore.read_bytes()
        if len(raw) > MAX_KEYSTORE_BYTES:
            raise KeyConfigError("CIDSERVE_KEYSTORE: not a keystore file (too large)")
        try:
            doc = json.loads(raw)
            key = Account.decrypt(doc, settings.keystore_password.get_secret_value())
        except ValueError as exc:
            # eth_account says "MAC mismatch" for a wrong password; never echo the password.
            raise KeyConfigError(
                f"CIDSERVE_KEYSTORE: cannot decrypt {settings.keystore} "
                f"(wrong CIDSERVE_KEYSTORE_PASSWORD or not a keystore: {type(exc).__name__})"
            ) from None
        return Account.from_key(key)
    raise KeyConfigError(
        "no signing key: set CIDSERVE_PRIVATE_KEY, or CIDSERVE_KEYSTORE and "
        "CIDSERVE_KEYSTORE_PASSWORD"
    )
