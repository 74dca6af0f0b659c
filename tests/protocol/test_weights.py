"""Setting weights never stalls anything: one attempt when due, only with a validator permit, and by default no
more often than the chain's default weights rate limit allows."""
from __future__ import annotations

import asyncio

from mapreduce.directory import BucketLocation
from mapreduce.miner import Miner
from mapreduce.peer import Peer
from mapreduce.scoring import WEIGHTS_RATE_LIMIT_BLOCKS, ScoringConfig, weights_every_windows
from mapreduce.validator import Validator, ValidatorConfig
from mapreduce.wire.signing import Signer
from tests.support.cluster import PUBLIC_KEYS, peer_gradients


def test_the_default_cadence_spans_the_chain_rate_limit() -> None:
    for blocks_per_window in (5, 10, 16, 100, 360):
        every = weights_every_windows(ScoringConfig(), blocks_per_window)
        assert every * blocks_per_window > WEIGHTS_RATE_LIMIT_BLOCKS
        assert (every - 1) * blocks_per_window <= WEIGHTS_RATE_LIMIT_BLOCKS  # and not needlessly rarer
    assert weights_every_windows(ScoringConfig(weights_every=2), 10) == 2


async def test_a_validator_without_a_permit_does_not_try(cluster_factory, tmp_path, caplog) -> None:
    c = await cluster_factory(peers=3, miners=2, validators=0, numel=40_000, segments=2, store="memory",
                              stepped=True)
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(3)]
    miners = [Miner(await c.join("miners", i), c.bucket_of("miners", i)) for i in range(2)]
    signer = Signer.from_uri(f"//{c.spec.run_id}/no-permit")
    c.chain.register(signer.hotkey, stake=100.0, validator_permit=False)  # registered and staked, no permit
    vnet = c.network(signer)
    bucket = f"{c.spec.run_id}-no-permit"
    await (await vnet.pool.own_store()).create_bucket(bucket)
    await vnet.commit(BucketLocation("validator", bucket, c.s3_endpoint, *PUBLIC_KEYS))
    validator = Validator(vnet, bucket, tmp_path / "v.json", ValidatorConfig(scoring=ScoringConfig(weights_every=1)))
    window = await c.next_window()
    grads = peer_gradients(c.spec, 3)
    with caplog.at_level("WARNING", logger="mapreduce.validator"):
        results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                       *(m.run_window(window) for m in miners), validator.validate_window(window),
                                       c.drive(window, validator=True))
    report = results[5]
    assert report.scores and not report.weights_set  # it judged the miners, and set no weights
    assert c.chain.weights() == {}
    assert any("no validator permit" in r.getMessage() for r in caplog.records)
