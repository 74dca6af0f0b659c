"""Put a signed input straight into a miner's bucket, as a peer's upload would land there: the one helper the role
tests use to stage inputs (honest, hostile or mangled) without running a peer."""
from __future__ import annotations

from typing import Callable

import torch

from mapreduce.network import Bucket
from mapreduce.wire import keys
from mapreduce.wire.codec import ObjectMeta, encode
from mapreduce.wire.signing import Signer


async def plant_input(bucket: Bucket, run: str, window: int, segment: int, signer: Signer, values: torch.Tensor,
                      mangle: Callable[[bytes], bytes] | None = None,
                      tag_filter: Callable[[str], bool] | None = None) -> str:
    """Sign ``values`` as ``signer``'s input of ``segment`` and write it to ``bucket`` under a key tag ``signer``
    made for that bucket's owner; returns the key. ``mangle`` changes the bytes after signing (a forgery);
    ``tag_filter`` draws fresh tags until one passes (e.g. one that sorts first among a peer's keys)."""
    data = bytes(encode(ObjectMeta(run, window, "in", signer.hotkey, segment), {"data": values}, signer).data)
    if mangle is not None:
        data = mangle(data)
    tag = keys.make_tag(signer, run, window, segment, "in", bucket.owner)
    while tag_filter is not None and not tag_filter(tag):
        tag = keys.make_tag(signer, run, window, segment, "in", bucket.owner)
    key = str(keys.input_key(run, window, segment, signer.hotkey, tag))
    await bucket.store.put(bucket.name, key, data)
    return key
