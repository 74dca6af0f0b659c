"""A scripted stand-in for the ``SubstrateInterface`` that ``bittensor.Subtensor`` (10.5.0) talks through.

Why this boundary: below it, ``async_substrate_interface`` SCALE-encodes every request and decodes every answer
against the chain's runtime metadata (``state_getMetadata``), and no such metadata exists on this machine (no network,
none bundled with the SDK). So the JSON-RPC/websocket layer cannot be scripted realistically. One level up, every
method the SDK calls on ``Subtensor.substrate`` takes and returns *decoded* Python values, which can be scripted in the
shapes the real interface returns:

- ``query`` returns an object whose ``.value`` is the decoded storage value (``None`` for an absent ``Option``);
- ``query_map`` returns the interface's own ``QueryMapResult`` over ``[key, value]`` records, paging included
  (AccountId keys as ss58 strings, which is what the SDK's callers type them as);
- ``runtime_call`` returns the decoded value itself (the real one returns ``obj.value``);
- ``submit_extrinsic`` returns the interface's own ``ExtrinsicReceipt``, which reads the including block and its
  ``System.Events`` back through ``get_block``/``get_events`` here and runs its real event processing (fee,
  success, ``ExtrinsicFailed`` with a module error resolved through ``metadata.get_module_error``).

Runtime metadata is reduced to what the SDK asks of it: which storage items and runtime APIs exist
(``get_metadata_storage_function``, ``init_runtime().runtime_api_map``) and which parameter names a call takes
(``get_metadata_call_function(...).get_param_info()``, used by the SDK to validate and filter call parameters).
The names below are subtensor's; the module/error indices of scripted dispatch errors are this script's own.

Every method call is recorded in :attr:`ScriptedSubstrate.sent`. Anything the SDK asks for that is not scripted is
recorded in :attr:`ScriptedSubstrate.unscripted` and raised, so a test can insist that nothing went unanswered (the
SDK swallows some errors, e.g. ``AttributeError`` while syncing a metagraph).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

from async_substrate_interface.sync_substrate import ExtrinsicReceipt, QueryMapResult

import bittensor as bt

# Parameter names of the calls the SDK composes for SubtensorChain, as declared by subtensor's pallets
# (pallets/subtensor/src/macros/dispatches.rs, pallets/commitments/src/lib.rs).
CALL_PARAMS: dict[tuple[str, str], list[str]] = {
    ("SubtensorModule", "set_mechanism_weights"): ["netuid", "mecid", "dests", "weights", "version_key"],
    ("SubtensorModule", "commit_timelocked_mechanism_weights"): [
        "netuid",
        "mecid",
        "commit",
        "reveal_round",
        "commit_reveal_version",
    ],
    ("Commitments", "set_commitment"): ["netuid", "info"],
}


class Unscripted(AssertionError):
    """The SDK asked the substrate for something this script does not answer."""


class ScaleValue:
    """What ``SubstrateInterface.query`` returns: a decoded SCALE object, read through ``.value``."""

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return f"ScaleValue({self.value!r})"


@dataclass
class Sent:
    """One call the SDK made on the substrate."""

    method: str
    args: dict[str, Any]


@dataclass
class ComposedCall:
    """What ``compose_call`` returns in place of a SCALE-encoded ``GenericCall``."""

    call_module: str
    call_function: str
    call_args: dict[str, Any]

    @property
    def value(self) -> dict[str, Any]:
        # GenericCall.value has this layout.
        return {"call_module": self.call_module, "call_function": self.call_function, "call_args": self.call_args}


@dataclass
class SignedExtrinsic:
    """What ``create_signed_extrinsic`` returns in place of a ``GenericExtrinsic``."""

    call: ComposedCall
    signer: str  # ss58 of the keypair that signed
    nonce: int | None
    era: dict | None
    signature: bytes
    extrinsic_hash: bytes  # the real one is the blake2-256 of the encoded extrinsic


@dataclass
class ModuleError:
    """An entry of the runtime metadata's error table, as ``metadata.get_module_error`` returns it."""

    name: str
    docs: list[str]


@dataclass
class ScriptedRuntime:
    """What ``init_runtime`` returns: the SDK only checks ``metadata_v15`` and ``runtime_api_map``."""

    runtime_api_map: dict[str, dict[str, dict]]
    metadata_v15: Any = "v15"  # not None: the SDK then looks runtime APIs up in runtime_api_map


class ScriptedMetadata:
    def __init__(self, errors: dict[tuple[int, int], ModuleError]):
        self._errors = errors

    def get_module_error(self, module_index: int, error_index: int) -> ModuleError:
        return self._errors[(module_index, error_index)]


def block_hash_of(block: int) -> str:
    return "0x" + hashlib.sha256(f"block {block}".encode()).hexdigest()


def success_events(extrinsic_idx: int, signer: str, fee: int = 123_456) -> list[dict]:
    """``System.Events`` of a block in which extrinsic ``extrinsic_idx`` paid its fee and succeeded."""
    weight = {"ref_time": 1_000_000, "proof_size": 4_000}
    return [
        _event(extrinsic_idx, "TransactionPayment", "TransactionFeePaid", {"who": signer, "actual_fee": fee, "tip": 0}),
        _event(
            extrinsic_idx,
            "System",
            "ExtrinsicSuccess",
            {"dispatch_info": {"weight": weight, "class": "Normal", "pays_fee": "Yes"}},
        ),
    ]


def module_error_events(extrinsic_idx: int, signer: str, module_index: int, error_index: int) -> list[dict]:
    """``System.Events`` of a block in which extrinsic ``extrinsic_idx`` failed with a pallet's error."""
    weight = {"ref_time": 1_000_000, "proof_size": 4_000}
    return [
        _event(extrinsic_idx, "TransactionPayment", "TransactionFeePaid", {"who": signer, "actual_fee": 100, "tip": 0}),
        _event(
            extrinsic_idx,
            "System",
            "ExtrinsicFailed",
            {
                # The [u8; 4] error field: the first byte is the pallet's error index.
                "dispatch_error": {"Module": {"index": module_index, "error": f"0x{error_index:02x}000000"}},
                "dispatch_info": {"weight": weight, "class": "Normal", "pays_fee": "Yes"},
            },
        ),
    ]


def _event(extrinsic_idx: int, module: str, event: str, attributes: dict) -> dict:
    # The layout of a decoded System.Events record as the receipt reads it.
    return {
        "phase": {"ApplyExtrinsic": extrinsic_idx},
        "extrinsic_idx": extrinsic_idx,
        "event": {"module_id": module, "event_id": event, "attributes": attributes},
        "topics": [],
    }


@dataclass
class ScriptedSubstrate:
    """The substrate of a chain at block ``head``; tests fill in storage, maps and runtime-call answers."""

    head: int = 1000
    finalized: int | None = None  # the finalized head; None: the head itself
    # (module, storage, params) -> value, or a function of the block number queried at.
    storage: dict[tuple[str, str, tuple], Any] = field(default_factory=dict)
    # (module, storage, params) -> [[key, value], ...]
    maps: dict[tuple[str, str, tuple], list[list[Any]]] = field(default_factory=dict)
    # (api, method) -> function of the params list, returning the decoded answer.
    runtime_calls: dict[tuple[str, str], Callable[[list], Any]] = field(default_factory=dict)
    # Storage items the runtime declares besides those scripted (the SDK probes some before querying).
    declared_storage: set[tuple[str, str]] = field(default_factory=set)
    module_errors: dict[tuple[int, int], ModuleError] = field(default_factory=dict)
    # How the chain treats the next submitted extrinsics, in order: a function of (extrinsic_idx, extrinsic)
    # returning the events of the including block, or an exception the node answers the submission with.
    outcomes: list[Callable[[int, SignedExtrinsic], list[dict]] | Exception] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    submitted: list[SignedExtrinsic] = field(default_factory=list)
    unscripted: list[str] = field(default_factory=list)
    nonces: dict[str, int] = field(default_factory=dict)
    _blocks: dict[str, dict] = field(default_factory=dict)  # block hash -> {"extrinsics": [...], "events": [...]}

    # --- recording --------------------------------------------------------------------------------------------

    def _record(self, name: str, /, **args: Any) -> None:
        self.sent.append(Sent(name, args))

    def _missing(self, what: str) -> Unscripted:
        self.unscripted.append(what)
        return Unscripted(f"not scripted: {what}")

    def __getattr__(self, name: str) -> Any:
        # Dataclass fields are found before this is consulted; anything else is an SDK call the script lacks.
        if name.startswith("__"):
            raise AttributeError(name)
        raise self._missing(f"substrate.{name}")

    def calls(self, method: str) -> list[dict[str, Any]]:
        """The arguments of every recorded call of ``method``."""
        return [s.args for s in self.sent if s.method == method]

    def queried(self) -> list[tuple[str, str]]:
        """(module, storage) of every ``query`` and ``query_map``, in order."""
        return [
            (s.args["module"], s.args["storage_function"]) for s in self.sent if s.method in ("query", "query_map")
        ]

    # --- blocks -----------------------------------------------------------------------------------------------

    def block_of(self, block_hash: str | None) -> int:
        if block_hash is None:
            return self.head
        for n in range(self.head + 1):
            if block_hash_of(n) == block_hash:
                return n
        raise self._missing(f"block hash {block_hash}")

    def get_block_number(self, block_hash: str | None = None) -> int:
        self._record("get_block_number", block_hash=block_hash)
        return self.block_of(block_hash)

    def get_chain_finalised_head(self) -> str:
        self._record("get_chain_finalised_head")
        return block_hash_of(self.head if self.finalized is None else self.finalized)

    def get_chain_head(self) -> str:
        self._record("get_chain_head")
        return block_hash_of(self.head)

    def get_block_hash(self, block_id: int | None) -> str | None:
        self._record("get_block_hash", block_id=block_id)
        if block_id is None:
            return block_hash_of(self.head)
        return block_hash_of(block_id) if 0 <= block_id <= self.head else None  # the node answers null

    # --- metadata ---------------------------------------------------------------------------------------------

    def init_runtime(self, block_hash: str | None = None, block_id: int | None = None) -> ScriptedRuntime:
        self._record("init_runtime", block_hash=block_hash)
        apis: dict[str, dict[str, dict]] = {}
        for api, method in self.runtime_calls:
            apis.setdefault(api, {})[method] = {"inputs": [], "output": 0}
        return ScriptedRuntime(runtime_api_map=apis)

    @property
    def metadata(self) -> ScriptedMetadata:
        return ScriptedMetadata(self.module_errors)

    def get_metadata_storage_function(self, module_name: str, storage_name: str, block_hash: str | None = None):
        self._record("get_metadata_storage_function", module=module_name, storage=storage_name)
        known = {(m, s) for m, s, _ in self.storage} | {(m, s) for m, s, _ in self.maps} | self.declared_storage
        return {"name": storage_name} if (module_name, storage_name) in known else None

    def get_metadata_call_function(self, module_name: str, call_function_name: str, block_hash: str | None = None):
        self._record("get_metadata_call_function", module=module_name, function=call_function_name)
        params = CALL_PARAMS.get((module_name, call_function_name))
        if params is None:
            raise self._missing(f"call {module_name}.{call_function_name}")
        return _CallFunction(params)

    # --- state ------------------------------------------------------------------------------------------------

    def query(
        self,
        module: str,
        storage_function: str,
        params: list | None = None,
        block_hash: str | None = None,
        raw_storage_key: bytes | None = None,
        subscription_handler: Any = None,
    ) -> ScaleValue:
        block = self.block_of(block_hash)
        self._record("query", module=module, storage_function=storage_function, params=list(params or []), block=block)
        key = (module, storage_function, tuple(params or []))
        if key not in self.storage:
            raise self._missing(f"storage {module}.{storage_function}{list(params or [])}")
        value = self.storage[key]
        return ScaleValue(value(block) if callable(value) else value)

    def query_map(
        self,
        module: str,
        storage_function: str,
        params: list | None = None,
        block_hash: str | None = None,
        max_results: int | None = None,
        start_key: str | None = None,
        page_size: int = 100,
        ignore_decoding_errors: bool = False,
    ) -> QueryMapResult:
        block = self.block_of(block_hash)
        params = list(params or [])
        self._record(
            "query_map", module=module, storage_function=storage_function, params=params, block=block, start=start_key
        )
        key = (module, storage_function, tuple(params))
        if key not in self.maps:
            raise self._missing(f"map {module}.{storage_function}{params}")
        records = [list(r) for r in self.maps[key]]
        # One page holds everything; the page after the last key is empty, as state_getKeysPaged answers.
        if start_key is not None:
            records = []
        last_key = f"0x{len(self.maps[key]):08x}" if records else None
        return QueryMapResult(
            records=records,
            page_size=page_size,
            substrate=self,  # type: ignore[arg-type]
            module=module,
            storage_function=storage_function,
            params=params,
            block_hash=block_hash,
            last_key=last_key,
            max_results=max_results,
            ignore_decoding_errors=ignore_decoding_errors,
        )

    def runtime_call(
        self, api: str, method: str, params: list | dict | None = None, block_hash: str | None = None
    ) -> Any:
        block = self.block_of(block_hash)
        self._record("runtime_call", api=api, method=method, params=params, block=block)
        answer = self.runtime_calls.get((api, method))
        if answer is None:
            raise self._missing(f"runtime call {api}.{method}")
        return answer(params)

    # --- extrinsics -------------------------------------------------------------------------------------------

    def compose_call(
        self,
        call_module: str,
        call_function: str,
        call_params: dict | None = None,
        block_hash: str | None = None,
    ) -> ComposedCall:
        self._record("compose_call", call_module=call_module, call_function=call_function, call_params=call_params)
        return ComposedCall(call_module, call_function, dict(call_params or {}))

    def get_account_next_index(self, account_address: str) -> int:
        self._record("get_account_next_index", account=account_address)
        return self.nonces.get(account_address, 0)

    def create_signed_extrinsic(
        self,
        call: ComposedCall,
        keypair: Any,
        era: dict | None = None,
        nonce: int | None = None,
        tip: int = 0,
        tip_asset_id: int | None = None,
        signature: bytes | None = None,
    ) -> SignedExtrinsic:
        self._record("create_signed_extrinsic", call=call, signer=keypair.ss58_address, era=era, nonce=nonce)
        # The real payload is the SCALE encoding of call + extensions; signing a stand-in still proves the SDK handed
        # over a keypair that can sign (a locked or public-only key fails here as it would on the real path).
        payload = repr((call.value, era, nonce)).encode()
        sig = keypair.sign(payload)
        ext_hash = hashlib.blake2b(sig, digest_size=32).digest()
        return SignedExtrinsic(call, keypair.ss58_address, nonce, era, sig, ext_hash)

    def submit_extrinsic(
        self, extrinsic: SignedExtrinsic, wait_for_inclusion: bool = False, wait_for_finalization: bool = False
    ) -> ExtrinsicReceipt:
        self._record(
            "submit_extrinsic",
            extrinsic=extrinsic,
            wait_for_inclusion=wait_for_inclusion,
            wait_for_finalization=wait_for_finalization,
        )
        if not self.outcomes:
            raise self._missing("outcome of a submitted extrinsic")
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome  # the node rejected it before inclusion (e.g. an invalid transaction)
        self.submitted.append(extrinsic)
        self.nonces[extrinsic.signer] = (extrinsic.nonce or 0) + 1
        # Included in the next block, as the first extrinsic after the timestamp inherent.
        self.head += 1
        block_hash = block_hash_of(self.head)
        idx = 1
        self._blocks[block_hash] = {
            "extrinsics": [_Extrinsic(b"\0" * 32), _Extrinsic(extrinsic.extrinsic_hash)],
            "events": outcome(idx, extrinsic),
        }
        return ExtrinsicReceipt(
            substrate=self,  # type: ignore[arg-type]
            extrinsic_hash="0x" + extrinsic.extrinsic_hash.hex(),
            block_hash=block_hash,
            block_number=self.head,
            finalized=wait_for_finalization,
        )

    def get_block(self, block_hash: str | None = None, **kwargs: Any) -> dict:
        self._record("get_block", block_hash=block_hash)
        if block_hash not in self._blocks:
            raise self._missing(f"block {block_hash}")
        return {"extrinsics": self._blocks[block_hash]["extrinsics"]}

    def get_events(self, block_hash: str | None = None) -> list[dict]:
        self._record("get_events", block_hash=block_hash)
        if block_hash not in self._blocks:
            raise self._missing(f"events of {block_hash}")
        return self._blocks[block_hash]["events"]

    def close(self) -> None:
        self._record("close")


@dataclass
class _CallFunction:
    params: list[str]

    def get_param_info(self) -> dict[str, Any]:
        return {name: None for name in self.params}


@dataclass
class _Extrinsic:
    extrinsic_hash: bytes


class ScriptedSubtensor(bt.Subtensor):
    """The SDK's own ``Subtensor``, built by its own ``__init__``, holding a :class:`ScriptedSubstrate`.

    Only ``_get_substrate`` (which would open the websocket) is replaced.
    """

    def __init__(self, substrate: ScriptedSubstrate):
        self._scripted = substrate
        super().__init__(network="local")

    def _get_substrate(self, *args: Any, **kwargs: Any) -> Any:
        return self._scripted
