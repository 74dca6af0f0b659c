"""``python -m mapreduce <command>``: the roles (miner, validator), the local swarm and its trainer processes, and
the ops commands (report, prune, inspect, commitment)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["miner"], ["validator"]):
        # The roles parse their own flags (the same as ``python miner.py`` / ``python validator.py``).
        from .ops.cli import miner_main, validator_main
        return (miner_main if argv[0] == "miner" else validator_main)(argv[1:])
    if argv[:1] == ["peer"]:
        return peer_main(argv[1:])
    if argv[:1] == ["prune"]:
        # prune parses its own flags: the chain's come from the Bittensor SDK, which only this command imports
        # (so ``--help`` and the swarm's processes stay fast).
        from .ops import prune
        return prune.main(argv[1:])

    parser = argparse.ArgumentParser(prog="python -m mapreduce")
    sub = parser.add_subparsers(dest="command", required=True)

    # Listed here for --help only; handled above, before parsing.
    sub.add_parser("miner", help="run a miner (flags: miner --help); the same as `python miner.py`")
    sub.add_parser("validator", help="run a validator (flags: validator --help); the same as `python validator.py`")
    sw = sub.add_parser("swarm", help="run the whole system locally: S3 server, chain, peers, miners, validator")
    from .swarm.config import add_swarm_flags, swarm_config_from_args
    add_swarm_flags(sw)

    sub.add_parser("peer", help="(used by the swarm) one training peer process (flags: peer --help)")

    from .ops import report_command
    rp = sub.add_parser("report", help="PNG plots (scores, latency, rejections) from a validator's bucket")
    report_command.add_arguments(rp)
    # Listed here for --help only; handled above, before parsing.
    sub.add_parser("prune", help="delete one run's protocol objects of windows older than the chain's current "
                                 "window minus N (dry run by default; see: prune --help)")
    from .ops import inspection
    ins = sub.add_parser("inspect", help="read one protocol object (a file or s3://bucket/key), run every check, "
                                         "print its metadata and ok or the reason it is refused")
    inspection.add_arguments(ins)
    from .ops import commitment_command
    com = sub.add_parser("commitment", help="make (encode) or read (decode) the bucket commitment string that goes "
                                            "on chain; checks the 128-byte limit")
    commitment_command.add_arguments(com)

    args = parser.parse_args(argv)
    if args.command == "report":
        return report_command.main(args)
    if args.command == "inspect":
        return inspection.main(args)
    if args.command == "commitment":
        return commitment_command.main(args)
    if args.command == "swarm":
        from .swarm.run import run_swarm
        return run_swarm(swarm_config_from_args(args))
    return 2


def peer_main(argv: list[str]) -> int:
    """``python -m mapreduce peer``: one of the swarm's training peers, with every ``PeerConfig`` knob as a flag."""
    from .ops.flags import add_dataclass_flags, dataclass_from_args
    from .peer import PeerConfig
    from .swarm.trainer import train

    parser = argparse.ArgumentParser(prog="python -m mapreduce peer",
                                     description="one training peer of the local swarm (started by `swarm`)")
    parser.add_argument("--run-dir", type=Path, required=True, help="the swarm's run directory")
    parser.add_argument("--index", type=int, required=True, help="which of the swarm's peers this is")
    add_dataclass_flags(parser, "peer", PeerConfig)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("botocore", "aiobotocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(train(args.run_dir, args.index, dataclass_from_args(args, "peer", PeerConfig)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
