"""LocalChain: time-driven blocks, deterministic hashes, signed writes, and sharing one file across processes."""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bittensor_wallet import Keypair

from mapreduce.chain import MAX_COMMITMENT_BYTES, Chain, ChainError, ChainTimeout, LocalChain, Neuron, SignedCall

REPO = Path(__file__).resolve().parents[2]
BLOCK_TIME = 0.05


def kp(name: str) -> Keypair:
    return Keypair.create_from_uri(f"//{name}")


@pytest.fixture
def chain(tmp_path):
    c = LocalChain.create(tmp_path / "chain.db", netuid=7, block_time=BLOCK_TIME, genesis_seed="seed")
    yield c
    c.close()


@pytest.fixture
def registered(chain):
    """uid 0: validator with permit; uids 1, 2: miners."""
    keys = [kp("validator"), kp("miner-1"), kp("miner-2")]
    for i, k in enumerate(keys):
        assert chain.register(k.ss58_address, stake=10.0 - i, validator_permit=(i == 0)) == i
    return keys


# --- lifecycle ------------------------------------------------------------------------------------------------------


def test_create_and_open_share_parameters(chain):
    other = LocalChain.open(chain.path)
    assert isinstance(other, Chain)
    assert (other.netuid, other.block_time, other.genesis_time, other.genesis_seed) == (
        7,
        BLOCK_TIME,
        chain.genesis_time,
        "seed",
    )
    assert other.chain_id == chain.chain_id
    other.close()


def test_open_missing_or_foreign_file_fails(tmp_path):
    with pytest.raises(ChainError):
        LocalChain.open(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(ChainError):
        LocalChain.open(tmp_path / "junk.db")


def test_create_refuses_existing_chain(chain):
    with pytest.raises(ChainError, match="already holds a chain"):
        LocalChain.create(chain.path, netuid=1, block_time=1.0, genesis_seed="x")


@pytest.mark.parametrize("kwargs", [{"block_time": 0}, {"block_time": -1.0}, {"netuid": -1}, {"genesis_seed": ""}])
def test_create_rejects_bad_parameters(tmp_path, kwargs):
    args = {"netuid": 1, "block_time": 1.0, "genesis_seed": "s"} | kwargs
    with pytest.raises(ChainError):
        LocalChain.create(tmp_path / "c.db", **args)


def test_pickles_as_its_path(chain, registered):
    copy = pickle.loads(pickle.dumps(chain))
    assert copy.path == chain.path and copy.neurons() == chain.neurons()
    copy.close()


# --- blocks ---------------------------------------------------------------------------------------------------------


def test_block_hash_is_deterministic_and_well_formed(tmp_path, chain):
    chain.wait_for_block(3)
    twin = LocalChain.create(tmp_path / "twin.db", netuid=7, block_time=BLOCK_TIME, genesis_seed="seed")
    other = LocalChain.create(tmp_path / "other.db", netuid=7, block_time=BLOCK_TIME, genesis_seed="other")
    twin.wait_for_block(3)
    other.wait_for_block(3)
    for b in range(4):
        h = chain.block_hash(b)
        assert re.fullmatch(r"0x[0-9a-f]{64}", h)
        assert h == "0x" + hashlib.sha256(f"seed:{b}".encode()).hexdigest()
        assert h == chain.block_hash(b) == twin.block_hash(b)
        assert h != other.block_hash(b)
    assert len({chain.block_hash(b) for b in range(4)}) == 4


def test_default_genesis_seed_is_random(tmp_path):
    a = LocalChain.create(tmp_path / "a.db", netuid=1, block_time=1.0)
    b = LocalChain.create(tmp_path / "b.db", netuid=1, block_time=1.0)
    assert a.block_hash(0) != b.block_hash(0)


def test_future_blocks_are_refused(chain):
    future = chain.current_block() + 1000
    with pytest.raises(ChainError, match="future"):
        chain.block_hash(future)
    with pytest.raises(ChainError, match="future"):
        chain.block_timestamp(future)
    with pytest.raises(ChainError):
        chain.block_hash(-1)


def test_blocks_advance_with_wall_time(chain):
    start = chain.current_block()
    t0 = time.time()
    time.sleep(6 * BLOCK_TIME)
    elapsed = time.time() - t0
    advanced = chain.current_block() - start
    # Sleeping can overshoot but never undershoot; allow one block of rounding either way.
    assert 5 <= advanced <= elapsed / BLOCK_TIME + 1


def test_block_timestamps_follow_the_schedule(chain):
    now = chain.wait_for_block(5)
    assert chain.block_timestamp(0) == chain.genesis_time
    for b in range(now + 1):
        ts = chain.block_timestamp(b)
        assert ts == pytest.approx(chain.genesis_time + b * BLOCK_TIME)
        assert ts <= time.time()
        assert chain.block_at(ts) == b  # consistent at the exact boundary, despite float division
        assert chain.block_at(ts + BLOCK_TIME / 2) == b


def test_wait_for_block(chain):
    target = chain.current_block() + 3
    reached = chain.wait_for_block(target, timeout=5)
    assert reached >= target and chain.current_block() >= target
    assert time.time() >= chain.block_timestamp(target)
    assert chain.wait_for_block(0) >= target  # a past block returns at once


def test_wait_for_block_times_out(chain):
    t0 = time.monotonic()
    with pytest.raises(ChainTimeout):
        chain.wait_for_block(chain.current_block() + 10_000, timeout=0.1)
    assert time.monotonic() - t0 < 1.0
    assert issubclass(ChainTimeout, ChainError) and issubclass(ChainTimeout, TimeoutError)


# --- registration and commitments ---------------------------------------------------------------------------------


def test_registration_assigns_uids_in_order(chain, registered):
    assert chain.neurons() == [
        Neuron(0, registered[0].ss58_address, 10.0, True),
        Neuron(1, registered[1].ss58_address, 9.0, False),
        Neuron(2, registered[2].ss58_address, 8.0, False),
    ]
    with pytest.raises(ChainError, match="already registered"):
        chain.register(registered[1].ss58_address)
    with pytest.raises(ChainError, match="ss58"):
        chain.register("not-an-address")
    with pytest.raises(ChainError):
        chain.register(kp("x").ss58_address, stake=float("nan"))


def test_commit_and_read_back(chain, registered):
    _, m1, m2 = registered
    assert chain.commitments() == {}
    chain.commit(m1, "bucket-one")
    chain.commit(m2, "bucket-two")
    chain.commit(m1, "bucket-one-v2")
    assert chain.commitments() == {m1.ss58_address: "bucket-one-v2", m2.ss58_address: "bucket-two"}


def test_commit_accepts_a_wallet(chain, registered, tmp_path):
    from bittensor_wallet import Wallet

    wallet = Wallet(name="miner", hotkey="default", path=str(tmp_path / "wallets"))
    wallet.set_hotkey(registered[1], encrypt=False, overwrite=True)
    chain.commit(wallet, "from-wallet")
    assert chain.commitments()[registered[1].ss58_address] == "from-wallet"


def test_unregistered_hotkey_cannot_write(chain, registered):
    stranger = kp("stranger")
    with pytest.raises(ChainError, match="not registered"):
        chain.commit(stranger, "bucket")
    with pytest.raises(ChainError, match="not registered"):
        chain.set_weights(stranger, [0], [1.0])
    assert chain.commitments() == {} and chain.weights() == {}


def test_wallet_without_hotkey_file_is_a_chain_error(chain, registered, tmp_path):
    from bittensor_wallet import Wallet

    with pytest.raises(ChainError, match="cannot read the wallet's hotkey"):
        chain.commit(Wallet(name="nobody", hotkey="none", path=str(tmp_path / "empty")), "bucket")


def test_public_only_key_cannot_sign(chain, registered):
    public = Keypair(ss58_address=registered[1].ss58_address)
    with pytest.raises(ChainError, match="cannot sign"):
        chain.commit(public, "bucket")


def test_commitment_size_limit(chain, registered):
    m1 = registered[1]
    chain.commit(m1, "b" * MAX_COMMITMENT_BYTES)
    assert chain.commitments()[m1.ss58_address] == "b" * MAX_COMMITMENT_BYTES
    with pytest.raises(ChainError, match="at most 128"):
        chain.commit(m1, "b" * (MAX_COMMITMENT_BYTES + 1))
    with pytest.raises(ChainError, match="ASCII"):
        chain.commit(m1, "bücket")
    with pytest.raises(ChainError):
        chain.commit(m1, b"bytes")  # type: ignore[arg-type]
    assert chain.commitments()[m1.ss58_address] == "b" * MAX_COMMITMENT_BYTES


def test_oversized_commitment_in_a_signed_call_is_refused_by_the_chain(chain, registered):
    m1 = registered[1]
    call = SignedCall.build(chain.chain_id, m1, "commit", {"data": "x" * 200}, chain.nonce(m1.ss58_address))
    with pytest.raises(ChainError, match="at most 128"):
        chain.submit(call)


# --- signatures -----------------------------------------------------------------------------------------------------


def test_signed_call_round_trip(chain, registered):
    m1 = registered[1]
    call = SignedCall.build(chain.chain_id, m1, "commit", {"data": "direct"}, chain.nonce(m1.ss58_address))
    block = chain.submit(call)
    assert 0 <= block <= chain.current_block()
    assert chain.commitments()[m1.ss58_address] == "direct"
    assert chain.nonce(m1.ss58_address) == 1


def test_forged_signature_is_rejected(chain, registered):
    _, m1, m2 = registered
    genuine = SignedCall.build(chain.chain_id, m1, "commit", {"data": "mine"}, chain.nonce(m1.ss58_address))
    # m2 signs a message that claims to be m1's.
    forged = SignedCall(m1.ss58_address, genuine.message, m2.sign(genuine.message))
    with pytest.raises(ChainError, match="bad signature"):
        chain.submit(forged)
    # m1's genuine signature on an altered message.
    tampered = SignedCall(m1.ss58_address, genuine.message.replace(b"mine", b"evil"), genuine.signature)
    with pytest.raises(ChainError, match="bad signature"):
        chain.submit(tampered)
    # Garbage signatures and addresses.
    for bad in (b"", b"\x00" * 64, b"\x01" * 3):
        with pytest.raises(ChainError, match="bad signature"):
            chain.submit(SignedCall(m1.ss58_address, genuine.message, bad))
    # A call naming another hotkey than the one that signed it.
    with pytest.raises(ChainError, match="another hotkey"):
        chain.submit(SignedCall(m2.ss58_address, genuine.message, m2.sign(genuine.message)))
    assert chain.commitments() == {}
    chain.submit(genuine)
    assert chain.commitments() == {m1.ss58_address: "mine"}


def test_replayed_call_is_rejected(chain, registered):
    m1 = registered[1]
    first = SignedCall.build(chain.chain_id, m1, "commit", {"data": "old"}, chain.nonce(m1.ss58_address))
    chain.submit(first)
    chain.commit(m1, "new")
    with pytest.raises(ChainError, match="stale nonce"):
        chain.submit(first)  # replaying the old call must not revert the commitment
    assert chain.commitments()[m1.ss58_address] == "new"


def test_call_for_another_chain_is_rejected(tmp_path, chain, registered):
    m1 = registered[1]
    other = LocalChain.create(tmp_path / "other.db", netuid=7, block_time=BLOCK_TIME, genesis_seed="seed")
    other.register(m1.ss58_address)
    call = SignedCall.build(other.chain_id, m1, "commit", {"data": "elsewhere"}, 0)
    with pytest.raises(ChainError, match="another chain"):
        chain.submit(call)


def test_malformed_calls_are_rejected(chain, registered):
    m1 = registered[1]
    for message in (b"not json", b"[]", b'{"op": "commit"}'):
        with pytest.raises(ChainError):
            chain.submit(SignedCall(m1.ss58_address, message, m1.sign(message)))
    with pytest.raises(ChainError, match="unknown call"):
        chain.submit(SignedCall.build(chain.chain_id, m1, "register", {}, 0))


# --- weights --------------------------------------------------------------------------------------------------------


def test_set_weights_and_read_back(chain, registered):
    validator = registered[0]
    chain.set_weights(validator, [1, 2], [1.0, 3.0])
    assert chain.weights() == {0: {1: 0.25, 2: 0.75}}
    chain.set_weights(validator, [0, 1, 2], [0.0, 2.0, 2.0])  # replaces the row; zeros are dropped
    assert chain.weights() == {0: {1: 0.5, 2: 0.5}}


def test_set_weights_needs_a_validator_permit(chain, registered):
    with pytest.raises(ChainError, match="validator permit"):
        chain.set_weights(registered[1], [0], [1.0])


@pytest.mark.parametrize(
    "uids, weights",
    [
        ([1, 2], [1.0]),  # length mismatch
        ([], []),
        ([1, 1], [1.0, 1.0]),  # duplicate
        ([3], [1.0]),  # not registered
        ([-1], [1.0]),
        ([1], [-1.0]),
        ([1], [float("nan")]),
        ([1], [float("inf")]),
        ([1, 2], [0.0, 0.0]),
    ],
)
def test_invalid_weights_are_rejected(chain, registered, uids, weights):
    with pytest.raises(ChainError):
        chain.set_weights(registered[0], uids, weights)
    assert chain.weights() == {}


# --- sharing ------------------------------------------------------------------------------------------------------


def test_threads_share_one_instance(chain, registered):
    """Concurrent writes by one hotkey from many threads (as asyncio.to_thread does) all land, in nonce order."""
    m1 = registered[1]

    def write(i: int) -> None:
        chain.commit(m1, f"v{i}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(40)))
    assert chain.nonce(m1.ss58_address) == 40
    assert chain.commitments()[m1.ss58_address].startswith("v")


_CHILD = textwrap.dedent(
    """
    import sys
    from bittensor_wallet import Keypair
    from mapreduce.chain import LocalChain

    path, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    chain = LocalChain.open(path)
    me = Keypair.create_from_uri("//" + name)
    for i in range(rounds):
        chain.commit(me, f"{name}-{i}")
    if name == "validator":
        chain.set_weights(me, [1, 2], [2.0, 6.0])
    # Report what this process sees, for the parent to compare.
    print(sorted(chain.commitments().items()), chain.weights(), chain.block_hash(0), flush=True)
    """
)


def test_processes_share_one_file(chain, registered):
    """Separate OS processes attach by path and see each other's commitments and weights."""
    rounds = 15
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(chain.path), name, str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in ("validator", "miner-1", "miner-2")
    ]
    # The parent writes concurrently through its own connection.
    for i in range(rounds):
        chain.commit(registered[2], f"parent-{i}")
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outputs.append(out)

    v, m1, m2 = (k.ss58_address for k in registered)
    assert chain.commitments()[v] == f"validator-{rounds - 1}"
    assert chain.commitments()[m1] == f"miner-1-{rounds - 1}"
    assert chain.commitments()[m2] in (f"parent-{rounds - 1}", f"miner-2-{rounds - 1}")
    assert chain.weights() == {0: {1: 0.25, 2: 0.75}}
    assert chain.nonce(v) == rounds + 1 and chain.nonce(m1) == rounds and chain.nonce(m2) == 2 * rounds
    # The validator process, which finished its writes last among its own, saw its own weights; every process
    # derived the same genesis hash from the file.
    assert "{0: {1: 0.25, 2: 0.75}}" in outputs[0]
    assert all(out.strip().endswith(chain.block_hash(0)) for out in outputs)
