"""The real chain, through the classic synchronous Bittensor SDK (``bittensor.Subtensor``, 10.5.0).

==================  =============================================================================================
Chain               SDK call
==================  =============================================================================================
current_block       ``Subtensor.get_current_block``
finalized_block     ``Subtensor.substrate.get_chain_finalised_head`` (RPC ``chain_getFinalizedHead``), then
                    ``substrate.get_block_number`` of that hash
block_hash          ``Subtensor.get_block_hash(block)``
block_timestamp     ``Subtensor.get_timestamp(block)``: the ``Timestamp.Now`` storage at that block, i.e. the
                    time its block author put in the block's timestamp inherent (ms precision). State older than
                    ~256 blocks is pruned on lite nodes: those go to ``--subtensor.archive_endpoint`` (a
                    connection of its own, used for nothing else); final blocks' timestamps are kept
neurons             ``Subtensor.metagraph(netuid, lite=True, block=block)``: ``uids``, ``hotkeys``, ``S`` (stake
                    weight), ``validator_permit``; ``block`` None: the head
commit              ``Subtensor.set_commitment`` (skipped when the hotkey's commitment already equals the data,
                    because the chain rate-limits commitments and a restarted miner re-publishes the same bucket)
commitments         ``Subtensor.get_all_commitments(netuid, block=block)``
set_weights         ``Subtensor.set_weights(..., version_key=, max_attempts=1)`` (the SDK uses commit-reveal by
                    itself where the subnet enables it)
weights_wait        ``Subtensor.weights_rate_limit`` less ``Subtensor.blocks_since_last_update``
weights             ``Subtensor.weights(netuid)``, rows normalised to sum to 1
==================  =============================================================================================

The SDK's ``MockSubtensor`` (``bittensor.utils.mock``) is an in-process chain for tests, but in 10.5.0 it lags the
SDK: ``metagraph``/``neurons_lite`` crash (``NeuronInfo`` has no ``rank``), ``get_uid_for_hotkey_on_subnet``,
``get_all_commitments``, ``weights`` and ``get_timestamp`` read from a ``MagicMock`` and return junk,
``set_commitment``/``set_weights`` run the real extrinsic code against that ``MagicMock`` and store nothing, and its own
``commit``/``get_commitment`` mis-resolve the uid and only read back at the exact block. When handed a
``MockSubtensor``, this adapter therefore goes through :class:`_MockBridge`, which reads and writes the mock's own
``chain_state`` (with the layout the mock itself uses) and its working ``neurons``/``query_subtensor``.

The real-chain branch is tested apart (``tests/chain/test_subtensor_sdk.py``): every call in the table runs through the
SDK's own code (``Subtensor``, its extrinsics, ``Metagraph``, the chain-data decoders, the substrate interface's
``ExtrinsicReceipt``/``QueryMapResult``) down to ``Subtensor.substrate``, which is scripted with decoded values and
records what the SDK sent. Not exercised by any test: the websocket/JSON-RPC transport, SCALE encoding and decoding
against real runtime metadata (decoded shapes and call parameter names are scripted), the chain's own rules (rate
limits, deposits, validator permits, commit-reveal timing and the reveal: scripted outcomes, not computed ones), the
SDK's MEV-shield submission path (taken when ``BT_MEV_PROTECTION`` is set) and connecting to an endpoint.

The sync SDK talks over one websocket and is not thread-safe, so every SDK call holds its connection's lock. A
write waits for inclusion (and finalization if asked), holding its connection meanwhile, so writes go through a
second connection (``connect_writer``, opened on the first write; :meth:`SubtensorChain.from_config` sets it):
reads never wait behind a write. Reads are retried (``read_attempts``); writes are not (one attempt, the caller
decides when to try again).
"""
from __future__ import annotations

import argparse
import re
import threading
import time
from typing import Any, Callable, TypeVar

from async_substrate_interface.errors import StateDiscardedError
import bittensor as bt
from bittensor.core.chain_data.utils import decode_metadata
from bittensor.core.settings import BLOCKTIME, DEFAULTS
from bittensor.utils.mock import MockSubtensor
from bittensor.utils.weight_utils import convert_and_normalize_weights_and_uids
from bittensor_wallet import Keypair

from .base import (
    Chain,
    ChainError,
    Neuron,
    Signer,
    check_commitment,
    check_weights,
    hotkey_keypair,
    normalize_row,
)

T = TypeVar("T")
_HASH = re.compile(r"0x[0-9a-f]{64}")


def _plain(value: Any) -> Any:
    """The Python value inside an SDK ``ScaleObj`` (query results are wrapped in some SDK versions)."""
    return getattr(value, "value", value)


class SubtensorChain(Chain):
    """:class:`Chain` on a Bittensor chain. Writes need the signer's ``bittensor_wallet.Wallet`` (not a Keypair)."""

    def __init__(
        self,
        subtensor: bt.Subtensor,
        netuid: int,
        *,
        wait_for_finalization: bool = False,
        poll_interval: float = 1.0,
        connect_writer: Callable[[], Any] | None = None,
        read_attempts: int = 3,
        read_backoff: float = 1.0,
        connect_archive: Callable[[], Any] | None = None,
    ):
        """Wrap a connected ``bittensor.Subtensor`` (or a ``MockSubtensor``) for subnet ``netuid``.

        Writes wait for inclusion in a block (which reports dispatch errors); ``wait_for_finalization`` also waits
        for finality, a few blocks more. ``connect_writer`` opens a second connection, on the first write, that
        every write then uses, so reads never wait behind a write's inclusion (without it, writes share the
        reading connection and its lock). A read that fails is tried ``read_attempts`` times in all,
        ``read_backoff`` x 1, 2... seconds apart: a dropped websocket or a node restarting is not the end of the
        process. ``connect_archive`` opens, on first need, a connection to an archive node for block timestamps
        a lite node no longer keeps (it answers "State already discarded" for blocks more than ~256 back).
        """
        self.subtensor = subtensor
        self.netuid = int(netuid)
        self.poll_interval = poll_interval
        self._wait_for_finalization = wait_for_finalization
        self._lock = threading.RLock()
        self._mock = _MockBridge(subtensor, self.netuid) if isinstance(subtensor, MockSubtensor) else None
        self._writer = _SideConnection(connect_writer) if connect_writer and self._mock is None else None
        # Writes without a write connection: on the reading one, under its lock (never closed apart from it).
        self._same_connection = _SideConnection(lambda: self.subtensor, self._lock)
        self._read_attempts = max(1, int(read_attempts))
        self._read_backoff = read_backoff
        self._archive = _SideConnection(connect_archive) if connect_archive and self._mock is None else None
        self._final_seen = -1  # the highest finalized block read so far: the timestamps up to it never change
        self._timestamps: dict[int, float] = {}

    # --- construction from the command line ------------------------------------------------------------------------

    @staticmethod
    def add_args(parser: argparse.ArgumentParser) -> None:
        """Add ``--subtensor.network``, ``--subtensor.chain_endpoint``, ``--subtensor._mock`` and ``--netuid``."""
        bt.Subtensor.add_args(parser)
        for flag, kw in (("--netuid", dict(type=int, default=1, help="Subnet uid.")),
                         ("--subtensor.archive_endpoint", dict(default=None, metavar="URL", help=(
                             "an archive node (e.g. wss://archive.chain.opentensor.ai:443) for the timestamps of "
                             "blocks a lite node no longer keeps (more than ~256 blocks back); used only for "
                             "those")))):
            try:
                parser.add_argument(flag, **kw)
            except argparse.ArgumentError:
                pass  # the caller added it already

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> "SubtensorChain":
        """Connect as the parsed command line says: a ``bittensor.Config`` or the ``argparse.Namespace`` of a parser
        that went through :meth:`add_args`. ``--subtensor._mock`` (any non-empty value) or
        ``--subtensor.network mock`` gives a fresh in-process ``MockSubtensor``.
        """
        netuid = _setting(config, "netuid")
        if netuid is None:
            raise ChainError("config has no netuid (add --netuid)")
        network = _setting(config, "subtensor.network")
        def connect() -> Any:
            if isinstance(config, bt.Config):
                return bt.Subtensor(config=config)  # the SDK applies its own endpoint/network precedence
            endpoint = _setting(config, "subtensor.chain_endpoint")
            # argparse cannot tell a default from an explicit value; an endpoint other than the default wins.
            explicit = endpoint and endpoint != DEFAULTS.subtensor.chain_endpoint
            return bt.Subtensor(network=endpoint if explicit else network)

        try:
            mock = bool(_setting(config, "subtensor._mock") or network == "mock")
            subtensor = MockSubtensor() if mock else connect()
        except Exception as e:
            raise ChainError(f"cannot connect to subtensor ({network}): {e}") from e
        kwargs.setdefault("connect_writer", None if mock else connect)
        archive = _setting(config, "subtensor.archive_endpoint")
        if archive and not mock:
            kwargs.setdefault("connect_archive", lambda: bt.Subtensor(network=archive))
        return cls(subtensor, int(netuid), **kwargs)

    def close(self) -> None:
        with self._lock:
            self.subtensor.close()
        for side in (self._writer, self._archive):
            if side is not None:
                side.close()

    def __repr__(self) -> str:
        return f"SubtensorChain({getattr(self.subtensor, 'network', '?')}, netuid={self.netuid})"

    # --- blocks ----------------------------------------------------------------------------------------------------

    def current_block(self) -> int:
        return int(self._call("get_current_block", self.subtensor.get_current_block))

    def finalized_block(self) -> int:
        if self._mock is not None:
            return self.current_block()  # the mock has no forks
        substrate = self.subtensor.substrate
        head = self._call("chain_getFinalizedHead", substrate.get_chain_finalised_head)
        final = int(self._call("get_block_number", substrate.get_block_number, head))
        self._final_seen = max(self._final_seen, final)
        return final

    def block_hash(self, block: int) -> str:
        self._check_past(block)
        value = self._call("get_block_hash", self.subtensor.get_block_hash, block)
        text = str(_plain(value) or "").lower()
        if not _HASH.fullmatch(text):
            raise ChainError(f"no hash for block {block} (got {value!r:.80})")
        return text

    def block_timestamp(self, block: int) -> float:
        self._check_past(block)
        if self._mock is not None:
            return self._mock.timestamp(block)
        known = self._timestamps.get(block)
        if known is not None:
            return known
        try:
            stamp = self._call("get_timestamp", self.subtensor.get_timestamp, block).timestamp()
        except ChainError as e:
            if not _state_discarded(e):
                raise
            if self._archive is None:
                raise ChainError(f"{e}; block {block} is older than this node keeps: set "
                                 f"--subtensor.archive_endpoint to an archive node") from e
            stamp = self._archive.call(f"get_timestamp of block {block} from the archive node",
                                       lambda archive: archive.get_timestamp, block).timestamp()
            self._final_seen = max(self._final_seen, block)  # pruned state is long final
        if block <= self._final_seen:
            if len(self._timestamps) >= 4096:
                self._timestamps.pop(min(self._timestamps))
            self._timestamps[block] = stamp
        return stamp

    # --- neurons and commitments -----------------------------------------------------------------------------------

    def neurons(self, block: int | None = None) -> list[Neuron]:
        if self._mock is not None:
            return self._call("neurons", self._mock.neurons)  # the mock keeps no history of its neurons
        mg = self._call("metagraph", self.subtensor.metagraph, self.netuid, lite=True, block=block)
        uids, hotkeys, stakes, permits = _tolist(mg.uids), list(mg.hotkeys), _tolist(mg.S), _tolist(mg.validator_permit)
        if not len(uids) == len(hotkeys) == len(stakes) == len(permits):
            # Metagraph.sync swallows a failed stake read (SubnetInfoRuntimeApi.get_subnet_state) and leaves S
            # empty; zipping would then silently drop every neuron.
            raise ChainError(
                f"metagraph of netuid {self.netuid} is incomplete: {len(uids)} uids, {len(hotkeys)} hotkeys, "
                f"{len(stakes)} stakes, {len(permits)} permits"
            )
        rows = zip(uids, hotkeys, stakes, permits)
        return sorted(
            (Neuron(int(uid), str(hotkey), float(stake), bool(permit)) for uid, hotkey, stake, permit in rows),
            key=lambda n: n.uid,
        )

    def commit(self, signer: Signer, data: str) -> None:
        check_commitment(data)
        wallet = _wallet(signer)
        hotkey = wallet.hotkey.ss58_address
        if self._mock is not None:
            self._call("commit", self._mock.commit, hotkey, data)
            return
        if self._own_commitment(hotkey) == data:
            return  # already published: re-sending would only spend the commitment rate limit
        response = self._write(
            "set_commitment",
            lambda writer: writer.set_commitment,
            wallet,
            self.netuid,
            data,
            wait_for_inclusion=True,
            wait_for_finalization=self._wait_for_finalization,
        )
        if not response.success:
            raise ChainError(f"set_commitment for {hotkey} on netuid {self.netuid} failed: {response.message}")

    def _own_commitment(self, hotkey: str) -> str | None:
        metadata = self._call(
            "get_commitment_metadata", self.subtensor.get_commitment_metadata, self.netuid, hotkey
        )
        if not metadata:
            return None
        try:
            return decode_metadata(metadata)
        except Exception:  # a commitment in another format: overwrite it
            return None

    def commitments(self, block: int | None = None) -> dict[str, str]:
        if self._mock is not None:
            return self._call("commitments", self._mock.commitments, block)
        raw = self._call("get_all_commitments", self.subtensor.get_all_commitments, self.netuid, block=block)
        return {str(_plain(hotkey)): str(data) for hotkey, data in raw.items()}

    # --- weights ---------------------------------------------------------------------------------------------------

    def set_weights(self, signer: Signer, uids: list[int], weights: list[float], version_key: int = 0) -> None:
        check_weights(uids, weights)
        wallet = _wallet(signer)
        if self._mock is not None:
            self._call("set_weights", self._mock.set_weights, wallet.hotkey.ss58_address, list(uids), list(weights))
            return
        response = self._write(
            "set_weights",
            lambda writer: writer.set_weights,
            wallet,
            self.netuid,
            list(uids),
            [float(w) for w in weights],
            version_key=int(version_key),  # the run spec's, not the installed SDK's own version number
            max_attempts=1,  # one attempt per window: the SDK's own retries would hold the connection for minutes
            wait_for_inclusion=True,
            wait_for_finalization=self._wait_for_finalization,
        )
        if not response.success:
            # The SDK returns a bare failure when it did not even try, e.g. within the weights rate limit.
            reason = response.message or "not sent (too soon after the last update? see weights_rate_limit)"
            raise ChainError(f"set_weights on netuid {self.netuid} failed: {reason}")

    def weights_wait(self, uid: int) -> int:
        if self._mock is not None:
            return 0  # the mock keeps no rate limit
        limit = self._call("weights_rate_limit", self.subtensor.weights_rate_limit, self.netuid)
        since = self._call("blocks_since_last_update", self.subtensor.blocks_since_last_update, self.netuid, uid)
        if limit is None or since is None:
            return 0  # the SDK's answer for a subnet or uid it does not know: the write will say why
        return max(0, int(limit) - int(since))

    def weights(self) -> dict[int, dict[int, float]]:
        if self._mock is not None:
            return self._call("weights", self._mock.weights)
        rows = self._call("weights", self.subtensor.weights, self.netuid)
        result = {}
        for uid, row in rows:
            normalised = normalize_row({int(_plain(d)): float(_plain(w)) for d, w in (_plain(row) or [])})
            if normalised:
                result[int(_plain(uid))] = normalised
        return result

    # --- plumbing --------------------------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A read: ``fn(*args, **kwargs)`` under the connection lock, tried up to ``read_attempts`` times; the last
        failure becomes a ChainError."""
        for attempt in range(1, self._read_attempts + 1):
            try:
                with self._lock:
                    return fn(*args, **kwargs)
            except ChainError:
                raise
            except Exception as e:
                if attempt == self._read_attempts or _state_discarded(e):  # pruned state will not come back
                    raise ChainError(f"{what} failed ({attempt} attempt(s)): {type(e).__name__}: {e}") from e
                time.sleep(self._read_backoff * attempt)
        raise AssertionError("unreachable")

    def _write(self, what: str, method: Callable[[Any], Callable[..., T]], *args: Any, **kwargs: Any) -> T:
        """A write, once: ``method(connection)(*args, **kwargs)`` on the write connection, so reads go on
        meanwhile (without one, on the reading connection under its lock); any failure becomes a ChainError."""
        return (self._writer or self._same_connection).call(what, method, *args, **kwargs)


class _SideConnection:
    """A second SDK connection for one purpose (writes, archive reads), opened on first use, with its own lock:
    the sync SDK is not thread-safe, and what waits on this one must not hold up the reads."""

    def __init__(self, connect: Callable[[], Any], lock: threading.RLock | None = None):
        self._connect = connect
        self._connection: Any = None
        self._lock = lock or threading.RLock()

    def call(self, what: str, method: Callable[[Any], Callable[..., T]], *args: Any, **kwargs: Any) -> T:
        """``method(connection)(*args, **kwargs)``, once; any failure becomes a ChainError."""
        try:
            with self._lock:
                if self._connection is None:
                    self._connection = self._connect()
                return method(self._connection)(*args, **kwargs)
        except ChainError:
            raise
        except Exception as e:
            raise ChainError(f"{what} failed: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


def _state_discarded(e: BaseException) -> bool:
    """Whether a lite node answered that it no longer keeps that block's state (the substrate interface raises
    ``StateDiscardedError`` or passes the node's text on)."""
    while e is not None:
        if isinstance(e, StateDiscardedError) or "State already discarded" in str(e) or "State discarded" in str(e):
            return True
        e = e.__cause__
    return False


def _wallet(signer: Signer) -> Any:
    """The Wallet to sign extrinsics with; the SDK signs with ``wallet.hotkey``, so a bare Keypair will not do."""
    if isinstance(signer, Keypair):
        raise ChainError("SubtensorChain signs through the SDK, which needs the bittensor Wallet, not a Keypair")
    hotkey_keypair(signer)  # a Wallet whose hotkey is missing or unreadable fails here, clearly
    return signer


def _setting(config: Any, dotted: str) -> Any:
    """``config.a.b`` of a ``bittensor.Config``, or attribute ``"a.b"`` of an ``argparse.Namespace``."""
    if isinstance(config, argparse.Namespace):
        return vars(config).get(dotted)
    node = config
    for part in dotted.split("."):
        node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
        if node is None:
            return None
    return node


def _tolist(values: Any) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


class _MockBridge:
    """The operations ``MockSubtensor`` (bittensor 10.5.0) lacks, done on its own ``chain_state``.

    Layouts used, as the mock itself uses them: ``SubtensorModule.Commits[netuid][block][uid] = str`` (as in
    ``MockSubtensor.commit``), ``Weights[netuid][uid][block] = [[uid, u16], ...]`` and
    ``ValidatorPermit[netuid][uid][block] = bool`` (as read by ``MockSubtensor.neurons``).
    """

    def __init__(self, mock: MockSubtensor, netuid: int):
        self.mock = mock
        self.netuid = netuid

    def _state(self, name: str) -> dict:
        module = self.mock.chain_state["SubtensorModule"]
        if self.netuid not in module["NetworksAdded"]:
            raise ChainError(f"subnet {self.netuid} does not exist on the mock chain (MockSubtensor.create_subnet)")
        return module[name][self.netuid]

    def _uid(self, hotkey: str) -> int:
        self._state("Uids")  # subnet exists
        uid = self.mock.query_subtensor("Uids", params=[self.netuid, hotkey]).value
        if uid is None:
            raise ChainError(f"hotkey {hotkey} is not registered on netuid {self.netuid}")
        return uid

    def neurons(self) -> list[Neuron]:
        self._state("Uids")
        return [
            Neuron(n.uid, n.hotkey, float(n.total_stake.tao), bool(n.validator_permit))
            for n in self.mock.neurons(self.netuid)
        ]

    def commit(self, hotkey: str, data: str) -> None:
        uid = self._uid(hotkey)
        self._state("Commits").setdefault(self.mock.block_number, {})[uid] = data

    def commitments(self, at: int | None = None) -> dict[str, str]:
        latest: dict[int, str] = {}
        for block in sorted(self._state("Commits")):
            if at is None or block <= at:
                latest.update(self._state("Commits")[block])
        hotkeys = {n.uid: n.hotkey for n in self.neurons()}
        return {hotkeys[uid]: data for uid, data in latest.items() if uid in hotkeys}

    def set_weights(self, hotkey: str, uids: list[int], weights: list[float]) -> None:
        uid = self._uid(hotkey)
        neurons = {n.uid: n for n in self.neurons()}
        if not neurons[uid].validator_permit:
            raise ChainError(f"uid {uid} ({hotkey}) has no validator permit: it cannot set weights")
        check_weights(uids, weights, len(neurons))
        # The SDK's own float -> u16 conversion, as set_weights would send.
        dests, values = convert_and_normalize_weights_and_uids(uids, weights)
        block = self.mock.block_number
        self._state("Weights")[uid][block] = [[int(d), int(v)] for d, v in zip(dests, values)]
        self._state("LastUpdate")[uid][block] = block

    def weights(self) -> dict[int, dict[int, float]]:
        self._state("Uids")
        result = {}
        for n in self.mock.neurons(self.netuid):
            row = normalize_row({int(d): float(v) for d, v in n.weights})
            if row:
                result[n.uid] = row
        return result

    def timestamp(self, block: int) -> float:
        # The mock keeps no time. Give blocks the SDK's nominal spacing (BLOCKTIME, 12 s) from an anchor fixed on
        # first use and kept in the mock's process-wide state, so every adapter on it agrees (reset() clears it).
        anchor = self.mock.chain_state.setdefault(
            "_mapreduce_time_anchor", time.time() - self.mock.block_number * BLOCKTIME
        )
        return anchor + block * BLOCKTIME
