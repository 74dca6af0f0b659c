"""Broadcast initial weights from one peer, then all-reduce gradients every window, on the local swarm.

The program the seeds sketch (``peer.broadcast(weights)`` on rank 1, ``peer.all_reduce(gradients)`` every step),
written against this project's API::

    python examples/broadcast_allreduce.py                 # 4 peers, 3 miners, 1 validator, 3 training windows
    python examples/broadcast_allreduce.py --peers 3 --steps 5

It starts the local swarm's infrastructure (embedded S3 server, local chain, ``miner.py`` x3 and ``validator.py``
as processes) and runs the ranks of this program as tasks in this process. Every rank starts from different random
weights; rank 0 broadcasts its own, the others receive them; then every rank trains, averaging its gradient with
the others' each window. The program checks that every rank holds rank 0's weights bit for bit after the
broadcast, and identical weights after every step; it prints what happened (including the validator's checks of
the miners hosting the broadcast) and exits non-zero otherwise. Logs and data: ``runs/<run-id>/``.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, without installing

from mapreduce import Broadcaster, BucketLocation, LocalChain, Network, Peer, Signer, StorePool  # noqa: E402
from mapreduce.swarm.data import Digits  # noqa: E402
from mapreduce.swarm.model import make_model  # noqa: E402
from mapreduce.swarm.orchestrator import PUBLIC_KEY_ID, PUBLIC_SECRET, Swarm, SwarmConfig  # noqa: E402
from mapreduce.wire.keys import report_key  # noqa: E402
from mapreduce.wire.records import decode_report  # noqa: E402
from storage import EmbeddedS3  # noqa: E402


# -- the program: one rank ---------------------------------------------------------------------------------------

async def train(rank: int, net: Network, bucket: str, sender: str, first: int, steps: int, cfg: SwarmConfig,
                data: Digits) -> dict:
    """What each rank runs. ``first`` is the broadcast's window; training uses the ``steps`` windows after it."""
    model = make_model(**cfg.model, seed=100 + rank)  # every rank starts from different weights...
    peer, caster = Peer(net, bucket), Broadcaster(net, bucket)
    out: dict = {"rank": rank, "losses": [], "fallbacks": 0}
    if rank == 0:
        receipt = await caster.broadcast(dict(model.named_parameters()), window=first)
        out["broadcast"] = receipt
    else:
        got = await caster.receive(first, sender=sender)  # ...until rank 0's arrive
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(got.tensors[name])
        out["received"] = got
    out["after_broadcast"] = [p.detach().clone() for p in model.parameters()]

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batches = data.batches(rank, cfg.batch)
    for step in range(steps):
        x, y = next(batches)  # each rank its own shard of the digits...
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        result = await peer.allreduce({n: p.grad for n, p in model.named_parameters()}, window=first + 1 + step)
        out.setdefault("before", []).append([p.detach().clone() for p in model.parameters()])
        out.setdefault("average", []).append(result.flat.clone())
        for name, p in model.named_parameters():
            p.grad.copy_(result.tensors[name])  # ...and everyone's average gradient
        optimizer.step()
        out.setdefault("applied", []).append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        optimizer.zero_grad()
        out["losses"].append(loss.item())
        out["fallbacks"] += len(result.fallbacks)
        out.setdefault("sources", []).append([f"s{x.segment}:{x.source[0]}:{(x.miner or '-')[:6]}:{x.count}"
                                              for x in result.segments])
        out.setdefault("weights", []).append([p.detach().clone() for p in model.parameters()])
    return out


# -- around it: the local swarm, and the checks ------------------------------------------------------------------

def adam_replay(before: list[torch.Tensor], average: torch.Tensor, lr: float) -> list[torch.Tensor]:
    """One Adam step from fresh state, on copies: what a rank's first step should have given."""
    params, pos = [nn.Parameter(p.clone()) for p in before], 0
    for p in params:
        p.grad = average[pos:pos + p.numel()].view(p.shape).clone()
        pos += p.numel()
    torch.optim.Adam(params, lr=lr).step()
    return [p.detach() for p in params]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x.view(torch.int32), y.view(torch.int32)) for x, y in zip(a, b))


async def run_ranks(swarm: Swarm, s3: EmbeddedS3, chain: LocalChain, peers: int, steps: int) -> list[dict]:
    pool = StorePool(s3.config())
    signers = [Signer.from_uri(f"//{swarm.run_id}/example-peer/{i}") for i in range(peers)]
    nets = []
    try:
        for i, signer in enumerate(signers):
            chain.register(signer.hotkey)  # an admin action on the local chain; `btcli subnet register` on a real one
            net = Network(swarm.spec, chain, signer, pool)
            bucket = f"{swarm.run_id}-example-peer-{i}"
            location = BucketLocation("peer", bucket, s3.endpoint_url, PUBLIC_KEY_ID, PUBLIC_SECRET)
            await (await pool.own_store()).create_bucket(bucket)
            await net.commit(location)
            nets.append((net, bucket))
        # The next window whose directory lists every rank: all ranks then draw the same plans.
        first = swarm.spec.windows.first_window_anchored_after(chain.current_block())
        data = Digits(peers)  # one shard per rank
        return await asyncio.gather(*(train(i, net, bucket, signers[0].hotkey, first, steps, swarm.cfg, data)
                                      for i, (net, bucket) in enumerate(nets)))
    finally:
        await pool.close()


def hosting_report(s3: EmbeddedS3, swarm: Swarm, window: int, timeout: float = 60.0) -> list[dict]:
    """The validator's checks of the miners hosting the broadcast (its report for the broadcast's window)."""
    import boto3
    client = boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    v = swarm.ids["validators"][0]
    key = str(report_key(swarm.run_id, window, v["hotkey"]))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = client.get_object(Bucket=v["bucket"], Key=key)["Body"].read()
            return decode_report(data, swarm.run_id, window, v["hotkey"]).get("hosting", [])  # signed: checked
        except client.exceptions.NoSuchKey:
            time.sleep(0.5)
    return []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", type=int, default=4)
    ap.add_argument("--miners", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="training windows after the broadcast")
    ap.add_argument("--block-time", type=float, default=SwarmConfig.block_time, help="seconds per local block")
    ap.add_argument("--run-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.peers < 2:
        ap.error("--peers must be at least 2: one sends, the others receive")

    swarm = Swarm(SwarmConfig(peers=0, miners=args.miners, windows=args.steps + 1, block_time=args.block_time,
                              run_dir=args.run_dir))
    spec = swarm.prepare()
    print(f"run {swarm.run_id}: {args.peers} ranks, {args.miners} miners, 1 validator; {spec.numel:,} parameters "
          f"in {spec.segments} segments; logs and data under {swarm.dir}")
    failures = []
    with EmbeddedS3() as s3:
        chain = LocalChain.open(swarm.dir / "chain.sqlite")
        try:
            swarm.start(s3)
            swarm.wait_ready(chain)
            ranks = asyncio.run(run_ranks(swarm, s3, chain, args.peers, args.steps))
            receipt = ranks[0]["broadcast"]
            hosting = hosting_report(s3, swarm, receipt.window)
        except Exception as e:  # a failed rank or process: say which, and where the logs are
            print(f"FAILED: {type(e).__name__}: {e} (logs: {swarm.dir / 'logs'})")
            return 2
        finally:
            swarm.stop()

    size = receipt.tensor_bytes
    print(f"window {receipt.window}: rank 0 broadcast {size:,} B, uploading {receipt.bytes_uploaded:,} B "
          f"({receipt.bytes_uploaded / receipt.replicas / size:.3f}x per replica, {receipt.replicas:.0f} replicas)")
    for r in ranks[1:]:
        got = r["received"]
        exact = same(r["after_broadcast"], ranks[0]["after_broadcast"])
        print(f"  rank {r['rank']} received it from {len({s.miner for s in got.sources})} miners' buckets "
              f"({got.bytes_downloaded:,} B, {len(got.fallbacks)} fallbacks): "
              f"{'bit-for-bit' if exact else 'DIFFERENT'}")
        if not exact:
            failures.append(f"rank {r['rank']} does not hold rank 0's weights after the broadcast")
    for step in range(args.steps):
        identical = all(same(r["weights"][step], ranks[0]["weights"][step]) for r in ranks[1:])
        losses = " ".join(f"{r['losses'][step]:.4f}" for r in ranks)
        print(f"window {receipt.window + 1 + step}: all-reduce; losses by rank {losses}; weights "
              f"{'identical on every rank' if identical else 'DIVERGED'}")
        if not identical:
            for r in ranks:  # where each rank's average came from: which segment differs, and from whom
                gap = max(float((a - b).abs().max()) for a, b in zip(r["weights"][step], ranks[0]["weights"][step]))
                print(f"  rank {r['rank']}: max |w - w_rank0| {gap:.2e}; segments {' '.join(r['sources'][step])}")
                # Where it came from: the average this rank applied, or the weights it applied it to.
                avg, ref = r["average"][step], ranks[0]["average"][step]
                differ = (avg.view(torch.int32) != ref.view(torch.int32)).nonzero().flatten()[:3].tolist()
                print(f"    average gradient bit-identical to rank 0's: {not differ}"
                      + "".join(f"; element {i}: {avg[i].item():.9g} vs {ref[i].item():.9g}" for i in differ)
                      + f"; weights before the step identical: {same(r['before'][step], ranks[0]['before'][step])}")
                # Was the step itself disturbed? The gradient as the step left it, and (first step: fresh state) a
                # replay of Adam on this rank's own recorded weights and average.
                applied = torch.equal(r["applied"][step].view(torch.int32), avg.view(torch.int32))
                replay = "" if step else f"; Adam replayed on its own before/average gives its weights: " \
                    f"{same(adam_replay(r['before'][0], avg, swarm.cfg.lr), r['weights'][0])}"
                print(f"    gradient still the average after the step: {applied}{replay}")
            failures.append(f"ranks' weights differ after step {step} (some inputs missed the upload deadline? "
                            "on a loaded machine, try --block-time 1)")
            dump = swarm.dir / "diverged.pt"  # every rank's weights and averages, to look at afterwards
            torch.save([{k: r.get(k) for k in ("after_broadcast", "before", "average", "applied", "weights",
                                               "sources")}
                        for r in ranks], dump)
            print(f"  (each rank's weights and averages: {dump})")
    # A fallback (a late miner, on a loaded machine) still gives the exact mean: reported, not a failure.
    fallbacks = sum(r["fallbacks"] for r in ranks)
    print(f"all-reduce: {fallbacks} segment(s) finished by a peer instead of a miner's output")
    ok = [h for h in hosting if h["status"] == "ok"]
    print(f"validator: {len(ok)}/{len(hosting)} hosted broadcast copies checked ok"
          + (f", median {1000 * sorted(h['latency'] for h in ok)[len(ok) // 2]:.0f} ms per ranged GET" if ok else ""))
    if not hosting or len(ok) != len(hosting):
        failures.append("the validator did not find every sampled broadcast copy hosted")
    for f in failures:
        print(f"CHECK FAILED: {f}")
    if not failures:
        print("all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
