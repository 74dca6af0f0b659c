"""Signatures by Bittensor hotkeys (sr25519), through ``bittensor_wallet.Keypair``.

A writer signs with the hotkey whose ss58 address it claims; a reader verifies against that address alone, so no
key material ever leaves the writer. Readers then check the address is registered (see ``codec.Expect.allowed``).
"""
from __future__ import annotations

from functools import lru_cache

from bittensor_wallet import Keypair

from .names import check_hotkey


class Signer:
    """Signs protocol messages with one hotkey."""

    def __init__(self, keypair: Keypair):
        try:
            keypair.sign(b"probe")
        except Exception:
            raise ValueError("the keypair cannot sign (a public-only hotkey has no private key)") from None
        self._keypair = keypair
        self.hotkey: str = check_hotkey(keypair.ss58_address)

    @classmethod
    def from_wallet(cls, wallet) -> "Signer":
        """The hotkey of a ``bittensor_wallet.Wallet``."""
        return cls(wallet.hotkey)

    @classmethod
    def from_uri(cls, uri: str) -> "Signer":
        """A development key such as ``//Alice`` or ``//peer-3``: for local swarms and tests only."""
        return cls(Keypair.create_from_uri(uri))

    @property
    def keypair(self) -> Keypair:
        return self._keypair

    def sign(self, message: bytes) -> bytes:
        return bytes(self._keypair.sign(message))

    def __repr__(self) -> str:
        return f"Signer({self.hotkey})"


@lru_cache(maxsize=4096)
def _public(hotkey: str) -> Keypair:
    return Keypair(ss58_address=hotkey)


def verify(hotkey: str, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``hotkey``'s signature of ``message``; never raises on bad input."""
    try:
        check_hotkey(hotkey)
        return len(signature) == 64 and bool(_public(hotkey).verify(message, signature))
    except Exception:  # malformed keys or signatures are simply not valid signatures
        return False
