"""A chain that cannot be read for a moment (a node restarting, a dropped connection) is waited out: no role
ends for it."""
from __future__ import annotations

import asyncio

from mapreduce.chain.base import ChainError
from mapreduce.chain.stepped import SteppedChain
from mapreduce.network import Network
from mapreduce.trust import standing_line
from mapreduce.wire.signing import Signer


class Outage(SteppedChain):
    """Every read fails while ``down``."""

    down = False

    def current_block(self) -> int:
        if self.down:
            raise ChainError("current_block failed (3 attempt(s)): ConnectionError: websocket closed")
        return super().current_block()

    def neurons(self, block=None):
        if self.down:
            raise ChainError("metagraph failed (3 attempt(s)): ConnectionError: websocket closed")
        return super().neurons(block)


async def test_waiting_for_a_block_outlasts_an_outage(cluster_factory, caplog) -> None:
    c = await cluster_factory(peers=0, miners=1, validators=0, segments=1, store="memory", stepped=True)
    chain = Outage.attach(c.chain.path, 0, c.chain.stamps())
    net = Network(c.spec, chain, Signer.from_uri("//outage"), c.pool, chain_poll=0.005)
    chain.down = True
    waiting = asyncio.ensure_future(net.wait_for_block(3))
    with caplog.at_level("WARNING", logger="mapreduce.network"):
        await asyncio.sleep(1.5)
    assert not waiting.done()
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 1  # once per outage, not per poll
    chain.down = False
    chain.advance_to(3)
    assert await asyncio.wait_for(waiting, 5) == 3

    chain.down = True  # a seed waits for its block to be final through an outage too
    seed = asyncio.ensure_future(net.final_block_hash(5))
    await asyncio.sleep(1.2)
    assert not seed.done()
    chain.down = False
    chain.advance_to(6)
    assert await asyncio.wait_for(seed, 5) == chain.block_hash(5)

    chain.down = True  # a miner's standing line during an outage: a line saying so, not an exception
    line = await standing_line(net, 1)
    assert "standing unknown (chain unreadable" in line
