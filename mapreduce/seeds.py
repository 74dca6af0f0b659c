"""Every seed of the protocol in one table: sha256 over a domain tag and the public facts it depends on.

Each seed has its own tag, so no two uses can ever share a value; docs/PROTOCOL.md (*Plan*, *Proof of possession*,
*Broadcast*) and docs/vectors/ give the same texts.

| tag | text hashed | used for | module |
| --- | --- | --- | --- |
| ``plan`` | ``plan|{run}|{window}|{block}`` (hex digest) | the window's plan: miners ordered by ``sha256({seed}|{hotkey})`` | plan.py |
| ``broadcast`` | ``broadcast|{sender}|{block hash}``, standing for ``{block}`` above | a broadcast's own plan | network.py |
| ``proof`` | ``proof|{run}|{window}|{segment}|{miner}`` | a miner's proof-of-possession salt | wire/proof.py |
| ``sample`` | ``sample|{run}|{window}|{block hash}`` | the hosting checks' sample (after the deadline block) | network.py |
| ``hosting`` | ``hosting|`` + the sample seed (bytes) | the hosting checks' random stream | hosting.py |
| (none) | ``{reader}|{segment}`` | where a peer starts among good replicas (local, not checked) | trust.py |

The validator's reduce checks are sampled from ``os.urandom`` (validator.py): nobody can compute them in advance.
"""
from __future__ import annotations

import hashlib


def plan_seed(run: str, window: int, block: str) -> str:
    """The plan's seed (64 hex digits). ``block`` is the window's start block hash, or a broadcast's stand-in."""
    return hashlib.sha256(f"plan|{run}|{window}|{block}".encode()).hexdigest()


def plan_order_key(seed: str, hotkey: str) -> bytes:
    """Miners are ordered by this raw digest, smallest first."""
    return hashlib.sha256(f"{seed}|{hotkey}".encode()).digest()


def broadcast_block(sender: str, block_hash: str) -> str:
    """What a broadcast's plan uses in place of the block hash, so each sender's copies land on other miners."""
    return f"broadcast|{sender}|{block_hash}"


def proof_salt(run: str, window: int, segment: int, miner: str) -> bytes:
    return hashlib.sha256(f"proof|{run}|{window}|{segment}|{miner}".encode()).digest()


def sample_seed(run: str, window: int, block_hash: str) -> bytes:
    return hashlib.sha256(f"sample|{run}|{window}|{block_hash}".encode()).digest()


def hosting_stream(sample: bytes) -> bytes:
    """The hosting checks' random stream, independent of anything else drawn from the sample seed."""
    return hashlib.sha256(b"hosting|" + sample).digest()


def reader_offset(reader: str, segment: int) -> int:
    """Where ``reader`` starts among a segment's good replicas: spreads download egress over every good bucket."""
    return int.from_bytes(hashlib.sha256(f"{reader}|{segment}".encode()).digest()[:8], "big")
