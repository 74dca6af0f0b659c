"""The small chain interface the protocol needs, and the checks both backends share.

Two backends implement :class:`Chain`: :class:`~mapreduce.chain.subtensor.SubtensorChain` (a real Bittensor chain
through the SDK) and :class:`~mapreduce.chain.local.LocalChain` (an embedded chain in one SQLite file, for
development and the local swarm). Everything here is synchronous; asyncio callers wrap calls in
``asyncio.to_thread``.

The signer of a write (``commit``, ``set_weights``) is a :data:`Signer`: pass the process's
``bittensor_wallet.Wallet`` and the same call works on both backends. ``LocalChain`` also accepts the hotkey
``Keypair`` itself (handy in tests); ``SubtensorChain`` needs the ``Wallet`` because the SDK signs extrinsics
with it.
"""
from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence, Union

from bittensor_wallet import Keypair

if TYPE_CHECKING:
    from bittensor_wallet import Wallet

# The SDK publishes a commitment as the chain's ``Data::Raw{n}`` variant (``Subtensor.set_commitment`` ->
# ``publish_metadata_extrinsic(data_type=f"Raw{len(data)}")``, bittensor 10.5.0
# ``bittensor/core/extrinsics/serving.py``: "max str length is 128 bytes for 'Raw0-128'"); on chain that is
# ``Raw(BoundedVec<u8, ConstU32<128>>)`` in subtensor's ``pallets/commitments/src/types.rs``.
MAX_COMMITMENT_BYTES = 128

# Weights travel as u16 uids on chain.
MAX_UID = 65535

Signer = Union["Wallet", Keypair]
"""Who signs a write: a ``bittensor_wallet.Wallet`` (its hotkey signs) or, on ``LocalChain`` only, a ``Keypair``."""


class ChainError(Exception):
    """A chain query or write failed, or was refused (unregistered hotkey, bad signature, oversized data...)."""


class ChainTimeout(ChainError, TimeoutError):
    """``wait_for_block`` gave up before the chain reached the block."""


@dataclass(frozen=True)
class Neuron:
    """One registered hotkey on the subnet."""

    uid: int
    hotkey: str  # ss58
    stake: float  # stake weight in TAO/alpha units
    validator_permit: bool


def hotkey_keypair(signer: Signer) -> Keypair:
    """The hotkey ``Keypair`` of a ``Wallet``, or the ``Keypair`` itself."""
    if isinstance(signer, Keypair):
        return signer
    try:
        keypair = getattr(signer, "hotkey", None)
    except Exception as e:  # e.g. the wallet's hotkey file is missing or unreadable
        raise ChainError(f"cannot read the wallet's hotkey: {e}") from None
    if not isinstance(keypair, Keypair):
        raise ChainError(f"signer must be a bittensor_wallet Wallet or Keypair, not {type(signer).__name__}")
    return keypair


def sign(keypair: Keypair, message: bytes) -> bytes:
    """``keypair``'s signature of ``message``; ChainError if it holds no private key."""
    try:
        return bytes(keypair.sign(message))
    except Exception as e:  # a Keypair built from an ss58 address alone can verify but not sign
        raise ChainError(f"hotkey {keypair.ss58_address} cannot sign: {e}") from None


def check_hotkey(hotkey: str) -> str:
    """``hotkey`` if it is a valid ss58 address, else ChainError."""
    try:
        Keypair(ss58_address=hotkey)
    except Exception:
        raise ChainError(f"not an ss58 address: {hotkey!r:.80}") from None
    return hotkey


def check_commitment(data: str) -> bytes:
    """The bytes to publish for ``data``; ChainError unless it is ASCII and at most MAX_COMMITMENT_BYTES long.

    ASCII only, because the SDK names the on-chain type after the string's *character* count (``Raw{len(data)}``)
    while sending its UTF-8 bytes: any multi-byte character would make the two disagree.
    """
    if not isinstance(data, str):
        raise ChainError(f"commitment must be a str, not {type(data).__name__}")
    if not data.isascii():
        raise ChainError("commitment must be ASCII (the SDK sizes Raw data by character count)")
    raw = data.encode("ascii")
    if len(raw) > MAX_COMMITMENT_BYTES:
        raise ChainError(f"commitment is {len(raw)} bytes; the chain stores at most {MAX_COMMITMENT_BYTES}")
    return raw


def check_weights(uids: Sequence[int], weights: Sequence[float], n_neurons: int | None = None) -> None:
    """ChainError unless ``uids``/``weights`` can be set on chain.

    Pairs must match in length, uids be distinct registered uids (below ``n_neurons`` when given), weights be finite,
    non-negative and not all zero.
    """
    uids, weights = list(uids), list(weights)
    if len(uids) != len(weights):
        raise ChainError(f"{len(uids)} uids but {len(weights)} weights")
    if not uids:
        raise ChainError("no weights to set")
    for uid in uids:
        if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= MAX_UID:
            raise ChainError(f"invalid uid {uid!r}")
        if n_neurons is not None and uid >= n_neurons:
            raise ChainError(f"uid {uid} is not registered (subnet has {n_neurons} neurons)")
    if len(set(uids)) != len(uids):
        raise ChainError("duplicate uids")
    for w in weights:
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
            raise ChainError(f"weights must be finite and non-negative, got {w!r}")
    if sum(weights) <= 0:
        raise ChainError("weights are all zero")


def normalize_row(row: dict[int, float]) -> dict[int, float]:
    """Weights rescaled to sum to 1, zeros dropped (the chain keeps no zero entries)."""
    total = float(sum(row.values()))
    if total <= 0:
        return {}
    return {uid: w / total for uid, w in sorted(row.items()) if w > 0}


class Chain(ABC):
    """What the protocol reads from and writes to a chain. Synchronous; every call may raise :class:`ChainError`."""

    netuid: int
    # How often wait_for_block re-reads the block number.
    poll_interval: float = 1.0

    @abstractmethod
    def current_block(self) -> int:
        """The latest block number."""

    def finalized_block(self) -> int:
        """The latest final block: its hash, and every earlier one, never changes. A chain without forks (this
        default) finalizes each block as it is made; a real chain finalizes some blocks behind its head."""
        return self.current_block()

    @abstractmethod
    def block_hash(self, block: int) -> str:
        """``"0x"`` + 64 hex digits; ChainError if ``block`` is in the future. The same for every caller once the
        block is final (:meth:`finalized_block`); a block nearer the head may still be replaced by a reorg."""

    @abstractmethod
    def block_timestamp(self, block: int) -> float:
        """Unix seconds at which ``block`` was produced; ChainError if it is in the future."""

    @abstractmethod
    def neurons(self, block: int | None = None) -> list[Neuron]:
        """Every neuron registered on ``netuid`` as of ``block`` (None: the latest), ordered by uid."""

    @abstractmethod
    def commit(self, signer: Signer, data: str) -> None:
        """Publish ``data`` (ASCII, at most MAX_COMMITMENT_BYTES) as the signer hotkey's commitment on ``netuid``."""

    @abstractmethod
    def commitments(self, block: int | None = None) -> dict[str, str]:
        """Hotkey (ss58) -> its latest commitment on ``netuid`` as of ``block`` (None: the latest).

        On a real chain this may include hotkeys that have since been deregistered: intersect with :meth:`neurons`.
        """

    @abstractmethod
    def set_weights(self, signer: Signer, uids: list[int], weights: list[float], version_key: int = 0) -> None:
        """Set the signer's (a validator's) weights on ``netuid``; they are normalised, so only ratios matter.
        ``version_key`` must be at least the subnet's ``weights_version`` (the run spec's ``weights_version``)."""

    def weights_wait(self, uid: int) -> int:
        """Blocks before ``uid`` may set weights again: the subnet's weights rate limit less the blocks since its
        last update (0: now). A chain without a rate limit (this default) always answers 0."""
        return 0

    @abstractmethod
    def weights(self) -> dict[int, dict[int, float]]:
        """Validator uid -> {uid: weight}, each row normalised to sum to 1 (for tests and reports)."""

    def wait_for_block(self, block: int, timeout: float | None = None) -> int:
        """Sleep until ``current_block() >= block`` and return the current block; ChainTimeout after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.current_block()
            if current >= block:
                return current
            pause = self._pause(block)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChainTimeout(f"block {block} not reached within {timeout}s (at {current})")
                pause = min(pause, remaining)
            time.sleep(pause)

    def _pause(self, block: int) -> float:
        """How long ``wait_for_block`` sleeps before looking again; a backend that knows its schedule does better."""
        return self.poll_interval

    def _check_past(self, block: int) -> None:
        """ChainError unless ``block`` is a block number that already exists."""
        if isinstance(block, bool) or not isinstance(block, int) or block < 0:
            raise ChainError(f"invalid block number {block!r}")
        current = self.current_block()
        if block > current:
            raise ChainError(f"block {block} is in the future (current block {current})")
