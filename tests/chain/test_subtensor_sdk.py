"""SubtensorChain through the SDK's own code (bittensor 10.5.0 ``Subtensor``, its extrinsics, ``Metagraph``,
chain-data decoders and ``async_substrate_interface``'s ``ExtrinsicReceipt``/``QueryMapResult``), down to the
substrate interface, which is scripted (``tests/chain/scripted_substrate.py`` says why there and not lower).

Each test asserts both what SubtensorChain returns or raises and what the SDK sent to the substrate: storage items
and runtime APIs read, calls composed (pallet, function, parameters), signer, nonce, mortality, and how many
extrinsics were submitted. Not exercised here: the websocket/JSON-RPC transport, SCALE encoding and decoding against
real runtime metadata (the decoded shapes are scripted after the SDK's decoders and subtensor's types), the chain's
own rules (rate limits, deposits, permits, commit-reveal timing are scripted values, not computed), and the MEV-shield
submission path (off unless ``BT_MEV_PROTECTION`` is set, which SubtensorChain does not touch).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from async_substrate_interface.errors import SubstrateRequestException
from bittensor.core.chain_data import SelectiveMetagraphIndex
from bittensor.core.settings import DEFAULT_MEV_PROTECTION, DEFAULT_PERIOD
from bittensor_wallet import Keypair, Wallet

from mapreduce.chain import ChainError, Neuron
from mapreduce.chain.subtensor import SubtensorChain

from .scripted_substrate import (
    ModuleError,
    ScriptedSubstrate,
    ScriptedSubtensor,
    SignedExtrinsic,
    block_hash_of,
    module_error_events,
    success_events,
)

NETUID = 3
HEAD = 1000
RATE_LIMIT = 100  # WeightsSetRateLimit scripted for the subnet
COMMITMENTS_PALLET = 18  # pallet indices used by the scripted error table
SUBTENSOR_PALLET = 7
OWNER = Keypair.create_from_uri("//owner").ss58_address


def make_wallet(tmp_path: Path, name: str) -> Wallet:
    wallet = Wallet(name=name, hotkey="default", path=str(tmp_path / "wallets"))
    wallet.set_hotkey(Keypair.create_from_uri(f"//{name}"), encrypt=False, overwrite=True)
    return wallet


@pytest.fixture(autouse=True)
def no_mev_shield() -> None:
    # With BT_MEV_PROTECTION set in the environment the SDK would route every write through MevShield instead.
    assert not DEFAULT_MEV_PROTECTION, "unset BT_MEV_PROTECTION: these tests script the direct submission path"


@pytest.fixture
def wallets(tmp_path: Path) -> list[Wallet]:
    """uid 0: the validator, uids 1 and 2: miners."""
    return [make_wallet(tmp_path, n) for n in ("validator", "miner1", "miner2")]


@pytest.fixture
def substrate(wallets: list[Wallet]):
    sub = ScriptedSubstrate(head=HEAD)
    script_subnet(sub, wallets)
    yield sub
    # The SDK swallows some errors (e.g. AttributeError during a metagraph sync): nothing may have gone unanswered.
    assert sub.unscripted == []


@pytest.fixture
def chain(substrate: ScriptedSubstrate) -> SubtensorChain:
    return SubtensorChain(ScriptedSubtensor(substrate), NETUID)


def script_subnet(sub: ScriptedSubstrate, wallets: list[Wallet], *, last_update: int = 800) -> None:
    """A subnet ``NETUID`` with the three wallets registered as uids 0..2, uid 0 holding the validator permit."""
    hotkeys = [w.hotkey.ss58_address for w in wallets]
    n = len(hotkeys)
    sub.storage[("SubtensorModule", "NetworksAdded", (NETUID,))] = True
    for uid, hotkey in enumerate(hotkeys):
        sub.storage[("SubtensorModule", "Uids", (NETUID, hotkey))] = uid
    sub.storage[("SubtensorModule", "LastUpdate", (NETUID,))] = [last_update] * n
    sub.storage[("SubtensorModule", "WeightsSetRateLimit", (NETUID,))] = RATE_LIMIT
    sub.storage[("SubtensorModule", "CommitRevealWeightsEnabled", (NETUID,))] = False
    sub.storage[("SubtensorModule", "MechanismCountCurrent", (NETUID,))] = 1
    sub.storage[("SubtensorModule", "MechanismEmissionSplit", (NETUID,))] = None  # even split: Option is None

    # Decoded runtime-call answers in the layouts of subtensor's NeuronInfoLite, SubnetState and the selective
    # metagraph (AccountIds as ss58, balances in rao, u16-normalised fields as u16).
    permits = [uid == 0 for uid in range(n)]
    neuron_stake_rao = [5_000_000_000, 4_000_000_000, 3_000_000_000]  # per-coldkey alpha stake, neurons_lite's view
    total_stake_rao = [10_500_000_000, 9_000_000_000, 8_250_000_000]  # stake weight, subnet state's view

    def neurons_lite(params: list) -> list[dict]:
        assert params == [NETUID]
        return [
            {
                "hotkey": hotkeys[uid],
                "coldkey": OWNER,
                "uid": uid,
                "netuid": NETUID,
                "active": True,
                "axon_info": {
                    "block": 0, "version": 0, "ip": 0, "port": 0, "ip_type": 0, "protocol": 0,
                    "placeholder1": 0, "placeholder2": 0,
                },
                "prometheus_info": {"block": 0, "version": 0, "ip": 0, "port": 0, "ip_type": 0},
                "stake": [(OWNER, neuron_stake_rao[uid])],
                "rank": 0, "emission": 0, "incentive": 0, "consensus": 0, "trust": 0, "validator_trust": 0,
                "dividends": 0,
                "last_update": last_update,
                "validator_permit": permits[uid],
                "pruning_score": 0,
            }
            for uid in range(n)
        ]

    def subnet_state(params: list) -> dict:
        assert params == [NETUID]
        zeros = [0] * n
        return {
            "netuid": NETUID, "hotkeys": hotkeys, "coldkeys": [OWNER] * n, "active": [True] * n,
            "validator_permit": permits, "pruning_score": zeros, "last_update": [last_update] * n,
            "emission": zeros, "dividends": zeros, "incentives": zeros, "consensus": zeros, "trust": zeros,
            "rank": zeros, "block_at_registration": zeros, "alpha_stake": total_stake_rao, "tao_stake": zeros,
            "total_stake": total_stake_rao, "emission_history": [zeros],
        }

    def selective_mechagraph(params: list) -> dict:
        assert params[:2] == [NETUID, 0] and params[2] == list(range(len(SelectiveMetagraphIndex)))
        return metagraph_info(hotkeys, permits, total_stake_rao, last_update)

    sub.runtime_calls[("NeuronInfoRuntimeApi", "get_neurons_lite")] = neurons_lite
    sub.runtime_calls[("SubnetInfoRuntimeApi", "get_subnet_state")] = subnet_state
    sub.runtime_calls[("SubnetInfoRuntimeApi", "get_selective_mechagraph")] = selective_mechagraph


def metagraph_info(hotkeys: list[str], permits: list[bool], stake: list[int], last_update: int) -> dict:
    """A decoded ``SelectiveMetagraph`` with every field selected (``MetagraphInfo.from_dict`` reads them all)."""
    n = len(hotkeys)
    zeros = [0] * n
    return {
        "netuid": NETUID, "name": list(b"mapreduce"), "symbol": list(b"M"), "identity": None,
        "network_registered_at": 1, "owner_hotkey": OWNER, "owner_coldkey": OWNER, "block": HEAD, "tempo": 100,
        "last_step": 900, "blocks_since_last_step": 100, "subnet_emission": 0, "alpha_in": 10**12,
        "alpha_out": 10**12, "tao_in": 10**12, "alpha_out_emission": 0, "alpha_in_emission": 0,
        "tao_in_emission": 0, "pending_alpha_emission": 0, "pending_root_emission": 0, "subnet_volume": 0,
        "moving_price": {"bits": 1 << 32}, "rho": 10, "kappa": 32767, "min_allowed_weights": 1,
        "max_weights_limit": 65535, "weights_version": 0, "weights_rate_limit": RATE_LIMIT, "activity_cutoff": 5000,
        "max_validators": 64, "num_uids": n, "max_uids": 256, "burn": 10**9, "difficulty": 10**7,
        "registration_allowed": True, "pow_registration_allowed": False, "immunity_period": 5000,
        "min_difficulty": 10**7, "max_difficulty": 10**9, "min_burn": 10**8, "max_burn": 10**11,
        "adjustment_alpha": 0, "adjustment_interval": 100, "target_regs_per_interval": 2, "max_regs_per_block": 1,
        "serving_rate_limit": 50, "commit_reveal_weights_enabled": False, "commit_reveal_period": 1,
        "liquid_alpha_enabled": False, "alpha_high": 58982, "alpha_low": 45875, "bonds_moving_avg": 900000,
        "hotkeys": hotkeys, "coldkeys": [OWNER] * n, "identities": [None] * n, "axons": [], "active": [True] * n,
        "validator_permit": permits, "pruning_score": zeros, "last_update": [last_update] * n, "emission": zeros,
        "dividends": zeros, "incentives": zeros, "consensus": zeros, "trust": zeros, "rank": zeros,
        "block_at_registration": zeros, "alpha_stake": stake, "tao_stake": zeros, "total_stake": stake,
        "tao_dividends_per_hotkey": [(h, 0) for h in hotkeys], "alpha_dividends_per_hotkey": [(h, 0) for h in hotkeys],
        "validators": None, "commitments": None,
    }


def commitment_of(data: str, block: int = 900) -> dict:
    """A decoded ``Commitments.CommitmentOf`` registration holding ``data`` in one ``Raw<n>`` field."""
    return {"deposit": 0, "block": block, "info": {"fields": [{f"Raw{len(data)}": "0x" + data.encode().hex()}]}}


def succeed(idx: int, ext: SignedExtrinsic) -> list[dict]:
    return success_events(idx, ext.signer)


def submitted_calls(sub: ScriptedSubstrate) -> list[tuple[str, str]]:
    return [(e.call.call_module, e.call.call_function) for e in sub.submitted]


# --- reads -----------------------------------------------------------------------------------------------------------


def test_current_block(chain: SubtensorChain, substrate: ScriptedSubstrate) -> None:
    assert chain.current_block() == HEAD
    assert [(s.method, s.args) for s in substrate.sent] == [("get_block_number", {"block_hash": None})]


def test_block_hash(chain: SubtensorChain, substrate: ScriptedSubstrate) -> None:
    assert chain.block_hash(990) == block_hash_of(990)
    assert substrate.calls("get_block_hash") == [{"block_id": 990}]
    with pytest.raises(ChainError, match="future"):
        chain.block_hash(HEAD + 1)
    assert substrate.calls("get_block_hash") == [{"block_id": 990}]  # a future block is not even asked for


def test_block_timestamp(chain: SubtensorChain, substrate: ScriptedSubstrate) -> None:
    # Timestamp.Now is in milliseconds; the adapter returns seconds.
    substrate.storage[("Timestamp", "Now", ())] = lambda block: 1_700_000_000_000 + 12_000 * block + 345
    assert chain.block_timestamp(990) == pytest.approx(1_700_000_000 + 12 * 990 + 0.345)
    # Read at that block's hash, not at the head.
    assert substrate.calls("get_block_hash") == [{"block_id": 990}]
    assert substrate.calls("query") == [{"module": "Timestamp", "storage_function": "Now", "params": [], "block": 990}]


def test_block_timestamp_of_pruned_state(chain: SubtensorChain, substrate: ScriptedSubstrate) -> None:
    # What a lite node answers for state older than it keeps: the error names the way out.
    def pruned(block: int) -> int:
        raise SubstrateRequestException(
            {"code": 4003, "message": f"Client error: State already discarded for {block_hash_of(block)}"}
        )

    substrate.storage[("Timestamp", "Now", ())] = pruned
    with pytest.raises(ChainError, match="State already discarded.*set --subtensor.archive_endpoint"):
        chain.block_timestamp(5)
    assert len(substrate.calls("query")) == 1  # pruned state does not come back: not retried


def test_old_timestamps_come_from_the_archive_node_and_final_ones_are_kept(wallets: list[Wallet]) -> None:
    lite, archive = ScriptedSubstrate(head=HEAD), ScriptedSubstrate(head=HEAD)
    for sub in (lite, archive):
        script_subnet(sub, wallets)
    lite.finalized = HEAD - 2

    def pruned(block: int) -> int:
        if block < HEAD - 256:
            raise SubstrateRequestException(
                {"code": 4003, "message": f"Client error: State already discarded for {block_hash_of(block)}"})
        return 1_700_000_000_000 + 12_000 * block

    lite.storage[("Timestamp", "Now", ())] = pruned
    archive.storage[("Timestamp", "Now", ())] = lambda block: 1_700_000_000_000 + 12_000 * block
    opened = []
    chain = SubtensorChain(ScriptedSubtensor(lite), NETUID,
                           connect_archive=lambda: opened.append(1) or ScriptedSubtensor(archive))
    assert chain.block_timestamp(5) == 1_700_000_000 + 60 and opened == [1]
    assert chain.block_timestamp(5) == 1_700_000_000 + 60  # kept: asked of neither node again
    assert len(lite.calls("query")) == len(archive.calls("query")) == 1
    assert chain.finalized_block() == HEAD - 2
    assert lite.calls("get_chain_finalised_head") == [{}]
    # Recent blocks are the lite node's; a final one is kept, one near the head (a reorg may replace it) is not.
    for block in (HEAD - 2, HEAD - 2, HEAD, HEAD):
        assert chain.block_timestamp(block) == 1_700_000_000 + 12 * block
    assert [q["block"] for q in lite.calls("query")][1:] == [HEAD - 2, HEAD, HEAD]
    assert len(archive.calls("query")) == 1 and opened == [1]


def test_neurons_through_metagraph_lite(
    chain: SubtensorChain, substrate: ScriptedSubstrate, wallets: list[Wallet]
) -> None:
    hk = [w.hotkey.ss58_address for w in wallets]
    # Stake is the metagraph's S: total stake weight from the subnet state (alpha + weighted tao), not the
    # per-coldkey alpha of neurons_lite.
    assert chain.neurons() == [
        Neuron(0, hk[0], 10.5, True),
        Neuron(1, hk[1], 9.0, False),
        Neuron(2, hk[2], 8.25, False),
    ]
    runtime_calls = [(c["api"], c["method"], c["block"]) for c in substrate.calls("runtime_call")]
    assert runtime_calls == [
        ("NeuronInfoRuntimeApi", "get_neurons_lite", HEAD),
        ("SubnetInfoRuntimeApi", "get_subnet_state", HEAD),
        ("SubnetInfoRuntimeApi", "get_selective_mechagraph", HEAD),
    ]
    # Lite: no weights or bonds maps are read.
    assert substrate.calls("query_map") == []
    assert ("SubtensorModule", "MechanismCountCurrent") in substrate.queried()


def test_neurons_when_the_stake_read_fails(chain: SubtensorChain, substrate: ScriptedSubstrate) -> None:
    # Metagraph.sync logs and swallows a failed get_subnet_state, leaving S empty: an error, not an empty subnet.
    def fail(params: list) -> dict:
        raise SubstrateRequestException({"code": -32000, "message": "Client error: runtime call failed"})

    substrate.runtime_calls[("SubnetInfoRuntimeApi", "get_subnet_state")] = fail
    with pytest.raises(ChainError, match="metagraph of netuid 3 is incomplete: 3 uids, 3 hotkeys, 0 stakes"):
        chain.neurons()


def test_commitments_decoded_by_the_sdk(
    chain: SubtensorChain, substrate: ScriptedSubstrate, wallets: list[Wallet]
) -> None:
    hk = [w.hotkey.ss58_address for w in wallets]
    substrate.maps[("Commitments", "CommitmentOf", (NETUID,))] = [
        [hk[1], commitment_of("bucket-one")],
        [hk[2], commitment_of("s3://bucket-two/prefix")],
        [hk[0], {"deposit": 0, "block": 1, "info": {"fields": []}}],  # undecodable: the SDK logs and skips it
    ]
    assert chain.commitments() == {hk[1]: "bucket-one", hk[2]: "s3://bucket-two/prefix"}
    # One page, then the (empty) page after its last key.
    assert [(c["module"], c["storage_function"], c["params"], c["start"]) for c in substrate.calls("query_map")] == [
        ("Commitments", "CommitmentOf", [NETUID], None),
        ("Commitments", "CommitmentOf", [NETUID], "0x00000003"),
    ]


def test_weights_read_and_normalised(chain: SubtensorChain, substrate: ScriptedSubstrate) -> None:
    # Weights is keyed by the mechanism storage index, which for mechanism 0 is the netuid itself.
    substrate.maps[("SubtensorModule", "Weights", (NETUID,))] = [
        [0, [(1, 65535), (2, 21845)]],
        [1, []],  # a neuron that set no weights: no row
        [2, [(0, 100)]],
    ]
    assert chain.weights() == {0: pytest.approx({1: 0.75, 2: 0.25}, abs=1e-4), 2: {0: 1.0}}
    assert substrate.queried()[0] == ("SubtensorModule", "Weights")
    assert substrate.calls("query_map")[0]["params"] == [NETUID]


# --- commitments -----------------------------------------------------------------------------------------------------


def test_commit_unchanged_sends_nothing(
    chain: SubtensorChain, substrate: ScriptedSubstrate, wallets: list[Wallet]
) -> None:
    miner = wallets[1]
    substrate.storage[("Commitments", "CommitmentOf", (NETUID, miner.hotkey.ss58_address))] = commitment_of("bucket")
    chain.commit(miner, "bucket")
    assert substrate.queried() == [("Commitments", "CommitmentOf")]
    assert substrate.calls("compose_call") == [] and substrate.calls("submit_extrinsic") == []


def test_commit_sends_one_set_commitment(
    chain: SubtensorChain, substrate: ScriptedSubstrate, wallets: list[Wallet]
) -> None:
    miner = wallets[1]
    hotkey = miner.hotkey.ss58_address
    substrate.storage[("Commitments", "CommitmentOf", (NETUID, hotkey))] = commitment_of("old-bucket")
    substrate.outcomes.append(succeed)
    chain.commit(miner, "new-bucket")

    assert substrate.calls("compose_call") == [
        {
            "call_module": "Commitments",
            "call_function": "set_commitment",
            "call_params": {"netuid": NETUID, "info": {"fields": [[{"Raw10": b"new-bucket"}]]}},
        }
    ]
    [signed] = substrate.calls("create_signed_extrinsic")
    # Signed by the hotkey, mortal for the SDK's default period; the nonce is left to the signing code.
    assert signed["signer"] == hotkey and signed["era"] == {"period": DEFAULT_PERIOD} and signed["nonce"] is None
    [submit] = substrate.calls("submit_extrinsic")
    assert submit["wait_for_inclusion"] is True and submit["wait_for_finalization"] is False
    # The receipt read the including block and its events to learn the outcome.
    assert [c["block_hash"] for c in substrate.calls("get_events")] == [block_hash_of(HEAD + 1)]


def test_commit_first_time_and_with_finalization(substrate: ScriptedSubstrate, wallets: list[Wallet]) -> None:
    miner = wallets[2]
    hotkey = miner.hotkey.ss58_address
    substrate.storage[("Commitments", "CommitmentOf", (NETUID, hotkey))] = None  # no commitment yet
    substrate.outcomes.append(succeed)
    SubtensorChain(ScriptedSubtensor(substrate), NETUID, wait_for_finalization=True).commit(miner, "bucket")
    assert submitted_calls(substrate) == [("Commitments", "set_commitment")]
    assert substrate.calls("submit_extrinsic")[0]["wait_for_finalization"] is True


def test_commit_dispatch_error(chain: SubtensorChain, substrate: ScriptedSubstrate, wallets: list[Wallet]) -> None:
    miner = wallets[1]
    substrate.storage[("Commitments", "CommitmentOf", (NETUID, miner.hotkey.ss58_address))] = None
    substrate.module_errors[(COMMITMENTS_PALLET, 4)] = ModuleError(
        "CommitmentSetRateLimitExceeded", ["Account is trying to commit data too fast, rate limit exceeded"]
    )
    substrate.outcomes.append(lambda idx, ext: module_error_events(idx, ext.signer, COMMITMENTS_PALLET, 4))
    with pytest.raises(ChainError, match="set_commitment .* failed: .*CommitmentSetRateLimitExceeded"):
        chain.commit(miner, "bucket")
    assert len(substrate.calls("submit_extrinsic")) == 1


# --- weights ---------------------------------------------------------------------------------------------------------


def test_set_weights(chain: SubtensorChain, substrate: ScriptedSubstrate, wallets: list[Wallet]) -> None:
    validator = wallets[0]
    hotkey = validator.hotkey.ss58_address
    substrate.nonces[hotkey] = 7
    substrate.outcomes.append(succeed)
    chain.set_weights(validator, [1, 2], [0.25, 0.75], version_key=42)

    # The SDK checked who the signer is, whether commit-reveal is on and the rate limit, at the head.
    queried = substrate.queried()
    for item in ("Uids", "CommitRevealWeightsEnabled", "LastUpdate", "WeightsSetRateLimit"):
        assert ("SubtensorModule", item) in queried
    # Weights are max-normalised to u16 by the SDK.
    assert substrate.calls("compose_call") == [
        {
            "call_module": "SubtensorModule",
            "call_function": "set_mechanism_weights",
            "call_params": {
                # the run spec's version key, not the SDK's own version_as_int
                "netuid": NETUID, "mecid": 0, "dests": [1, 2], "weights": [21845, 65535], "version_key": 42,
            },
        }
    ]
    [signed] = substrate.calls("create_signed_extrinsic")
    assert signed["signer"] == hotkey and signed["nonce"] == 7 and signed["era"] == {"period": DEFAULT_PERIOD}
    assert substrate.calls("get_account_next_index") == [{"account": hotkey}]
    [submit] = substrate.calls("submit_extrinsic")
    assert submit["wait_for_inclusion"] is True and submit["wait_for_finalization"] is False


def test_set_weights_within_rate_limit_is_not_sent(substrate: ScriptedSubstrate, wallets: list[Wallet]) -> None:
    # Last update RATE_LIMIT blocks ago exactly: the SDK needs strictly more, so it does not even compose the call.
    substrate.storage[("SubtensorModule", "LastUpdate", (NETUID,))] = [HEAD - RATE_LIMIT] * 3
    chain = SubtensorChain(ScriptedSubtensor(substrate), NETUID)
    with pytest.raises(ChainError, match="set_weights on netuid 3 failed: not sent .*weights_rate_limit"):
        chain.set_weights(wallets[0], [1], [1.0])
    assert substrate.calls("compose_call") == [] and substrate.calls("submit_extrinsic") == []
    # One check of the limit: one attempt (max_attempts=1), no retry loop.
    assert substrate.queried().count(("SubtensorModule", "WeightsSetRateLimit")) == 1


def test_set_weights_rejected_by_the_pool(
    chain: SubtensorChain, substrate: ScriptedSubstrate, wallets: list[Wallet]
) -> None:
    # The node refuses the transaction before inclusion (the chain's own rate-limit check, a custom validity error).
    rejection = {"jsonrpc": "2.0", "id": 9, "error": {"code": 1010, "message": "Invalid Transaction",
                                                      "data": "Custom error: 6"}}
    substrate.outcomes.append(SubstrateRequestException(str(rejection)))
    with pytest.raises(ChainError, match="Invalid Transaction.*Custom error: 6"):
        chain.set_weights(wallets[0], [1, 2], [0.5, 0.5])
    assert len(substrate.calls("submit_extrinsic")) == 1  # exactly one attempt
    assert substrate.submitted == []


def test_set_weights_dispatch_error(chain: SubtensorChain, substrate: ScriptedSubstrate, wallets: list[Wallet]) -> None:
    substrate.module_errors[(SUBTENSOR_PALLET, 12)] = ModuleError(
        "NeuronNoValidatorPermit", ["The caller is attempting to set non-self weights without a validator permit."]
    )
    substrate.outcomes.append(lambda idx, ext: module_error_events(idx, ext.signer, SUBTENSOR_PALLET, 12))
    with pytest.raises(ChainError, match="set_weights on netuid 3 failed: .*NeuronNoValidatorPermit"):
        chain.set_weights(wallets[1], [0], [1.0])
    assert submitted_calls(substrate) == [("SubtensorModule", "set_mechanism_weights")]  # once, not retried


def test_set_weights_commit_reveal(chain: SubtensorChain, substrate: ScriptedSubstrate, wallets: list[Wallet]) -> None:
    validator = wallets[0]
    substrate.storage[("SubtensorModule", "CommitRevealWeightsEnabled", (NETUID,))] = True
    # What the SDK reads to time-lock the commit to the drand round of the reveal epoch.
    substrate.runtime_calls[("SubnetInfoRuntimeApi", "get_subnet_hyperparams_v3")] = lambda params: [
        {"name": "commit_reveal_period", "value": {"U64": 1}},
        {"name": "commit_reveal_weights_enabled", "value": {"Bool": True}},
        {"name": "tempo", "value": {"U16": 100}},
    ]
    substrate.storage[("SubtensorModule", "LastEpochBlock", (NETUID,))] = 900
    substrate.storage[("SubtensorModule", "PendingEpochAt", (NETUID,))] = 0
    substrate.storage[("SubtensorModule", "SubnetEpochIndex", (NETUID,))] = 9
    substrate.storage[("SubtensorModule", "Tempo", (NETUID,))] = 100
    substrate.storage[("SubtensorModule", "BlocksSinceLastStep", (NETUID,))] = 100
    substrate.outcomes.append(succeed)
    before = time.time()
    chain.set_weights(validator, [1, 2], [0.25, 0.75])

    [composed] = substrate.calls("compose_call")
    assert (composed["call_module"], composed["call_function"]) == (
        "SubtensorModule",
        "commit_timelocked_mechanism_weights",
    )
    params: dict[str, Any] = composed["call_params"]
    assert params["netuid"] == NETUID and params["mecid"] == 0 and params["commit_reveal_version"] == 4
    assert isinstance(params["commit"], bytes) and len(params["commit"]) > 100  # the drand-encrypted payload
    # Quicknet rounds are 3 s apart from 2023-08-23: the reveal round lies ahead of now, within a few epochs.
    quicknet_round_now = (before - 1_692_803_367) / 3
    assert quicknet_round_now < params["reveal_round"] < quicknet_round_now + 10 * 100 * 12 / 3
    assert submitted_calls(substrate) == [("SubtensorModule", "commit_timelocked_mechanism_weights")]
    assert ("SubnetInfoRuntimeApi", "get_subnet_hyperparams_v3") in [
        (c["api"], c["method"]) for c in substrate.calls("runtime_call")
    ]


def test_weights_wait_reads_the_rate_limit_and_the_last_update(chain: SubtensorChain,
                                                              substrate: ScriptedSubstrate) -> None:
    # The validator asks this before each attempt, so it never sends weights the chain would refuse for the limit.
    substrate.storage[("SubtensorModule", "LastUpdate", (NETUID,))] = [HEAD - 30, HEAD - RATE_LIMIT - 1, 0]
    assert [chain.weights_wait(uid) for uid in range(3)] == [RATE_LIMIT - 30, 0, 0]
    assert ("SubtensorModule", "WeightsSetRateLimit") in substrate.queried()
    assert ("SubtensorModule", "LastUpdate") in substrate.queried()
