"""SubtensorChain against the SDK's in-process MockSubtensor, plus its real-chain mapping code on SDK-shaped values.

The real-chain branch through the SDK's own code, down to a scripted substrate interface, is tested in
``tests/chain/test_subtensor_sdk.py``: ``get_current_block``, ``get_block_hash``, ``get_timestamp``,
``metagraph(lite=True)``, ``get_commitment_metadata``/``set_commitment``, ``get_all_commitments``, ``set_weights``
(direct, within the rate limit, commit-reveal, dispatch error, rejected by the pool) and ``weights``.

Not covered by any test, because it needs a real chain (a local subtensor node or testnet):
- the websocket/JSON-RPC transport and SCALE encoding/decoding against real runtime metadata (the SDK tests script
  decoded values and the call parameter names);
- the chain's own rules: commitment rate limit and deposit, weights rate limit, commit-reveal timing and the reveal,
  min allowed weights, validator permits computed from stake, state pruning on lite nodes (``get_timestamp`` of old
  blocks); the SDK tests script their outcomes only;
- the SDK's MEV-shield submission path (taken when ``BT_MEV_PROTECTION`` is set);
- ``from_config`` connecting to a network endpoint.
"""
from __future__ import annotations

import argparse
import re
import threading
import time
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pytest
from bittensor_wallet import Keypair, Wallet

bt = pytest.importorskip("bittensor")
from bittensor.core.types import ExtrinsicResponse  # noqa: E402
from bittensor.utils.mock import MockSubtensor  # noqa: E402

from mapreduce.chain import MAX_COMMITMENT_BYTES, Chain, ChainError, ChainTimeout, Neuron  # noqa: E402
from mapreduce.chain.subtensor import SubtensorChain  # noqa: E402

NETUID = 3


def make_wallet(tmp_path, name: str) -> Wallet:
    wallet = Wallet(name=name, hotkey="default", path=str(tmp_path / "wallets"))
    wallet.set_hotkey(Keypair.create_from_uri(f"//{name}"), encrypt=False, overwrite=True)
    return wallet


def grant_permit(st: MockSubtensor, uid: int) -> None:
    # MockSubtensor has no call for this; write its state the way its neurons() reads it.
    st.chain_state["SubtensorModule"]["ValidatorPermit"][NETUID][uid][st.block_number] = True


@pytest.fixture
def st():
    MockSubtensor.reset()  # its state is process-wide
    sub = MockSubtensor()
    sub.create_subnet(NETUID)
    yield sub
    MockSubtensor.reset()


@pytest.fixture
def wallets(tmp_path, st):
    """uid 0: validator (permit), uids 1, 2: miners."""
    ws = [make_wallet(tmp_path, n) for n in ("validator", "miner1", "miner2")]
    owner = Keypair.create_from_uri("//owner").ss58_address
    for i, w in enumerate(ws):
        assert st.force_register_neuron(NETUID, w.hotkey.ss58_address, owner, stake=float(10 - i)) == i
    grant_permit(st, 0)
    st.do_block_step()
    return ws


@pytest.fixture
def chain(st):
    return SubtensorChain(st, NETUID, poll_interval=0.01)


def test_blocks_follow_the_mock(chain, st):
    assert isinstance(chain, Chain)
    start = chain.current_block()
    st.do_block_step()
    st.do_block_step()
    assert chain.current_block() == start + 2
    h = chain.block_hash(start + 1)
    assert re.fullmatch(r"0x[0-9a-f]{64}", h)
    assert h == chain.block_hash(start + 1) != chain.block_hash(start)
    with pytest.raises(ChainError, match="future"):
        chain.block_hash(start + 3)
    with pytest.raises(ChainError):
        chain.block_hash(-1)


def test_block_timestamps_on_the_mock(chain, st):
    for _ in range(3):
        st.do_block_step()
    stamps = [chain.block_timestamp(b) for b in range(4)]
    assert np.allclose(np.diff(stamps), 12.0)  # the mock has no clock: nominal BLOCKTIME spacing
    assert abs(stamps[-1] - time.time()) < 60
    # Another adapter on the same mock agrees.
    assert SubtensorChain(st, NETUID).block_timestamp(2) == stamps[2]
    with pytest.raises(ChainError, match="future"):
        chain.block_timestamp(4)


def test_neurons(chain, wallets):
    assert chain.neurons() == [
        Neuron(0, wallets[0].hotkey.ss58_address, 10.0, True),
        Neuron(1, wallets[1].hotkey.ss58_address, 9.0, False),
        Neuron(2, wallets[2].hotkey.ss58_address, 8.0, False),
    ]


def test_missing_subnet_is_a_chain_error(st):
    with pytest.raises(ChainError, match="does not exist"):
        SubtensorChain(st, 99).neurons()


def test_commit_and_read_back(chain, st, wallets):
    _, m1, m2 = wallets
    assert chain.commitments() == {}
    chain.commit(m1, "bucket-one")
    st.do_block_step()
    chain.commit(m2, "bucket-two")
    st.do_block_step()
    chain.commit(m1, "bucket-one-v2")
    chain.commit(m2, "bucket-two-v2")  # twice in one block: the later wins
    chain.commit(m2, "bucket-two-v3")
    assert chain.commitments() == {m1.hotkey.ss58_address: "bucket-one-v2", m2.hotkey.ss58_address: "bucket-two-v3"}


def test_commit_checks(chain, tmp_path, wallets):
    m1 = wallets[1]
    chain.commit(m1, "x" * MAX_COMMITMENT_BYTES)
    with pytest.raises(ChainError, match="at most 128"):
        chain.commit(m1, "x" * (MAX_COMMITMENT_BYTES + 1))
    with pytest.raises(ChainError, match="ASCII"):
        chain.commit(m1, "bücket")
    with pytest.raises(ChainError, match="not registered"):
        chain.commit(make_wallet(tmp_path, "stranger"), "bucket")
    with pytest.raises(ChainError, match="Wallet, not a Keypair"):
        chain.commit(Keypair.create_from_uri("//miner1"), "bucket")
    assert chain.commitments() == {m1.hotkey.ss58_address: "x" * MAX_COMMITMENT_BYTES}


def test_set_weights_and_read_back(chain, st, wallets):
    validator = wallets[0]
    chain.set_weights(validator, [1, 2], [0.25, 0.75])
    got = chain.weights()
    assert list(got) == [0] and list(got[0]) == [1, 2]
    # On chain weights are u16, max-normalised: exact up to 1/65535.
    assert got[0][1] == pytest.approx(0.25, abs=1e-4) and got[0][2] == pytest.approx(0.75, abs=1e-4)
    st.do_block_step()
    chain.set_weights(validator, [0, 1, 2], [0.0, 1.0, 1.0])
    assert chain.weights()[0] == pytest.approx({1: 0.5, 2: 0.5}, abs=1e-4)


def test_set_weights_checks(chain, tmp_path, wallets):
    validator, m1, _ = wallets
    with pytest.raises(ChainError, match="validator permit"):
        chain.set_weights(m1, [0], [1.0])
    with pytest.raises(ChainError, match="not registered"):
        chain.set_weights(make_wallet(tmp_path, "stranger"), [0], [1.0])
    with pytest.raises(ChainError, match="uid 7 is not registered"):
        chain.set_weights(validator, [7], [1.0])
    for uids, weights in (([1, 2], [1.0]), ([1], [-1.0]), ([1], [float("nan")]), ([1, 2], [0.0, 0.0])):
        with pytest.raises(ChainError):
            chain.set_weights(validator, uids, weights)
    assert chain.weights() == {}


def test_wait_for_block(chain, st):
    target = chain.current_block() + 3

    def produce() -> None:
        for _ in range(3):
            time.sleep(0.02)
            st.do_block_step()

    producer = threading.Thread(target=produce)
    producer.start()
    assert chain.wait_for_block(target, timeout=10) == target
    producer.join()
    with pytest.raises(ChainTimeout):
        chain.wait_for_block(target + 1, timeout=0.05)


@pytest.mark.parametrize("kind", ["namespace", "bittensor-config"])
def test_from_config_with_mock(kind, monkeypatch):
    parser = argparse.ArgumentParser()
    SubtensorChain.add_args(parser)
    SubtensorChain.add_args(parser)  # adding twice is harmless
    args = ["--subtensor._mock", "1", "--netuid", "5"]
    if kind == "namespace":
        config = parser.parse_args(args)
    else:
        monkeypatch.setenv("BT_NO_PARSE_CLI_ARGS", "false")  # bittensor.Config ignores args unless told
        config = bt.Config(parser, args=args)
    chain = SubtensorChain.from_config(config, poll_interval=0.5)
    assert isinstance(chain.subtensor, MockSubtensor)
    assert chain.netuid == 5 and chain.poll_interval == 0.5


def test_from_config_needs_a_netuid():
    with pytest.raises(ChainError, match="netuid"):
        SubtensorChain.from_config(argparse.Namespace(**{"subtensor._mock": True}))


# --- the real-chain branch, on values shaped like the SDK's ----------------------------------------------------------


class SdkShaped:
    """Returns what bittensor 10.5.0's Subtensor returns, to test the adapter's mapping (not the SDK)."""

    def __init__(self) -> None:
        self.block = 100
        self.committed: dict[str, str] = {}
        self.sent: list = []
        self.fail_with: ExtrinsicResponse | None = None
        self.read_at: list = []  # the block= of each metagraph / get_all_commitments read

    def get_current_block(self):
        return self.block

    def get_block_hash(self, block):
        return "0x" + f"{block:064x}".upper()  # upper case on purpose: the adapter normalises

    def get_timestamp(self, block):
        return datetime.fromtimestamp(1_700_000_000 + 12 * block, tz=timezone.utc)

    def metagraph(self, netuid, lite=True, block=None):
        self.read_at.append(("metagraph", block))
        return SimpleNamespace(
            uids=np.array([1, 0]),
            hotkeys=["hk1", "hk0"],
            S=np.array([2.5, 1.0], dtype=np.float32),
            validator_permit=np.array([False, True]),
        )

    def get_commitment_metadata(self, netuid, hotkey):
        data = self.committed.get(hotkey)
        if not data:
            return ""  # what the SDK returns for "no commitment"
        return {"deposit": 0, "block": 1, "info": {"fields": [{f"Raw{len(data)}": "0x" + data.encode().hex()}]}}

    def set_commitment(self, wallet, netuid, data, **kw):
        self.sent.append(("commit", data, kw))
        if self.fail_with:
            return self.fail_with
        self.committed[wallet.hotkey.ss58_address] = data
        return ExtrinsicResponse(True, "ok")

    def get_all_commitments(self, netuid, block=None):
        self.read_at.append(("get_all_commitments", block))
        return dict(self.committed)

    def set_weights(self, wallet, netuid, uids, weights, **kw):
        self.sent.append(("weights", uids, weights, kw))
        return self.fail_with or ExtrinsicResponse(True, "ok")

    def weights(self, netuid):
        return [(0, [(1, 65535), (2, 21845)]), (1, []), (SimpleNamespace(value=2), [(SimpleNamespace(value=0), 100)])]

    rate_limit: int | None = 100
    last_update: dict[int, int] = {}

    def weights_rate_limit(self, netuid):
        return self.rate_limit

    def blocks_since_last_update(self, netuid, uid):
        return None if uid not in self.last_update else self.block - self.last_update[uid]


def test_real_branch_mapping(tmp_path):
    sdk = SdkShaped()
    chain = SubtensorChain(sdk, NETUID)  # type: ignore[arg-type]
    assert chain.block_hash(5) == "0x" + f"{5:064x}"
    assert chain.block_timestamp(5) == 1_700_000_060.0
    with pytest.raises(ChainError, match="future"):
        chain.block_timestamp(101)
    assert chain.neurons() == [Neuron(0, "hk0", 1.0, True), Neuron(1, "hk1", 2.5, False)]
    assert chain.weights() == {0: pytest.approx({1: 0.75, 2: 0.25}, abs=1e-4), 2: {0: 1.0}}

    wallet = make_wallet(tmp_path, "miner1")
    chain.commit(wallet, "bucket")
    chain.commit(wallet, "bucket")  # unchanged: not sent again
    assert [s[1] for s in sdk.sent] == ["bucket"]
    assert sdk.sent[0][2]["wait_for_inclusion"] is True
    assert chain.commitments() == {wallet.hotkey.ss58_address: "bucket"}
    # a window's directory is read as of its first block: the block goes to the SDK as is
    chain.neurons(42), chain.commitments(42)
    assert sdk.read_at[-2:] == [("metagraph", 42), ("get_all_commitments", 42)]
    assert ("metagraph", None) in sdk.read_at  # and the head when no block is given

    chain.set_weights(wallet, [0, 1], [1, 3], version_key=7)
    assert sdk.sent[-1][1:3] == ([0, 1], [1.0, 3.0])
    assert sdk.sent[-1][3]["max_attempts"] == 1  # one attempt: the SDK's retries would hold the connection
    assert sdk.sent[-1][3]["version_key"] == 7  # the run spec's, not the SDK's own version number

    sdk.last_update = {0: 70}  # rate limit 100 blocks, last update 30 blocks ago
    assert chain.weights_wait(0) == 70 and chain.weights_wait(1) == 0  # uid 1: the SDK knows no update
    sdk.last_update = {0: 0}
    assert chain.weights_wait(0) == 0

    sdk.fail_with = ExtrinsicResponse(False, "CommitmentSetRateLimitExceeded")
    with pytest.raises(ChainError, match="CommitmentSetRateLimitExceeded"):
        chain.commit(wallet, "another-bucket")
    sdk.fail_with = ExtrinsicResponse(False)
    with pytest.raises(ChainError, match="weights_rate_limit"):
        chain.set_weights(wallet, [0], [1.0])


def test_sdk_exceptions_become_chain_errors_after_the_read_attempts():
    sdk = SdkShaped()
    calls = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) <= 2:
            raise ConnectionError("websocket closed")
        return 100

    sdk.get_current_block = flaky  # type: ignore[method-assign]
    chain = SubtensorChain(sdk, NETUID, read_backoff=0.01)  # type: ignore[arg-type]
    assert chain.current_block() == 100 and len(calls) == 3  # a transient failure is retried
    sdk.get_current_block = lambda: (_ for _ in ()).throw(ConnectionError("websocket closed"))  # type: ignore
    with pytest.raises(ChainError, match=r"websocket closed") as e:
        chain.current_block()
    assert "3 attempt(s)" in str(e.value)


def test_writes_go_through_their_own_connection(tmp_path):
    """A write waiting for inclusion holds its connection for a block or more; reads must go on meanwhile."""
    reader, writer = SdkShaped(), SdkShaped()
    inside, release = threading.Event(), threading.Event()
    plain_set_weights = writer.set_weights

    def slow_set_weights(*args, **kw):
        inside.set()
        release.wait(10)
        return plain_set_weights(*args, **kw)

    writer.set_weights = slow_set_weights  # type: ignore[method-assign]
    opened = []
    chain = SubtensorChain(reader, NETUID, connect_writer=lambda: opened.append(writer) or writer)  # type: ignore
    wallet = make_wallet(tmp_path, "validator")
    write = threading.Thread(target=chain.set_weights, args=(wallet, [0], [1.0]))
    write.start()
    try:
        assert inside.wait(5)
        read = threading.Thread(target=chain.current_block)
        read.start()
        read.join(2)
        assert not read.is_alive()  # the read did not wait behind the write
    finally:
        release.set()
        write.join(5)
    chain.commit(wallet, "bucket")  # the commitment check reads on the reader, the write goes to the writer
    assert opened == [writer]  # opened once, on the first write
    assert [s[0] for s in writer.sent] == ["weights", "commit"] and reader.sent == []
