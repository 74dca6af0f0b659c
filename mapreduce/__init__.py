"""S3-staged map-reduce for decentralized training: the protocol.

Peers split their flat gradient into segments and upload them, signed, to the buckets of the miners the window's
plan assigns; miners reduce each segment (mean, fp32 accumulation) and write the reduced slice back; peers
reassemble the average; validators sample, recompute and score. This package holds the protocol and knows nothing
of HTTP: bytes move through :mod:`storage`.

What a program needs is importable from here (``from mapreduce import Peer, Network, RunSpec``); the modules behind
each name are the places to read. Names load on first use, so ``python -m mapreduce --help`` and the roles do not
pay for what they do not use (the chain adapter imports the Bittensor SDK).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> the module that defines it
_EXPORTS = {
    # the run and its participants
    "RunSpec": "mapreduce.spec",
    "Network": "mapreduce.network",
    "StorePool": "mapreduce.network",
    "BucketLocation": "mapreduce.directory",
    "Signer": "mapreduce.wire.signing",
    "LocalChain": "mapreduce.chain.local",
    "SubtensorChain": "mapreduce.chain.subtensor",
    # the roles
    "Peer": "mapreduce.peer",
    "PeerConfig": "mapreduce.peer",
    "AllReduceResult": "mapreduce.peer",
    "Broadcaster": "mapreduce.broadcast",
    "Miner": "mapreduce.miner",
    "MinerConfig": "mapreduce.miner",
    "Validator": "mapreduce.validator",
    "ValidatorConfig": "mapreduce.validator",
    # named tensors <-> the run's flat vector
    "flatten": "mapreduce.flat",
    "unflatten": "mapreduce.flat",
    # the errors a program may catch: every one carries a reason code
    "ProtocolError": "mapreduce.errors",
    "InvalidObject": "mapreduce.errors",
    "NotAParticipant": "mapreduce.errors",
    "NoBucketOnChain": "mapreduce.errors",
    "PhaseOver": "mapreduce.errors",
    "BroadcastFailed": "mapreduce.errors",
    "StorageError": "storage.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and editors; at run time names load lazily (below)
    from storage.errors import StorageError
    from .broadcast import Broadcaster
    from .chain.local import LocalChain
    from .chain.subtensor import SubtensorChain
    from .directory import BucketLocation
    from .errors import (BroadcastFailed, InvalidObject, NoBucketOnChain, NotAParticipant, PhaseOver,
                         ProtocolError)
    from .flat import flatten, unflatten
    from .miner import Miner, MinerConfig
    from .network import Network, StorePool
    from .peer import AllReduceResult, Peer, PeerConfig
    from .spec import RunSpec
    from .validator import Validator, ValidatorConfig
    from .wire.signing import Signer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mapreduce' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
