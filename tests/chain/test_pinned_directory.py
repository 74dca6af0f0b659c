"""Chain state pinned to a block: every process computes the same plan for a window, whenever it asks.

A miner that registers and commits in the middle of window w changes no process's directory or plan for w (one
computed before it joined, one computed after by a process that starts late) and takes part from window w + 1.
"""
from __future__ import annotations

from mapreduce.directory import BucketLocation
from mapreduce.wire.signing import Signer
from tests.support.cluster import PUBLIC_KEYS


async def test_a_miner_joining_mid_window_changes_no_plan_of_that_window(cluster_factory) -> None:
    c = await cluster_factory(peers=2, miners=2, validators=0, segments=4, store="memory", stepped=True)
    for i in range(2):
        await c.join("peers", i)
        await c.join("miners", i)
    early = c.network(Signer.from_uri("//early-reader"))
    window = await c.next_window()
    phases = c.spec.windows.phases(window)
    c.chain.advance_to(phases.start_block + 2)  # window w is running
    before = await early.plan(window)
    assert len(before.miners) == 2

    newcomer = Signer.from_uri(f"//{c.spec.run_id}/late-miner")
    c.chain.register(newcomer.hotkey)  # mid-window
    net = c.network(newcomer)
    bucket = f"{c.spec.run_id}-late-miner"
    await (await net.pool.own_store()).create_bucket(bucket)
    await net.commit(BucketLocation("miner", bucket, c.s3_endpoint, *PUBLIC_KEYS))
    assert newcomer.hotkey in c.chain.commitments()  # on chain now

    late = c.network(Signer.from_uri("//late-reader"))  # a process that first asks after the newcomer joined
    after = await late.plan(window)
    assert after.miners == before.miners and after == before
    assert newcomer.hotkey not in (await late.directory(window)).miners

    c.chain.advance_to(c.spec.windows.phases(window + 1).start_block)
    assert newcomer.hotkey in (await late.plan(window + 1)).miners
    assert newcomer.hotkey in (await early.plan(window + 1)).miners


def test_local_chain_reads_commitments_and_neurons_as_of_a_block(tmp_path) -> None:
    from mapreduce.chain.stepped import SteppedChain

    chain = SteppedChain.create(tmp_path / "c.sqlite", netuid=1)
    a, b = Signer.from_uri("//pin-a"), Signer.from_uri("//pin-b")
    chain.register(a.hotkey)
    chain.advance_to(3)
    chain.commit(a.keypair, "first")  # submitted while block 3 is the head: lands in block 4
    chain.advance_to(5)
    chain.register(b.hotkey)  # counts from block 6
    chain.commit(a.keypair, "second")  # lands in block 6
    chain.advance_to(7)
    assert chain.commitments(3) == {} and chain.commitments(4) == {a.hotkey: "first"}
    assert chain.commitments(5) == {a.hotkey: "first"} and chain.commitments(6) == {a.hotkey: "second"}
    assert chain.commitments() == {a.hotkey: "second"}
    assert [n.hotkey for n in chain.neurons(5)] == [a.hotkey]
    assert [n.hotkey for n in chain.neurons(6)] == [a.hotkey, b.hotkey] == [n.hotkey for n in chain.neurons()]
