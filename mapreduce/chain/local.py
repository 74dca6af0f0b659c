"""An embedded chain in one SQLite file, shared by every process on the machine: no server, no HTTP.

Blocks advance with wall time from the genesis time stored in the file,
``block = floor((now - genesis_time) / block_time)``, so no ticker process is needed and every process that opens
the file agrees on the block. ``block_hash(b) = "0x" + sha256(f"{genesis_seed}:{b}")`` and
``block_timestamp(b) = genesis_time + b * block_time``.

Registration is an admin action (the swarm registers its hotkeys). Writes on behalf of a hotkey are authenticated
like extrinsics: the hotkey signs a :class:`SignedCall` (chain id, hotkey, operation, arguments and the hotkey's
account nonce) and the chain applies it only if the sr25519 signature verifies against the hotkey's ss58 address,
the hotkey is registered and the nonce is the next one (so a captured call cannot be replayed). The signed message
and signature are stored next to what they wrote. As on a real chain, only a neuron with a validator permit may set
weights, and weights must name registered uids.

The file is opened in WAL mode with a busy timeout; every statement is short. One connection per ``LocalChain``,
guarded by a lock so threads (``asyncio.to_thread``) can share it, and reopened in a forked child. Anyone who can
write the file can of course rewrite it: the signatures keep honest processes honest, they are not a defence
against the machine's owner. For the same reason block hashes are predictable by anyone who can read the file.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

from ..wire.signing import verify
from .base import (
    Chain,
    ChainError,
    Neuron,
    Signer,
    check_commitment,
    check_hotkey,
    check_weights,
    hotkey_keypair,
    normalize_row,
    sign,
)

SCHEMA_VERSION = 2  # 2: commitment_log, so the commitments as of a past block can be read
BUSY_TIMEOUT_S = 30.0
_OPS = ("commit", "set_weights")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE neurons (
    uid INTEGER PRIMARY KEY,
    hotkey TEXT NOT NULL UNIQUE,
    stake REAL NOT NULL,
    validator_permit INTEGER NOT NULL,
    registered_block INTEGER NOT NULL,
    nonce INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE commitments (
    hotkey TEXT PRIMARY KEY REFERENCES neurons(hotkey),
    data TEXT NOT NULL,
    block INTEGER NOT NULL,
    message TEXT NOT NULL,
    signature TEXT NOT NULL
);
CREATE TABLE commitment_log (
    hotkey TEXT NOT NULL REFERENCES neurons(hotkey),
    data TEXT NOT NULL,
    landed INTEGER NOT NULL
);
CREATE TABLE weights (
    uid INTEGER PRIMARY KEY REFERENCES neurons(uid),
    row TEXT NOT NULL,
    block INTEGER NOT NULL,
    message TEXT NOT NULL,
    signature TEXT NOT NULL
);
"""


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


@dataclass(frozen=True)
class SignedCall:
    """A write on behalf of ``hotkey``: ``message`` is canonical JSON, ``signature`` the hotkey's sr25519 signature."""

    hotkey: str
    message: bytes
    signature: bytes

    @classmethod
    def build(cls, chain_id: str, signer: Signer, op: str, args: dict[str, Any], nonce: int) -> "SignedCall":
        """Sign ``op(args)`` for the chain ``chain_id`` with the signer's hotkey at account nonce ``nonce``."""
        keypair = hotkey_keypair(signer)
        message = _canonical(
            {"chain": chain_id, "hotkey": keypair.ss58_address, "op": op, "args": args, "nonce": nonce}
        )
        return cls(keypair.ss58_address, message, sign(keypair, message))

    def fields(self) -> dict[str, Any]:
        """The decoded message; ChainError if it is not a well-formed call."""
        try:
            fields = json.loads(self.message)
        except ValueError:
            raise ChainError("signed call is not JSON") from None
        if not isinstance(fields, dict) or set(fields) != {"chain", "hotkey", "op", "args", "nonce"}:
            raise ChainError("signed call has the wrong fields")
        if fields["op"] not in _OPS or not isinstance(fields["args"], dict):
            raise ChainError(f"unknown call {fields['op']!r}")
        if isinstance(fields["nonce"], bool) or not isinstance(fields["nonce"], int):
            raise ChainError("signed call has no integer nonce")
        return fields


class LocalChain(Chain):
    """A development chain in one SQLite file. Build it with :meth:`create`, attach to it with :meth:`open`."""

    poll_interval = 0.05

    def __init__(self, path: str | os.PathLike, *, _conn: sqlite3.Connection | None = None):
        self._path = Path(path)
        self._lock = threading.Lock()
        self._conn_pid = os.getpid()
        self._conn = _conn if _conn is not None else _connect(self._path, create=False)
        try:
            meta = self._load_meta()
            if int(meta["schema_version"]) != SCHEMA_VERSION:
                raise ChainError(f"{path}: schema version {meta['schema_version']}, expected {SCHEMA_VERSION}")
            self.netuid: int = int(meta["netuid"])
            self._block_time = float(meta["block_time"])
            self._genesis_time = float(meta["genesis_time"])
            self._genesis_seed = meta["genesis_seed"]
        except (KeyError, ValueError) as e:
            self._conn.close()
            raise ChainError(f"{path}: not a LocalChain database ({e})") from None
        except BaseException:
            self._conn.close()
            raise
        # Signatures name the chain they are for, so a call signed for one chain (or run) is void on another.
        self._chain_id = f"{self.block_hash_unchecked(0)}:{self.netuid}:{self._genesis_time!r}"

    # --- lifecycle -------------------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        netuid: int = 1,
        block_time: float = 1.0,
        genesis_seed: str | None = None,
    ) -> "LocalChain":
        """Initialise a new chain in ``path`` with genesis now; ChainError if ``path`` already holds one.

        ``genesis_seed`` seeds the block hashes; by default a random one, so every run's hashes differ.
        """
        if isinstance(netuid, bool) or not isinstance(netuid, int) or not 0 <= netuid <= 65535:
            raise ChainError(f"netuid must be a u16, got {netuid!r}")
        if not (isinstance(block_time, (int, float)) and math.isfinite(block_time) and block_time > 0):
            raise ChainError(f"block_time must be a positive number of seconds, got {block_time!r}")
        seed = secrets.token_hex(16) if genesis_seed is None else genesis_seed
        if not isinstance(seed, str) or not seed:
            raise ChainError("genesis_seed must be a non-empty string")
        conn = _connect(Path(path), create=True)
        try:
            # Persistent for the file: readers never block the writer and vice versa.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone():
                    raise ChainError(f"{path} already holds a chain; open it with LocalChain.open")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                meta = {
                    "schema_version": SCHEMA_VERSION,
                    "netuid": netuid,
                    "block_time": repr(float(block_time)),
                    "genesis_time": repr(time.time()),
                    "genesis_seed": seed,
                }
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            conn.close()
            raise ChainError(f"cannot create chain in {path}: {e}") from e
        except BaseException:
            conn.close()
            raise
        return cls(path, _conn=conn)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "LocalChain":
        """Attach to the chain another process created in ``path``; ChainError if there is none."""
        return cls(path)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "LocalChain":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self):
        # A LocalChain travels to other processes as its path: each process needs its own connection.
        return (type(self).open, (str(self._path),))

    def __repr__(self) -> str:
        return f"LocalChain({str(self._path)!r}, netuid={self.netuid}, block_time={self._block_time})"

    @property
    def path(self) -> Path:
        return self._path

    @property
    def block_time(self) -> float:
        return self._block_time

    @property
    def genesis_time(self) -> float:
        return self._genesis_time

    @property
    def genesis_seed(self) -> str:
        return self._genesis_seed

    @property
    def chain_id(self) -> str:
        """What every signed call names, so it is valid on this chain only."""
        return self._chain_id

    # --- blocks ----------------------------------------------------------------------------------------------------

    def current_block(self) -> int:
        return self.block_at(time.time())

    def block_at(self, unix_time: float) -> int:
        """The block current at ``unix_time`` (0 before genesis)."""
        if unix_time <= self._genesis_time:
            return 0
        block = int((unix_time - self._genesis_time) // self._block_time)
        # Float division can land one off right at a boundary; keep block_timestamp(block) <= t < next timestamp.
        if self.block_timestamp_unchecked(block) > unix_time:
            block -= 1
        elif self.block_timestamp_unchecked(block + 1) <= unix_time:
            block += 1
        return max(block, 0)

    def block_hash(self, block: int) -> str:
        self._check_past(block)
        return self.block_hash_unchecked(block)

    def block_hash_unchecked(self, block: int) -> str:
        """The hash ``block`` has or will have (local chain only: a real chain cannot know future hashes)."""
        return "0x" + sha256(f"{self._genesis_seed}:{block}".encode()).hexdigest()

    def block_timestamp(self, block: int) -> float:
        self._check_past(block)
        return self.block_timestamp_unchecked(block)

    def block_timestamp_unchecked(self, block: int) -> float:
        """When ``block`` is or will be produced (local chain only)."""
        return self._genesis_time + block * self._block_time

    def _pause(self, block: int) -> float:
        # The schedule is known, so sleep until the block is due instead of polling.
        return max(self.block_timestamp_unchecked(block) - time.time(), 0.001)

    # --- neurons ---------------------------------------------------------------------------------------------------

    def register(self, hotkey: str, stake: float = 0.0, validator_permit: bool = False) -> int:
        """Register ``hotkey`` (ss58) on the subnet and return its uid (0, 1, 2... in order). Admin action.

        ChainError if the hotkey is already registered.
        """
        check_hotkey(hotkey)
        if not (isinstance(stake, (int, float)) and math.isfinite(stake) and stake >= 0):
            raise ChainError(f"stake must be finite and non-negative, got {stake!r}")
        with self._transaction() as conn:
            row = conn.execute("SELECT uid FROM neurons WHERE hotkey = ?", (hotkey,)).fetchone()
            if row:
                raise ChainError(f"hotkey {hotkey} is already registered as uid {row[0]}")
            (uid,) = conn.execute("SELECT COALESCE(MAX(uid) + 1, 0) FROM neurons").fetchone()
            conn.execute(
                "INSERT INTO neurons (uid, hotkey, stake, validator_permit, registered_block) VALUES (?, ?, ?, ?, ?)",
                (uid, hotkey, float(stake), int(bool(validator_permit)), self.current_block()),
            )
        return uid

    def neurons(self, block: int | None = None) -> list[Neuron]:
        # A registration made while block b is the head counts from block b + 1, like a call (see _apply).
        rows = self._read("SELECT uid, hotkey, stake, validator_permit FROM neurons"
                          + (" WHERE registered_block < ?" if block is not None else "") + " ORDER BY uid",
                          (block,) if block is not None else ())
        return [Neuron(uid, hotkey, stake, bool(permit)) for uid, hotkey, stake, permit in rows]

    def nonce(self, hotkey: str) -> int:
        """The account nonce the hotkey's next signed call must carry; ChainError if it is not registered."""
        rows = self._read("SELECT nonce FROM neurons WHERE hotkey = ?", (hotkey,))
        if not rows:
            raise ChainError(f"hotkey {hotkey} is not registered on netuid {self.netuid}")
        return rows[0][0]

    # --- signed writes ---------------------------------------------------------------------------------------------

    def commit(self, signer: Signer, data: str) -> None:
        check_commitment(data)
        self._sign_and_submit(signer, "commit", {"data": data})

    def set_weights(self, signer: Signer, uids: list[int], weights: list[float], version_key: int = 0) -> None:
        check_weights(uids, weights)
        self._sign_and_submit(signer, "set_weights", {"uids": list(uids), "weights": [float(w) for w in weights],
                                                      "version_key": int(version_key)})

    def set_hyperparameters(self, *, weights_rate_limit: int | None = None, weights_version: int | None = None) -> None:
        """Admin action, as the subnet owner sets them on a real chain: blocks a validator must wait between two
        weight settings, and the least ``version_key`` accepted (both 0 at creation: no limit, any version)."""
        with self._transaction() as conn:
            for key, value in (("weights_rate_limit", weights_rate_limit), ("weights_version", weights_version)):
                if value is not None:
                    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                        raise ChainError(f"{key} must be an integer >= 0, got {value!r}")
                    conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def _one(self, conn: sqlite3.Connection | None, sql: str, params: tuple) -> tuple | None:
        """The first row of a query: inside the caller's transaction (``conn``), or on its own (None)."""
        if conn is not None:
            return conn.execute(sql, params).fetchone()
        rows = self._read(sql, params)
        return rows[0] if rows else None

    def _hyperparameter(self, conn: sqlite3.Connection | None, key: str) -> int:
        row = self._one(conn, "SELECT value FROM meta WHERE key = ?", (key,))
        return int(row[0]) if row else 0

    def _weights_wait(self, conn: sqlite3.Connection | None, uid: int, block: int) -> int:
        limit = self._hyperparameter(conn, "weights_rate_limit")
        row = self._one(conn, "SELECT block FROM weights WHERE uid = ?", (uid,))
        return 0 if row is None else max(0, limit - (block - int(row[0])))

    def weights_wait(self, uid: int) -> int:
        return self._weights_wait(None, uid, self.current_block())

    def submit(self, call: SignedCall) -> int:
        """Apply a signed call, as the chain would an extrinsic, and return the block it landed in.

        ChainError if it is for another chain, badly signed, from an unregistered hotkey, replayed (stale nonce) or
        invalid for its operation.
        """
        with self._transaction() as conn:
            return self._apply(conn, call)

    def _sign_and_submit(self, signer: Signer, op: str, args: dict[str, Any]) -> int:
        keypair = hotkey_keypair(signer)
        # Read the nonce, sign and apply in one write transaction (signing takes microseconds), so concurrent
        # writers of one hotkey, in threads or processes, queue up instead of racing for the same nonce.
        with self._transaction() as conn:
            row = conn.execute("SELECT nonce FROM neurons WHERE hotkey = ?", (keypair.ss58_address,)).fetchone()
            if row is None:
                raise ChainError(f"hotkey {keypair.ss58_address} is not registered on netuid {self.netuid}")
            return self._apply(conn, SignedCall.build(self._chain_id, keypair, op, args, row[0]))

    def _apply(self, conn: sqlite3.Connection, call: SignedCall) -> int:
        """Verify ``call`` and write its effect, inside the caller's transaction."""
        fields = call.fields()
        if fields["chain"] != self._chain_id:
            raise ChainError("call was signed for another chain")
        if fields["hotkey"] != call.hotkey:
            raise ChainError("call names another hotkey than its signer")
        if not verify(call.hotkey, call.message, call.signature):
            raise ChainError(f"bad signature for hotkey {call.hotkey}")
        row = conn.execute(
            "SELECT uid, nonce, validator_permit FROM neurons WHERE hotkey = ?", (call.hotkey,)
        ).fetchone()
        if row is None:
            raise ChainError(f"hotkey {call.hotkey} is not registered on netuid {self.netuid}")
        uid, nonce, permit = row
        if fields["nonce"] != nonce:
            raise ChainError(f"stale nonce {fields['nonce']} for {call.hotkey} (expected {nonce}): a replay?")
        block = self.current_block()
        record = (block, call.message.decode(), call.signature.hex())
        if fields["op"] == "commit":
            data = fields["args"].get("data")
            check_commitment(data)
            conn.execute(
                "INSERT OR REPLACE INTO commitments (hotkey, data, block, message, signature) VALUES (?, ?, ?, ?, ?)",
                (call.hotkey, data, *record),
            )
            # As on a real chain, a call submitted while block b is the head lands in block b + 1: the state as
            # of block b, read by anyone once b exists, never changes afterwards.
            conn.execute("INSERT INTO commitment_log (hotkey, data, landed) VALUES (?, ?, ?)",
                         (call.hotkey, data, block + 1))
        else:
            if not permit:
                raise ChainError(f"uid {uid} ({call.hotkey}) has no validator permit: it cannot set weights")
            uids, weights = fields["args"].get("uids"), fields["args"].get("weights")
            if not isinstance(uids, list) or not isinstance(weights, list):
                raise ChainError("set_weights needs lists of uids and weights")
            (n,) = conn.execute("SELECT COUNT(*) FROM neurons").fetchone()
            check_weights(uids, weights, n)
            # The chain's own refusals, as subtensor's IncorrectWeightVersionKey and SettingWeightsTooFast.
            version, required = fields["args"].get("version_key", 0), self._hyperparameter(conn, "weights_version")
            if not isinstance(version, int) or version < required:
                raise ChainError(f"IncorrectWeightVersionKey: version_key {version!r} is below the subnet's "
                                 f"weights_version {required}")
            wait = self._weights_wait(conn, uid, block)
            if wait:
                raise ChainError(f"SettingWeightsTooFast: uid {uid} may set weights again in {wait} block(s)")
            conn.execute(
                "INSERT OR REPLACE INTO weights (uid, row, block, message, signature) VALUES (?, ?, ?, ?, ?)",
                (uid, json.dumps(normalize_row(dict(zip(uids, weights)))), *record),
            )
        conn.execute("UPDATE neurons SET nonce = nonce + 1 WHERE uid = ?", (uid,))
        return block

    # --- reads -----------------------------------------------------------------------------------------------------

    def commitments(self, block: int | None = None) -> dict[str, str]:
        if block is None:
            return dict(self._read("SELECT hotkey, data FROM commitments ORDER BY hotkey"))
        rows = self._read("SELECT hotkey, data FROM commitment_log WHERE landed <= ? ORDER BY landed, rowid", (block,))
        return dict(sorted(dict(rows).items()))  # the latest that had landed, per hotkey

    def weights(self) -> dict[int, dict[int, float]]:
        rows = self._read("SELECT uid, row FROM weights ORDER BY uid")
        return {uid: {int(k): float(v) for k, v in json.loads(row).items()} for uid, row in rows}

    # --- sqlite ----------------------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        # A connection must not cross a fork: the child opens its own.
        if os.getpid() != self._conn_pid:
            self._conn = _connect(self._path, create=False)
            self._conn_pid = os.getpid()
        return self._conn

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            with self._lock:
                return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise ChainError(f"local chain {self._path}: {e}") from e

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; IMMEDIATE takes the write lock up front so it never has to upgrade."""
        with self._lock:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise ChainError(f"local chain {self._path}: {e}") from e
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise ChainError(f"local chain {self._path}: {e}") from e
                raise

    def _load_meta(self) -> dict[str, str]:
        try:
            return dict(self._read("SELECT key, value FROM meta"))
        except ChainError as e:
            raise ChainError(f"{self._path}: not a LocalChain database ({e.__cause__ or e})") from None


def _connect(path: Path, *, create: bool) -> sqlite3.Connection:
    mode = "rwc" if create else "rw"  # "rw": opening a missing file is an error, not a new empty database
    try:
        conn = sqlite3.connect(
            f"file:{quote(str(path.absolute()))}?mode={mode}",
            uri=True,
            timeout=BUSY_TIMEOUT_S,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,  # shared across threads under LocalChain._lock
        )
        conn.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses at most the last commits
    except sqlite3.Error as e:
        raise ChainError(f"cannot open local chain {path}: {e}") from e
    return conn
