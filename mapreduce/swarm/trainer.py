"""A swarm peer: trains the small model, averaging its gradient with the other peers every window.

Run by the swarm as ``python -m mapreduce peer --run-dir DIR --index I``. Each window it computes a gradient on
its own shard, calls :meth:`Peer.allreduce`, applies the averaged gradient, and saves both gradients (local
safetensors files, for the swarm's reference check) and a JSON line of what happened.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from storage import RetryConfig, S3Config, TransferConfig

from ..chain.local import LocalChain
from ..network import Network, StorePool
from ..peer import Peer, PeerConfig
from ..spec import RunSpec
from ..wire.signing import Signer
from .model import Mixture, make_model

log = logging.getLogger("mapreduce.trainer")


async def train(run_dir: Path, index: int, config: PeerConfig | None = None) -> None:
    cfg = json.loads((run_dir / "swarm.json").read_text())
    me = cfg["peers"][index]
    spec = RunSpec.load(run_dir / "spec.json")
    signer = Signer.from_uri(me["uri"])
    s3 = S3Config.from_env(env_file=None)
    transfer = TransferConfig(connect_timeout=1.0, read_timeout=cfg["s3_read_timeout"],
                              operation_timeout=10 * cfg["s3_read_timeout"])
    retry = RetryConfig(total_budget=cfg["s3_retry_budget"], max_delay=cfg["s3_read_timeout"])
    net = Network(spec, LocalChain.open(run_dir / "chain.sqlite"), signer, StorePool(s3, transfer, retry))
    peer = Peer(net, me["bucket"], replace(config or PeerConfig(), fallback=cfg.get("fallback", "reduce")))
    out = run_dir / "peers" / f"p{index}"
    out.mkdir(parents=True, exist_ok=True)
    try:
        await peer.setup()
        (out / "ready").write_text("1")

        model = make_model(**cfg["model"])
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        data = Mixture(dim=cfg["model"]["dim"], classes=cfg["model"]["classes"])
        shard = torch.Generator().manual_seed(1000 + index)
        held_out = data.batch(1024, torch.Generator().manual_seed(99))
        loss_fn = nn.CrossEntropyLoss()

        while not (run_dir / "start_window").exists():
            await asyncio.sleep(0.1)
        first = int((run_dir / "start_window").read_text())
        for window in range(first, first + cfg["windows"]):
            x, y = data.batch(cfg["batch"], shard)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            train_loss = loss.item()  # a plain number (float() of a tensor that requires grad warns)
            grads = {n: p.grad for n, p in model.named_parameters()}
            result = await peer.allreduce(grads, window=window)
            local = {n: g.clone() for n, g in grads.items()}
            for n, p in model.named_parameters():
                p.grad.copy_(result.tensors[n])
            optimizer.step()
            with torch.no_grad():
                eval_loss = float(loss_fn(model(held_out[0]), held_out[1]))
            safetensors.torch.save_file({"local": torch.cat([g.reshape(-1) for g in local.values()]),
                                         "averaged": result.flat.clone()}, out / f"w{window}.safetensors")
            line = {"window": window, "train_loss": train_loss, "eval_loss": eval_loss,
                    "seconds": result.seconds, "peers_included": result.peers_included,
                    "sources": [s.source for s in result.segments],
                    "included_self": all(s.included_self for s in result.segments),
                    "rejected": dict(result.rejected), "bytes_up": result.receipt.bytes_uploaded,
                    "bytes_down": result.bytes_downloaded, "time": time.time()}
            with open(out / "windows.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            log.info("peer %d window %d: loss %.4f eval %.4f, %d peers, %s", index, window, train_loss, eval_loss,
                     result.peers_included, "all replicas" if not result.fallbacks else
                     f"{len(result.fallbacks)} fallbacks")
    finally:
        await net.pool.close()
