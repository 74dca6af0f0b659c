"""Seeds come from final blocks only: a hash near the head may be replaced by a reorg, and two processes that read
it before and after would draw different plans (or samples) for the same window.

The chain here finalizes only up to a block the test sets, and shows a *fork's* hash for every block above it,
as a node does for blocks a reorg is about to replace.
"""
from __future__ import annotations

import asyncio
from hashlib import sha256

from mapreduce import seeds
from mapreduce.chain.stepped import SteppedChain
from mapreduce.network import Network
from mapreduce.plan import make_plan
from mapreduce.wire.signing import Signer


class UnfinalChain(SteppedChain):
    """Final up to ``final``; above it, the hash of a fork that will be replaced."""

    final = 0

    def finalized_block(self) -> int:
        return min(self.final, self.current_block())

    def block_hash(self, block: int) -> str:
        if block > self.final:
            self._check_past(block)
            return "0x" + sha256(f"fork:{block}".encode()).hexdigest()
        return super().block_hash(block)


async def test_plans_and_samples_wait_for_their_block_to_be_final(cluster_factory) -> None:
    c = await cluster_factory(peers=0, miners=3, validators=0, segments=4, store="memory", stepped=True)
    for i in range(3):
        await c.join("miners", i)
    window = await c.next_window()
    phases = c.spec.windows.phases(window)
    assert phases.anchor_block == phases.start_block - 3 == phases.plan_seed_block

    chain = UnfinalChain.attach(c.chain.path, c.chain.current_block(), c.chain.stamps())
    net = Network(c.spec, chain, Signer.from_uri("//final-reader"), c.pool, chain_poll=0.005)
    chain.final = phases.anchor_block - 1
    chain.advance_to(phases.start_block + 1)  # the anchor exists, the window has opened, but it is not final
    plan = asyncio.ensure_future(net.plan(window))
    broadcast = asyncio.ensure_future(net.broadcast_plan(window, "some-sender"))
    await asyncio.sleep(0.2)
    assert not plan.done() and not broadcast.done()
    miners = (await net.directory(window)).miners
    assert len(miners) == 3

    chain.final = phases.anchor_block
    final_hash = chain.block_hash_unchecked(phases.anchor_block)  # what every process sees once it is final
    assert await asyncio.wait_for(plan, 5) == make_plan(c.spec, window, final_hash, miners)
    assert await asyncio.wait_for(broadcast, 5) == make_plan(
        c.spec, window, seeds.broadcast_block("some-sender", final_hash), miners)

    # The hosting checks' sample: the reduce deadline block's hash, once final.
    chain.advance_to(phases.reduce_deadline + 2)
    sample = asyncio.ensure_future(net.sample_seed(window))
    await asyncio.sleep(0.2)
    assert not sample.done()
    chain.final = phases.reduce_deadline
    assert await asyncio.wait_for(sample, 5) == seeds.sample_seed(
        c.spec.run_id, window, chain.block_hash_unchecked(phases.reduce_deadline))


async def test_a_hash_read_before_it_was_final_is_never_kept(cluster_factory) -> None:
    # A process that read a block's hash near the head (for logs, say) must not reuse it as a seed later.
    c = await cluster_factory(peers=0, miners=2, validators=0, segments=2, store="memory", stepped=True)
    chain = UnfinalChain.attach(c.chain.path, 0, c.chain.stamps())
    net = Network(c.spec, chain, Signer.from_uri("//final-reader-2"), c.pool, chain_poll=0.005)
    chain.advance_to(12)
    chain.final = 12
    assert await net.final_block_hash(10) == chain.block_hash_unchecked(10)
    chain.final = 9  # a fresh reader that came up while 10 was not yet final waits, it does not guess
    other = Network(c.spec, chain, Signer.from_uri("//final-reader-3"), c.pool, chain_poll=0.005)
    pending = asyncio.ensure_future(other.final_block_hash(10))
    await asyncio.sleep(0.1)
    assert not pending.done()
    chain.final = 10
    assert await asyncio.wait_for(pending, 5) == chain.block_hash_unchecked(10)
