"""Dishonest miners and peers for the adversary suite: real codec, real keys, real buckets; each cheats one way."""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import Counter

import torch

from mapreduce.wire import keys
from mapreduce.wire.codec import ObjectMeta, decode, encode
from mapreduce.errors import InvalidObject, NoBucketOnChain
from mapreduce.inputs import fetch_input, list_inputs
from mapreduce.wire.keys import ObjectKey
from mapreduce.miner import Miner, Produced
from mapreduce.network import Bucket
from mapreduce.plan import Segment, segment_bounds
from mapreduce.wire.proof import proof_rows, proof_salt
from mapreduce.reduce import Accumulator
from storage import NotFound


def one_element(mean: torch.Tensor, window: int, segment: int, by: float = 100.0) -> torch.Tensor:
    """``mean`` with one element (at an index drawn from the window and segment) moved by ``by``."""
    out = mean.clone()
    at = random.Random(f"one_element|{window}|{segment}").randrange(out.numel())
    out[at] += by
    return out


def relative_noise(mean: torch.Tensor, window: int, segment: int, scale: float = 1e-4) -> torch.Tensor:
    """``mean * (1 + scale * z)``, z standard normal: a normalised difference of about ``scale``."""
    g = torch.Generator().manual_seed(hash((window, segment)) & 0xFFFFFFFF)
    z = torch.randn(mean.shape, generator=g)
    return (mean.float() * (1 + scale * z)).to(mean.dtype)


class _Capture:
    """A store that keeps what is put into it: how an adversary gets the exact bytes :meth:`Miner.publish` would
    write (every field the honest miner signs, whatever the codec's version) without writing them."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    async def put(self, bucket: str, key: str, data, **_) -> None:
        self.objects[key] = bytes(data)


class AdversarialMiner(Miner):
    """``behaviour`` is one of :data:`MINER_BEHAVIOURS` or :data:`VERIFICATION_BEHAVIOURS`.

    ``eager``: the corrupting behaviours start from the reduction of what is listed at the upload deadline and
    write at once (as ``early_writer`` does), so that their output is the first one peers find; without it they
    start from :meth:`Miner.produce`, on the honest miner's schedule. ``front``: the :class:`HostileFront` this
    miner published as its endpoint (``equivocates`` and ``lying_listing`` need it)."""

    def __init__(self, *args, behaviour: str, victim_hotkeys: list[str] | None = None, front=None,
                 eager: bool = False, **kw):
        super().__init__(*args, **kw)
        self.behaviour = behaviour
        self.victims = victim_hotkeys or []  # honest miners a copier copies from; peers an omitter leaves out
        self.overwrites: list[asyncio.Task] = []
        self.front = front
        self.eager = eager
        self.later: list[asyncio.Task] = []  # writes after the reduce deadline; run_window waits for them
        self.deleted: list[tuple[str, float]] = []  # deletes_input: (key, unix time) of each input it deleted
        self.written_late: dict[str, float] = {}  # lying_listing: output key -> when the real object was written
        self.aside: dict[str, bytes] = {}  # equivocates: output key -> the signed corrupted object downloaders get
        self.forged: dict[int, tuple] = {}  # forges_input: segment -> (key, sha256, values) of the forgery

    async def run_window(self, window: int):
        during_upload = {"deletes_input": self._delete_victims, "forges_input": self._forge_early}
        deleter = (asyncio.create_task(during_upload[self.behaviour](window)) if self.behaviour in during_upload
                   else None)
        try:
            report = await super().run_window(window)
        finally:
            if deleter is not None:
                deleter.cancel()
                await asyncio.gather(deleter, return_exceptions=True)
        if self.later:
            await asyncio.gather(*self.later)
        return report

    async def produce(self, window: int, seg: Segment, bucket: Bucket, deadline: float,
                      rejected: Counter) -> Produced | None:
        b = self.behaviour
        if b == "early_writer":  # the honest reduction of what is there at the upload deadline, written at once
            return await self._reduce(window, seg, bucket, deadline, rejected)
        if b in ("one_element", "noise_1e-4", "equivocates", "deletes_input", "lying_listing"):
            produced = await (self._reduce(window, seg, bucket, deadline, rejected) if self.eager
                              else super().produce(window, seg, bucket, deadline, rejected))
            if produced is not None and b == "one_element":
                produced.mean = one_element(produced.mean, window, seg.index)
            elif produced is not None and b == "noise_1e-4":
                produced.mean = relative_noise(produced.mean, window, seg.index)
            return produced
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
        key = str(keys.output_key(self.net.spec.run_id, window, seg.index, self.net.hotkey))
        if self.behaviour == "equivocates":
            # Downloaders get a corrupted output, signed like any other; checkers get the honest one, stored.
            bad = Produced(one_element(produced.mean, window, seg.index), produced.inputs, produced.proof)
            self.aside[key] = await self.encoded(window, seg, bad)
            self.front.equivocate(self.aside[key], where=f"/{bucket.name}/{key}")
        if self.behaviour == "lying_listing":
            # Listed now, with an early time and an ETag of our choosing; written once the sampling seed exists.
            data = await self.encoded(window, seg, produced)
            etag = hashlib.md5(b"phantom|" + key.encode()).hexdigest()
            # Readers of the key are held until it exists (a server is free to be slow): none sees a 404.
            block = await self.net.block()
            left = self.net.phases(window).reduce_deadline - block
            hold = left * await self.net.block_seconds(block) + 5.0
            self.front.phantom(bucket.name, key, etag=etag, last_modified=time.time(), size=len(data), hold=hold)
            self.later.append(asyncio.create_task(self._write_after_deadline(window, bucket, key, data)))
            return "written"
        if self.behaviour == "late":
            # the miner stops work at the reduce deadline; a late miner's write lands after it anyway
            self.overwrites.append(asyncio.create_task(self._publish_late(window, seg, bucket, produced)))
            return "written"
        status = await super().publish(window, seg, bucket, produced, write_once, is_ours)
        if self.behaviour == "overwrites_after_deadline":
            self.overwrites.append(asyncio.create_task(self._overwrite_later(window, seg, bucket, produced)))
        return status

    async def encoded(self, window: int, seg: Segment, produced: Produced) -> bytes:
        """The bytes :meth:`Miner.publish` would write for ``produced``, signed by us, without writing them."""
        capture = _Capture()
        await super().publish(window, seg, Bucket(capture, "capture", self.net.hotkey), produced, write_once=False)
        (data,) = capture.objects.values()
        return data

    async def _write_after_deadline(self, window: int, bucket: Bucket, key: str, data: bytes) -> None:
        # Two blocks after the deadline: later than a validator starved by the in-process roles could mistake for
        # its own stall (it would drop the check, mapreduce/validator.py OwnStall, rather than score it 0).
        await self.net.wait_for_block(self.net.phases(window).reduce_deadline + 2)
        await bucket.store.put(bucket.name, key, data)
        self.written_late[key] = time.time()

    async def _delete_victims(self, window: int) -> None:
        """Through the upload phase, delete the victims' inputs from our own bucket as soon as they land."""
        phases = self.net.phases(window)
        await self.net.wait_for_block(phases.start_block)
        bucket = await self.net.bucket(window, self.net.hotkey)
        prefix = keys.role_prefix(self.net.spec.run_id, window, "in")
        gone: set[str] = set()
        while await self.net.block() < phases.upload_deadline:
            for info in await bucket.store.list(bucket.name, prefix):
                try:
                    writer = ObjectKey.parse(info.key).hotkey
                except (InvalidObject, ValueError):
                    continue
                if info.key not in gone and writer in self.victims:
                    await bucket.store.delete(bucket.name, info.key)
                    gone.add(info.key)
                    self.deleted.append((info.key, time.time()))
            await asyncio.sleep(0.02)

    async def _forge_early(self, window: int) -> None:
        """Through the upload phase, replace the first input of each segment that lands in our own bucket with
        made-up values at the same key, signed by us (we cannot sign as that peer): on time by every stamp, so
        only its signature can give it away."""
        phases = self.net.phases(window)
        await self.net.wait_for_block(phases.start_block)
        bucket = await self.net.bucket(window, self.net.hotkey)
        prefix = keys.role_prefix(self.net.spec.run_id, window, "in")
        segments = segment_bounds(self.net.spec.numel, self.net.spec.segments)
        while await self.net.block() < phases.upload_deadline:
            for info in await bucket.store.list(bucket.name, prefix):
                try:
                    k = ObjectKey.parse(info.key)
                except (InvalidObject, ValueError):
                    continue
                if k.segment is None or k.segment in self.forged or k.segment >= len(segments):
                    continue
                fake = self.net.spec.wire.encode(torch.zeros(segments[k.segment].numel))
                obj = encode(ObjectMeta(self.net.spec.run_id, window, "in", self.net.hotkey, k.segment),
                             fake, self.net.signer)
                await bucket.store.delete(bucket.name, info.key)  # its own bucket: it may replace the input
                await bucket.store.put(bucket.name, info.key, obj.data)
                self.forged[k.segment] = (info.key, obj.sha256, fake)
            await asyncio.sleep(0.02)

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
        return Produced(acc.mean(self.net.spec.wire.output_dtype), acc.inputs, torch.stack(acc.proofs))

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
                except (NotFound, NoBucketOnChain):
                    continue
                d = decode(data, key, self.net.output_expect(seg, victim, len(directory.peers)))
                inputs = [(h, sha, ours.get(h, tag)) for h, sha, tag in json.loads(d.meta.extra["inputs"])]
                # the victim's proof is salted with the victim's hotkey: ours cannot be made without the inputs.
                # Stored chunk-major; Produced holds it input-major (publish transposes it back).
                return Produced(d.tensors["data"].clone(), inputs, d.tensors["proof"].transpose(0, 1).clone())
            await asyncio.sleep(0.05)
        return None

    async def _forge(self, window, seg, bucket, deadline, rejected) -> Produced | None:
        """Reduce with the forgery planted during the upload phase (:meth:`_forge_early`) in place of that peer's
        input, listing it under that peer's name with the forgery's hash."""
        salt = proof_salt(self.net.spec.run_id, window, seg.index, self.net.hotkey)
        refs = await list_inputs(self.net, window, seg, bucket, deadline, rejected)
        forged_key, forged_sha, fake = self.forged.get(seg.index, (None, None, None))
        if not refs or forged_key is None:
            return None
        acc = Accumulator(seg.numel)
        for ref in refs:
            if ref.key == forged_key:
                acc.add(ref.hotkey, forged_sha, self.net.spec.wire.decode(fake, seg.numel),
                        proof_rows(memoryview(fake["data"].view(torch.uint8).numpy()), salt), tag=ref.tag)
                continue
            got = await fetch_input(self.net, window, seg, bucket, ref, rejected, salt)
            if got is not None:
                acc.add(ref.hotkey, *got, tag=ref.tag)
        return Produced(acc.mean(self.net.spec.wire.output_dtype), acc.inputs, torch.stack(acc.proofs))


MINER_BEHAVIOURS = ["zeros", "noise", "omits_one_peer", "copies", "late", "nan", "forges_input",
                    "overwrites_after_deadline"]
# Subtler cheats, pinned by tests/hostile/test_verification.py: one wrong element, noise within a bound,
# different bytes for downloaders and checkers, a deleted input, an output listed before it exists, an output
# written before the settle time.
VERIFICATION_BEHAVIOURS = ["one_element", "noise_1e-4", "equivocates", "deletes_input", "lying_listing",
                           "early_writer"]
