"""A swarm peer: trains the small model, averaging its gradient with the other peers every window.

Run by the swarm as ``python -m mapreduce peer --run-dir DIR --index I``. Each window it computes a gradient on
a batch of its own shard of the digits (swarm/data.py), calls :meth:`Peer.allreduce`, applies the averaged
gradient, and saves both gradients (local safetensors files, for the swarm's reference check) and a JSON line of
what happened, with the test set's loss and accuracy after the step. After the last window it saves its weights
(``final.safetensors``), which the swarm compares with training on one machine (swarm/replay.py).
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

from storage import RetryConfig, S3Config, TransferConfig

from ..chain.local import LocalChain
from ..flat import flatten
from ..network import Network, StorePool
from ..peer import Peer, PeerConfig
from ..spec import RunSpec
from ..wire.signing import Signer
from .data import Digits
from .model import TORCH_THREADS, apply_average, local_gradient, make_model, make_optimizer

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

        # as many torch threads as the single-process replay uses, so that both compute the same bits (model.py)
        torch.set_num_threads(TORCH_THREADS)
        model = make_model(**cfg["model"])
        optimizer = make_optimizer(model, cfg["lr"])
        data = Digits(len(cfg["peers"]))
        batches = data.batches(index, cfg["batch"])

        while not (run_dir / "start_window").exists():
            await asyncio.sleep(0.1)
        first = int((run_dir / "start_window").read_text())
        for window in range(first, first + cfg["windows"]):
            x, y = next(batches)
            train_loss, grads = local_gradient(model, x, y)
            result = await peer.allreduce(grads, window=window)
            local = {n: g.clone() for n, g in grads.items()}
            apply_average(model, optimizer, result.tensors)
            eval_loss, test_accuracy = data.evaluate(model)
            saved = {"local": flatten(spec, local), "averaged": result.flat.clone()}
            if result.receipt.sent is not None:  # error feedback: what our inputs carried (the reference check's)
                saved["sent"] = result.receipt.sent.clone()
            safetensors.torch.save_file(saved, out / f"w{window}.safetensors")
            line = {"window": window, "train_loss": train_loss, "eval_loss": eval_loss,
                    "test_accuracy": test_accuracy,
                    "seconds": result.seconds, "peers_included": result.peers_included,
                    "sources": [s.source for s in result.segments],
                    "included_self": all(s.included_self for s in result.segments),
                    "rejected": dict(result.rejected), "bytes_up": result.receipt.bytes_uploaded,
                    "bytes_down": result.bytes_downloaded, "time": time.time()}
            with open(out / "windows.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            log.info("peer %d window %d: loss %.4f eval %.4f accuracy %.3f, %d peers, %s", index, window, train_loss,
                     eval_loss, test_accuracy, result.peers_included,
                     "all replicas" if not result.fallbacks else f"{len(result.fallbacks)} fallbacks")
        # what the swarm compares with single-process training at the end (replay.py)
        safetensors.torch.save_file({n: p.detach().clone() for n, p in model.named_parameters()},
                                    out / "final.safetensors")
    finally:
        await net.pool.close()
