"""Class 11: reports are signed by the validator's hotkey and verified by every reader.

A validator's report bucket that a stranger can write (a misconfigured policy) must not let the stranger forge
standing: a report that is not signed by the validator is refused, and the miner it praises gains nothing.
"""
from __future__ import annotations

from mapreduce.trust import trusted_scores

from . import attacks


async def test_an_unsigned_report_forges_no_standing(cluster_factory, hostile) -> None:
    c = await cluster_factory(peers=1, miners=2, validators=1, numel=40_000, segments=2, stepped=True)
    miner = await c.join("miners", 0)
    favourite = await c.join("miners", 1)
    vnet = await c.join("validators", 0)
    window = await c.next_window()
    c.chain.advance_to(c.spec.windows.phases(window).start_block)
    forged = attacks.forged_report(vnet.hotkey, window - 1, favourite.hotkey).encode()
    # a stranger writes straight into the validator's bucket (as a misconfigured writable bucket would let it)
    await attacks.put_raw(miner, vnet.hotkey, window, attacks.report_key(c.spec.run_id, window - 1, vnet.hotkey),
                          forged)
    seen = await trusted_scores(miner, window)
    assert favourite.hotkey not in seen.scores, seen
    assert not seen.validators and sum(seen.excluded.values()) == 1, seen
    hostile("unsigned report", "a stranger wrote a report praising one miner into a validator's writable bucket",
            "miners and peers refuse it: the validator's signature is missing", ", ".join(seen.excluded))
