"""A training peer you can copy: train a model, averaging its gradient with every peer of the run each window.

Once per run, someone writes the run's spec from the model (everyone in the run shares the file)::

    python examples/peer.py spec --run-id my-run --out run.json

Then each peer, with its S3 account in ``MR_S3_*`` (or ``--env-file``, see .env.example) and a hotkey registered on
the subnet::

    python examples/peer.py train --spec run.json --bucket my-peer-bucket --netuid 1 \\
        --wallet.name W --wallet.hotkey H --subtensor.network finney --steps 100

``--chain.local PATH`` uses a local chain file instead (the one ``python -m mapreduce swarm`` writes). The program
creates its bucket and publishes it on chain (once), then each step computes a gradient on its own data, averages it
with the other peers' through the miners (``Peer.allreduce``) and applies the average. It imports only the package's
public face (``mapreduce``) and ``storage``.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys

import torch
from dotenv import load_dotenv
from torch import nn

from mapreduce import Network, NotAParticipant, Peer, RunSpec, Signer, StorePool
from mapreduce.ops.flags import add_env_file_flag, env_file
from storage import S3Config, StorageError


# -- the model and the data: replace with yours -------------------------------------------------------------------

FEATURES = 64  # the demo's model (8x8 digits), so this peer can join the local swarm's run


def make_model() -> nn.Module:
    torch.manual_seed(0)  # every peer starts from the same weights (or broadcast them: examples/broadcast_allreduce.py)
    return nn.Sequential(nn.Linear(FEATURES, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def my_batches(hotkey: str, size: int = 256):
    """This peer's own data: points around ten fixed centres, drawn from a stream seeded by our hotkey."""
    centres = torch.randn(10, FEATURES, generator=torch.Generator().manual_seed(1234)) * 2.0
    mine = torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(hotkey.encode()).digest()[:8], "big"))
    while True:
        y = torch.randint(0, 10, (size,), generator=mine)
        yield centres[y] + 1.5 * torch.randn(size, FEATURES, generator=mine), y


# -- the two commands ---------------------------------------------------------------------------------------------

def write_spec(args: argparse.Namespace) -> int:
    spec = RunSpec.for_module(args.run_id, make_model().named_parameters(), segments=args.segments,
                              redundancy=args.redundancy)
    spec.save(args.out)
    print(f"wrote {args.out}: run {spec.run_id}, {spec.numel:,} parameters in {spec.segments} segments, "
          f"{spec.redundancy} replicas each")
    return 0


def open_chain(args: argparse.Namespace):
    """The local chain file, or a Bittensor network (finney, test, or a ws:// endpoint)."""
    if args.chain_local:
        from mapreduce import LocalChain
        return LocalChain.open(args.chain_local)
    import bittensor as bt
    from mapreduce import SubtensorChain
    return SubtensorChain(bt.Subtensor(network=args.subtensor_network), netuid=args.netuid)


async def train(args: argparse.Namespace) -> int:
    from bittensor_wallet import Wallet

    load_dotenv(env_file(args), override=False)  # MR_S3_* (our account) and MR_PUBLIC_* (the keys others read with)
    spec = RunSpec.load(args.spec)
    wallet = Wallet(name=args.wallet_name, hotkey=args.wallet_hotkey, path=args.wallet_path)
    pool = StorePool(S3Config.from_env())
    net = Network(spec, open_chain(args), Signer.from_wallet(wallet), pool, chain_signer=wallet)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    batches = my_batches(net.hotkey)
    try:
        peer = Peer(net, bucket=args.bucket)
        await peer.setup()  # creates the bucket and publishes it on chain; a no-op once done
        for step in range(args.steps):
            x, y = next(batches)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            result = await peer.allreduce({n: p.grad for n, p in model.named_parameters()})
            for n, p in model.named_parameters():
                p.grad.copy_(result.tensors[n])  # the average over every peer of this window
            optimizer.step()
            optimizer.zero_grad()
            print(f"step {step}: window {result.window}, loss {loss.item():.4f}, averaged over "
                  f"{result.peers_included} peers, {result.seconds:.1f}s", flush=True)
    except NotAParticipant as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except StorageError as e:
        print(f"error: storage: {e}", file=sys.stderr)
        return 1
    finally:
        await pool.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("spec", help="write the run's spec (tensor names, shapes, segments) from the model")
    sp.add_argument("--run-id", required=True, help="the run's name: letters, digits and dashes")
    sp.add_argument("--out", default="run.json", help="where to write it (default: run.json)")
    sp.add_argument("--segments", type=int, default=6, help="segments the gradient is split into (default: 6)")
    sp.add_argument("--redundancy", type=int, default=2, help="miners holding each segment (default: 2)")
    tr = sub.add_parser("train", help="train, averaging gradients with the run's other peers every window")
    tr.add_argument("--spec", required=True, help="the run's spec JSON (from the spec command)")
    tr.add_argument("--bucket", required=True, help="your S3 bucket, for your signed upload records")
    tr.add_argument("--netuid", type=int, required=True)
    tr.add_argument("--wallet.name", dest="wallet_name", required=True)
    tr.add_argument("--wallet.hotkey", dest="wallet_hotkey", required=True)
    tr.add_argument("--wallet.path", dest="wallet_path", default="~/.bittensor/wallets")
    tr.add_argument("--subtensor.network", dest="subtensor_network", default="finney")
    tr.add_argument("--chain.local", dest="chain_local", default=None, metavar="PATH",
                    help="a local chain file instead of a Bittensor network")
    add_env_file_flag(tr)
    tr.add_argument("--steps", type=int, default=10, help="training steps, one window each (default: 10)")
    tr.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args(argv)
    if args.command == "spec":
        return write_spec(args)
    return asyncio.run(train(args))


if __name__ == "__main__":
    raise SystemExit(main())
