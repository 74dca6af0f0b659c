"""Setting weights never stalls anything: one attempt when due, only with a validator permit, only when the chain's
weights rate limit allows it (read from the chain), with the run spec's version key."""
from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from mapreduce.chain.base import ChainError
from mapreduce.chain.stepped import SteppedChain
from mapreduce.directory import BucketLocation
from mapreduce.miner import Miner
from mapreduce.peer import Peer
from mapreduce.scoring import ScoringConfig
from mapreduce.validator import Validator, ValidatorConfig
from mapreduce.wire.signing import Signer
from tests.support.cluster import PUBLIC_KEYS, peer_gradients


def test_the_local_chain_keeps_the_rate_limit_and_the_version_as_subtensor_does(tmp_path) -> None:
    chain = SteppedChain.create(tmp_path / "c.sqlite", netuid=1)
    v = Signer.from_uri("//weights/v")
    uid = chain.register(v.hotkey, stake=10.0, validator_permit=True)
    chain.set_hyperparameters(weights_rate_limit=5, weights_version=7)
    with pytest.raises(ChainError, match="IncorrectWeightVersionKey"):
        chain.set_weights(v.keypair, [uid], [1.0], version_key=6)
    assert chain.weights_wait(uid) == 0  # never set: nothing to wait for
    chain.advance_to(10)
    chain.set_weights(v.keypair, [uid], [1.0], version_key=7)
    chain.advance_to(13)
    assert chain.weights_wait(uid) == 2
    with pytest.raises(ChainError, match="SettingWeightsTooFast"):
        chain.set_weights(v.keypair, [uid], [1.0], version_key=7)
    chain.advance_to(15)
    assert chain.weights_wait(uid) == 0
    chain.set_weights(v.keypair, [uid], [1.0], version_key=8)  # a newer version is accepted too


def test_the_version_key_comes_from_the_run_spec_and_is_checked() -> None:
    from mapreduce.spec import RunSpec, TensorSpec

    spec = RunSpec("r", (TensorSpec("a", (8,)),), 2, weights_version=10_005_000)
    assert RunSpec.from_json(spec.to_json()).weights_version == 10_005_000
    old = json.loads(spec.to_json())
    del old["weights_version"]
    assert RunSpec.from_json(json.dumps(old)).weights_version == 0  # specs written before it still load
    for bad in (-1, 2 ** 64, 1.5, True, "7"):
        with pytest.raises(ValueError, match="weights_version"):
            RunSpec("r", (TensorSpec("a", (8,)),), 2, weights_version=bad)


async def test_a_validator_waits_out_the_rate_limit_without_trying(cluster_factory, tmp_path, caplog) -> None:
    c = await cluster_factory(peers=0, miners=2, validators=1, segments=2, store="memory", stepped=True)
    c.spec = dataclasses.replace(c.spec, weights_version=3)
    miners = [await c.join("miners", i) for i in range(2)]
    vnet = c.network(c.signers["validators"][0])
    validator = Validator(vnet, c.bucket_of("validators", 0), tmp_path / "v.json")
    assert validator.config.scoring.weights_every == 1  # by default as often as the chain allows
    validator.board.ema = {m.hotkey: 0.5 for m in miners}
    c.chain.set_hyperparameters(weights_rate_limit=25, weights_version=3)
    window = await c.next_window()
    c.chain.advance_to(c.spec.windows.phases(window).start_block)
    vuid = next(n.uid for n in c.chain.neurons() if n.hotkey == vnet.hotkey)

    assert await validator._set_weights(window)  # with the spec's version key, which the chain requires
    assert set(c.chain.weights()[vuid]) == {n.uid for n in c.chain.neurons() if n.hotkey in validator.board.ema}
    c.chain.advance_to(c.chain.current_block() + 16)
    with caplog.at_level("INFO", logger="mapreduce.validator"):
        assert not await validator._set_weights(window + 1)
    assert any("allows it in 9 block(s)" in r.getMessage() for r in caplog.records)
    assert not any(r.levelname == "ERROR" for r in caplog.records)  # not tried: nothing was refused
    c.chain.advance_to(c.chain.current_block() + 9)
    assert await validator._set_weights(window + 2)


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
