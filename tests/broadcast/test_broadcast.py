"""Broadcast through the miners' buckets, on the embedded S3 server and a local chain: exact delivery, the
sender's cost, egress spread over the miners, and fallback to a replica when a copy is missing or bad."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter

import pytest
import torch

from mapreduce.wire import keys
from mapreduce.broadcast import Broadcaster
from mapreduce.wire.codec import ObjectMeta, encode
from mapreduce.errors import BroadcastFailed
from mapreduce.network import Network
from mapreduce.spec import TensorSpec
from mapreduce.trust import order_replicas
from mapreduce.windows import WindowConfig

MiB = 1 << 20


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (torch.equal would call -0.0 and 0.0 equal)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


async def join(c, peers: int, miners: int) -> list[Broadcaster]:
    nets = [await c.join("peers", i) for i in range(peers)]
    for i in range(miners):
        await c.join("miners", i)
    return [Broadcaster(n, c.bucket_of("peers", i)) for i, n in enumerate(nets)]


async def test_64_mib_from_one_peer_to_four(cluster_factory, capsys) -> None:
    # 16,777,220 fp32 elements: 64 MiB and 16 bytes. 8 segments of 8 MiB, each on 2 of 4 miners. Generous phases:
    # the broadcast uses the window that is open now, and receivers do not wait for its deadline.
    c = await cluster_factory(peers=5, miners=4, validators=0, block_time=0.25, numel=16_777_220, segments=8,
                              redundancy=2, windows=WindowConfig(160, 120, 20))
    casters = await join(c, peers=5, miners=4)
    sender, receivers = casters[0], casters[1:]
    weights = {"w": torch.randn(1_677_722, 10, generator=torch.Generator().manual_seed(7))}
    weights["w"][0, :3] = torch.tensor([-0.0, 1e-40, -3.4e38])  # signed zero, a subnormal, a large value
    size = weights["w"].numel() * 4
    assert size >= 64 * MiB

    window = await sender.next_window()
    started = time.monotonic()
    results = await asyncio.gather(sender.broadcast(weights, window=window),
                                   *(r.receive(window, sender.hotkey) for r in receivers))
    seconds = time.monotonic() - started
    receipt, got = results[0], results[1:]

    for r in got:
        assert same_bits(r.tensors["w"], weights["w"])
        assert not r.fallbacks and not r.rejected
        assert r.bytes_downloaded <= 1.01 * size  # each receiver downloads about one copy
    assert receipt.on_time and receipt.tensor_bytes == size and receipt.replicas == 2
    per_replica = receipt.bytes_uploaded / receipt.replicas / size
    served = Counter(s.miner for r in got for s in r.sources)
    with capsys.disabled():
        print(f"\n  broadcast of {size:,} B (64 MiB) from 1 peer to 4 in {seconds:.1f}s: sender uploaded "
              f"{receipt.bytes_uploaded:,} B = {per_replica:.4f}x the tensor per replica (redundancy 2); receivers "
              f"downloaded {sum(r.bytes_downloaded for r in got):,} B, served by {len(served)} miners "
              f"({', '.join(str(n) for n in sorted(served.values()))} segments each)")
    assert 1.0 < per_replica <= 1.1
    # the receivers' downloads come from every miner's bucket, not from the sender's nor from one miner
    assert set(served) == {s.hotkey for s in c.signers["miners"]}


async def test_receivers_fall_back_when_a_copy_is_missing_or_bad(cluster_factory) -> None:
    c = await cluster_factory(peers=3, miners=3, validators=0, block_time=0.2, numel=600_000, segments=6,
                              windows=WindowConfig(40, 30, 5))
    casters = await join(c, peers=3, miners=3)
    sender, first, second = casters
    weights = {"w": torch.randn(60_000, 10)}
    window = await sender.next_window()
    receipt = await sender.broadcast(weights, window=window)
    plan = await sender.net.broadcast_plan(window, sender.hotkey)
    run = c.spec.run_id
    other = c.signers["peers"][2]

    # Spoil, for each segment, the copy the first receiver would try first, each in a different way.
    async def copy_at(segment: int) -> tuple:
        miner = order_replicas(receipt.stored_at[segment], {}, first.hotkey, segment)[0]
        bucket = await sender.net.bucket(window, miner)
        key = str(keys.broadcast_key(run, window, segment, sender.hotkey, receipt.tags[segment][miner]))
        return bucket, key

    def signed(segment: int, signer, values: torch.Tensor) -> memoryview:
        meta = ObjectMeta(run, window, "bcast", signer.hotkey, segment)
        return encode(meta, {"data": values}, signer).data

    seg = plan.segments
    b, k = await copy_at(0)
    await b.store.delete(b.name, k)                                                      # missing
    b, k = await copy_at(1)
    data = bytearray(await b.store.get(b.name, k))
    data[-seg[1].numel * 4 // 2] ^= 1                                                    # one bit flipped
    await b.store.put(b.name, k, data)
    b, k = await copy_at(2)
    await b.store.put(b.name, k, bytes(await b.store.get(b.name, k))[:100_000])          # truncated
    b, k = await copy_at(3)
    await b.store.put(b.name, k, signed(3, other, torch.zeros(seg[3].numel)))            # someone else's object
    b, k = await copy_at(4)
    await b.store.put(b.name, k, signed(4, sender.net.signer, torch.ones(seg[4].numel)))  # signed, not recorded
    b, k = await copy_at(5)
    await b.store.put(b.name, k, b"\x80\x04" + b"\x00" * 1000)                            # a pickle

    one, two = await asyncio.gather(first.receive(window, sender.hotkey), second.receive(window, sender.hotkey))
    for r in (one, two):
        assert same_bits(r.tensors["w"], weights["w"])
    assert [s.refused for s in one.sources] == [1] * 6  # every segment came from its second replica
    assert one.rejected == Counter(missing=1, hash_mismatch=2, truncated=1, key_mismatch=1, pickle=1)

    # With the other replica of segment 0 gone too, nobody can receive it: a clear error, refusals counted.
    for miner in receipt.stored_at[0]:
        bucket = await sender.net.bucket(window, miner)
        await bucket.store.delete(bucket.name, str(keys.broadcast_key(run, window, 0, sender.hotkey,
                                                                      receipt.tags[0][miner])))
    with pytest.raises(BroadcastFailed, match=r"no valid copy of segments \[0\]") as e:
        await second.receive(window, sender.hotkey)
    assert e.value.rejected["missing"] == 2


async def test_a_receiver_is_told_plainly_what_is_wrong(cluster_factory) -> None:
    # an upload phase of 3 s: the broadcast lands in it even on a loaded machine; "missing" waits it out
    c = await cluster_factory(peers=3, miners=2, validators=0, block_time=0.2, numel=20_000, segments=2,
                              windows=WindowConfig(25, 15, 5))
    casters = await join(c, peers=3, miners=2)
    sender, receiver, silent = casters
    window = await sender.next_window()
    await sender.broadcast({"w": torch.randn(2_000, 10)}, window=window)

    # A peer that sent nothing: after the upload deadline, "missing".
    with pytest.raises(BroadcastFailed, match="wrote no broadcast record") as e:
        await receiver.receive(window, silent.hotkey)
    assert e.value.rejected == {"missing": 1}

    # A receiver whose run spec has other tensors (same run, same segments): the record's fingerprint differs.
    other_spec = dataclasses.replace(c.spec, tensors=(TensorSpec("w", (1_000, 20)),))
    other = Broadcaster(Network(other_spec, c.chain, receiver.net.signer, c.pool, chain_poll=0.02),
                        c.bucket_of("peers", 1))
    with pytest.raises(BroadcastFailed, match="other tensors") as e:
        await other.receive(window, sender.hotkey)
    assert e.value.rejected == {"shape_mismatch": 1}

    # A sender too late for the window: refused before anything is uploaded.
    with pytest.raises(BroadcastFailed, match="upload phase is over"):
        await silent.broadcast({"w": torch.randn(2_000, 10)}, window=window)
    # NaN is never shipped.
    nan = torch.randn(2_000, 10)
    nan[5, 5] = float("nan")
    with pytest.raises(Exception, match="NaN"):
        await silent.broadcast({"w": nan}, window=window + 1)
