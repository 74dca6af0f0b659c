"""Dishonest miners and peers for the adversary suite: real codec, real keys, real buckets; each cheats one way."""
from __future__ import annotations

import asyncio
import json
from collections import Counter

import torch

from mapreduce import keys
from mapreduce.codec import ObjectMeta, decode, encode
from mapreduce.inputs import fetch_input, list_inputs
from mapreduce.miner import Miner, Produced
from mapreduce.network import Bucket
from mapreduce.plan import Segment
from mapreduce.proof import proof_rows, proof_salt
from mapreduce.reduce import Accumulator
from storage import NotFound


class AdversarialMiner(Miner):
    """``behaviour`` is one of :data:`MINER_BEHAVIOURS`."""

    def __init__(self, *args, behaviour: str, victim_hotkeys: list[str] | None = None, **kw):
        super().__init__(*args, **kw)
        self.behaviour = behaviour
        self.victims = victim_hotkeys or []  # honest miners a copier copies from; peers an omitter leaves out
        self.overwrites: list[asyncio.Task] = []

    async def produce(self, window: int, seg: Segment, bucket: Bucket, deadline: float,
                      rejected: Counter) -> Produced | None:
        b = self.behaviour
        if b == "copies":
            return await self._copy(window, seg)
        if b == "omits_one_peer":
            return await self._reduce(window, seg, bucket, deadline, rejected, skip_first=True)
        if b == "omits_victims":  # leaves the victims' inputs out as if they were late
            return await self._reduce(window, seg, bucket, deadline, rejected, skip=set(self.victims))
        if b == "forges_input":
            return await self._forge(window, seg, bucket, deadline, rejected)
        produced = await super().produce(window, seg, bucket, deadline, rejected)
        if produced is None:
            return None
        if b == "zeros":
            produced.mean = torch.zeros_like(produced.mean)
        elif b == "noise":
            produced.mean = torch.randn(produced.mean.shape).to(produced.mean.dtype)
        elif b == "nan":
            produced.mean = torch.full_like(produced.mean, float("nan"))
        return produced

    async def publish(self, window: int, seg: Segment, bucket: Bucket, produced: Produced,
                      write_once: bool = True, is_ours=None) -> str:
        if self.behaviour == "late":
            # the miner stops work at the reduce deadline; a late miner's write lands after it anyway
            self.overwrites.append(asyncio.create_task(self._publish_late(window, seg, bucket, produced)))
            return "written"
        status = await super().publish(window, seg, bucket, produced, write_once, is_ours)
        if self.behaviour == "overwrites_after_deadline":
            self.overwrites.append(asyncio.create_task(self._overwrite_later(window, seg, bucket, produced)))
        return status

    async def _publish_late(self, window, seg, bucket, produced) -> None:
        await self.net.wait_for_block(self.net.phases(window).reduce_deadline + 1)
        await super().publish(window, seg, bucket, produced)

    async def _overwrite_later(self, window, seg, bucket, produced) -> None:
        await self.net.wait_for_block(self.net.phases(window).reduce_deadline + 1)
        produced.mean = torch.zeros_like(produced.mean)
        await super().publish(window, seg, bucket, produced, write_once=False)

    async def _reduce(self, window, seg, bucket, deadline, rejected, skip_first=False,
                      skip: set[str] = frozenset()) -> Produced | None:
        salt = proof_salt(self.net.spec.run_id, window, seg.index, self.net.hotkey)
        refs = await list_inputs(self.net, window, seg, bucket, deadline, rejected)
        for ref in refs:
            if ref.hotkey in skip:
                rejected["late"] += 1  # what it claims
        refs = [r for r in refs if r.hotkey not in skip]
        acc = Accumulator(seg.numel)
        for ref in refs[1:] if skip_first else refs:
            got = await fetch_input(self.net, window, seg, bucket, ref, rejected, salt)
            if got is not None:
                acc.add(ref.hotkey, *got, tag=ref.tag)
        if not acc.count:
            return None
        return Produced(acc.mean(self.net.spec.torch_wire_dtype), acc.inputs, torch.stack(acc.proofs))

    async def _copy(self, window: int, seg: Segment) -> Produced | None:
        """Wait for an honest replica's output and republish its data under our own name, never reading inputs:
        the input list points at the same inputs in our own bucket (their keys, not their bytes, are listed)."""
        phases = self.net.phases(window)
        directory = await self.net.directory(window)
        ours = {r.hotkey: r.tag for r in await list_inputs(self.net, window, seg,
                                                           await self.net.bucket(window, self.net.hotkey),
                                                           await self.net.block_timestamp(phases.upload_deadline),
                                                           Counter())}
        while await self.net.block() < phases.reduce_deadline:
            for victim in self.victims:
                key = str(keys.output_key(self.net.spec.run_id, window, seg.index, victim))
                try:
                    bucket = await self.net.bucket(window, victim)
                    data = await bucket.store.get(bucket.name, key)
                except (NotFound, KeyError):
                    continue
                d = decode(data, key, self.net.output_expect(seg, victim, len(directory.peers)))
                inputs = [(h, sha, ours.get(h, tag)) for h, sha, tag in json.loads(d.meta.extra["inputs"])]
                # the victim's proof is salted with the victim's hotkey: ours cannot be made without the inputs.
                # Stored chunk-major; Produced holds it input-major (publish transposes it back).
                return Produced(d.tensors["data"].clone(), inputs, d.tensors["proof"].transpose(0, 1).clone())
            await asyncio.sleep(0.05)
        return None

    async def _forge(self, window, seg, bucket, deadline, rejected) -> Produced | None:
        """Put made-up values in place of the first peer's input (we cannot sign as that peer, so we sign the
        forgery ourselves), store it under the peer's key, and reduce with it."""
        salt = proof_salt(self.net.spec.run_id, window, seg.index, self.net.hotkey)
        refs = await list_inputs(self.net, window, seg, bucket, deadline, rejected)
        if not refs:
            return None
        victim = refs[0]
        fake = torch.zeros(seg.numel, dtype=self.net.spec.torch_wire_dtype)
        obj = encode(ObjectMeta(self.net.spec.run_id, window, "in", self.net.hotkey, seg.index), {"data": fake},
                     self.net.signer)
        await bucket.store.delete(bucket.name, victim.key)  # its own bucket: it may replace the victim's input
        await bucket.store.put(bucket.name, victim.key, obj.data)
        acc = Accumulator(seg.numel)
        acc.add(victim.hotkey, obj.sha256, fake, proof_rows(memoryview(fake.view(torch.uint8).numpy()), salt),
                tag=victim.tag)
        for ref in refs[1:]:
            got = await fetch_input(self.net, window, seg, bucket, ref, rejected, salt)
            if got is not None:
                acc.add(ref.hotkey, *got, tag=ref.tag)
        return Produced(acc.mean(self.net.spec.torch_wire_dtype), acc.inputs, torch.stack(acc.proofs))


MINER_BEHAVIOURS = ["zeros", "noise", "omits_one_peer", "copies", "late", "nan", "forges_input",
                    "overwrites_after_deadline"]
