"""Command lines of the miner and the validator: Bittensor's flags plus ours, and the wiring of one process.

``miner.py`` and ``validator.py`` at the top of the repository call :func:`miner_main` and :func:`validator_main`.
Flags follow Bittensor conventions (``--netuid``, ``--subtensor.network``, ``--wallet.name``, ``--wallet.hotkey``,
``--logging.debug``); S3 credentials come from the environment or a ``.env`` file, never from flags, so they do
not show up in process listings or shell history. The flags of the role's config (``--miner.*``, ``--validator.*``)
and of S3 transfers (``--s3.*``) are generated from the config dataclasses (mapreduce/ops/flags.py), which hold
their defaults and meanings.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import bittensor as bt
from bittensor_wallet import Wallet
from dotenv import load_dotenv

from storage import RetryConfig, S3Config, StorageError, TransferConfig

from ..chain.base import Chain, ChainError
from ..chain.local import LocalChain
from ..chain.subtensor import SubtensorChain
from ..directory import Admission, BucketLocation, CommitmentError
from ..errors import ProtocolError
from ..miner import MinerConfig
from ..network import Network, StorePool
from ..spec import RunSpec
from ..validator import ValidatorConfig
from ..wire.signing import Signer
from .advice import describe
from .flags import add_dataclass_flags, add_env_file_flag, dataclass_from_args, env_file, given
from .progress import TransferProgress

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from ..miner import Miner
    from ..validator import Validator

log = logging.getLogger("mapreduce")


def build_parser(role: str) -> argparse.ArgumentParser:
    what = {"miner": "Reduce the segments the plan assigns to this hotkey, every window.",
            "validator": "Sample and recompute miners' outputs, score them and set weights."}[role]
    p = argparse.ArgumentParser(prog=f"{role}.py", description=what,
                                epilog="S3 endpoint and credentials come from MR_S3_* variables or the --env-file "
                                       "(see .env.example).")
    p.add_argument("--bucket", required=True, help="this process's S3 bucket (created if missing, published on chain)")
    p.add_argument("--spec", required=True, help="path of the run spec JSON every participant of the run shares")
    add_env_file_flag(p)
    p.add_argument("--chain.local", dest="chain.local", default=None, metavar="PATH",
                   help="use the embedded local chain in this SQLite file instead of subtensor (local swarm)")
    p.add_argument("--windows", type=int, default=0, help="stop after this many windows (default: run forever)")
    p.add_argument("--whitelist.hotkeys", dest="whitelist.hotkeys", default="", metavar="SS58,...",
                   help="accept objects only from these hotkeys (default: every hotkey registered on the netuid); "
                        "narrows the run spec's allow_hotkeys, never the plan")
    p.add_argument("--blacklist.hotkeys", dest="blacklist.hotkeys", default="", metavar="SS58,...",
                   help="never accept objects from these hotkeys (added to the run spec's deny_hotkeys)")
    if role == "miner":  # the miner reads validators' reports (its standing); a validator reads none
        p.add_argument("--validators.min_stake", dest="validators.min_stake", type=float, default=0.0,
                       metavar="STAKE", help="trust reports only of validators with a permit and at least this stake "
                       "(the higher of this and the run spec's min_validator_stake applies; default 0)")
    if role == "validator":
        p.add_argument("--state", default=None, metavar="PATH",
                       help="validator state file (scores, last window); default ~/.mapreduce/validator-<hotkey>.json")
    p.add_argument("--metrics.port", dest="metrics.port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port; default: off); "
                        "names in docs/OPERATIONS.md")
    p.add_argument("--metrics.host", dest="metrics.host", default="127.0.0.1", metavar="ADDR",
                   help="address the metrics server binds (default 127.0.0.1; 0.0.0.0 to let another machine scrape)")
    add_role_flags(p, role)
    add_storage_flags(p)
    SubtensorChain.add_args(p)
    Wallet.add_args(p)
    bt.logging.add_args(p)
    return p


# The role's config dataclass: its fields are the role's ``--<role>.*`` flags (mapreduce/ops/flags.py).
ROLE_CONFIGS: dict[str, type] = {"miner": MinerConfig, "validator": ValidatorConfig}


def add_role_flags(p: argparse.ArgumentParser, role: str) -> None:
    """``--miner.*`` or ``--validator.*``: every field of the role's config, defaults from the dataclass."""
    add_dataclass_flags(p, role, ROLE_CONFIGS[role], title=f"{role} ({ROLE_CONFIGS[role].__name__}: --{role}.*)")


def role_config(args: argparse.Namespace, role: str) -> MinerConfig | ValidatorConfig:
    """The role's config from its ``--<role>.*`` flags (ValueError for a value the dataclass refuses)."""
    return dataclass_from_args(args, role, ROLE_CONFIGS[role])


def add_storage_flags(p: argparse.ArgumentParser) -> None:
    """``--s3.*``: every field of TransferConfig and RetryConfig (their names do not overlap). Unless given, the
    attempt timeout and the longest retry delay follow the read timeout and the retry budget (see storage_knobs);
    ``--s3.retry_budget`` is the older name of ``--s3.total_budget``. Credentials and the endpoint are never flags."""
    group = p.add_argument_group("S3 transfers and retries (--s3.*)",
                                 "they bound every S3 request and must fit well inside a window's phases")
    add_dataclass_flags(group, "s3", TransferConfig, shown_defaults={
        "operation_timeout": "the larger of 10 x --s3.read_timeout and --s3.total_budget, so 300"})
    add_dataclass_flags(group, "s3", RetryConfig, exclude=("seed",), aliases={"total_budget": "retry_budget"},
                        shown_defaults={"max_delay": "the smaller of 10 and --s3.read_timeout, so 10"})


def setup_logging(args: argparse.Namespace) -> None:
    debug = getattr(args, "logging.debug", False) or getattr(args, "logging.trace", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "logging.trace", False):
        for noisy in ("botocore", "aiobotocore", "boto3", "urllib3", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def open_chain(args: argparse.Namespace) -> Chain:
    local = getattr(args, "chain.local")
    if local:
        return LocalChain.open(local)
    return SubtensorChain.from_config(args)


def published_location(role: str, bucket: str, s3: S3Config) -> BucketLocation:
    """What goes on chain: our bucket, and the endpoint, region, addressing and scoped keys others use
    (MR_PUBLIC_*, falling back on our own MR_S3_*)."""
    return BucketLocation.published(role, bucket, s3.endpoint_url, own_region=s3.region,
                                    own_addressing_style=s3.addressing_style)


class SetupError(Exception):
    """The process cannot start; the message says what is wrong and what to do."""


def load_spec(path: str) -> RunSpec:
    try:
        return RunSpec.load(path)
    except FileNotFoundError:
        raise SetupError(f"run spec {path} not found: pass the run's spec JSON with --spec") from None
    except KeyError as e:
        raise SetupError(f"run spec {path} lacks the field {e}") from None
    except (ValueError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise SetupError(f"run spec {path} is not valid: {e}") from None


def load_wallet(args: argparse.Namespace) -> tuple[Wallet, Signer]:
    wallet = Wallet(name=getattr(args, "wallet.name"), hotkey=getattr(args, "wallet.hotkey"),
                    path=getattr(args, "wallet.path"))
    try:
        return wallet, Signer(wallet.hotkey)
    except Exception as e:  # the wallet library raises its own KeyFileError, or ValueError for a locked key
        raise SetupError(f"cannot load hotkey {getattr(args, 'wallet.hotkey')!r} of wallet "
                         f"{getattr(args, 'wallet.name')!r} under {getattr(args, 'wallet.path')}: {e}. "
                         "Create or regenerate it with btcli, or point --wallet.* at the right one.") from None


def storage_knobs(args: argparse.Namespace) -> tuple[TransferConfig, RetryConfig]:
    """TransferConfig and RetryConfig from ``--s3.*``: they must fit inside a window's phases. Unless given, the
    attempt timeout is 10 read timeouts or the retry budget, the larger, and the longest delay between attempts
    10 s or the read timeout, the smaller (with the defaults: the dataclasses' own 300 s and 10 s)."""
    transfer = dataclass_from_args(args, "s3", TransferConfig)
    retry = dataclass_from_args(args, "s3", RetryConfig, exclude=("seed",))
    s3 = given(args, "s3")
    if "operation_timeout" not in s3:
        transfer = replace(transfer, operation_timeout=max(10 * transfer.read_timeout, retry.total_budget))
    if "max_delay" not in s3:
        retry = replace(retry, max_delay=min(10.0, transfer.read_timeout))
    return transfer, retry


def build_network(args: argparse.Namespace) -> tuple[Network, Wallet, S3Config]:
    spec = load_spec(args.spec)
    try:
        admission = Admission.parse(getattr(args, "whitelist.hotkeys"), getattr(args, "blacklist.hotkeys"),
                                    getattr(args, "validators.min_stake", 0.0))
        Admission.from_spec(spec).narrow(admission)  # an allow list disjoint from the spec's is a set-up error
    except ValueError as e:
        raise SetupError(f"--whitelist.hotkeys/--blacklist.hotkeys/--validators.min_stake: {e}") from None
    wallet, signer = load_wallet(args)
    s3 = S3Config.from_env(env_file=env_file(args))  # ./.env is skipped when absent
    load_dotenv(env_file(args), override=False)  # MR_PUBLIC_* too; the process environment still wins
    chain = open_chain(args)
    net = Network(spec, chain, signer, StorePool(s3, *storage_knobs(args)), admission=admission,
                  chain_signer=wallet)
    return net, wallet, s3


async def _serve(role: str, args: argparse.Namespace, config: MinerConfig | ValidatorConfig) -> int:
    from ..miner import Miner
    from ..validator import Validator

    try:
        net, wallet, s3 = build_network(args)
    except (SetupError, ChainError) as e:
        log.error("%s", e)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    windows = args.windows or None
    metrics_server = None
    progress = TransferProgress(net.pool.stats, f"{role} S3")  # only on a terminal
    try:
        directory_role = "miner" if role == "miner" else "validator"
        location = published_location(directory_role, args.bucket, s3)
        # Before anything is created or committed: an unregistered hotkey would leave a bucket behind for nothing.
        if net.hotkey not in {n.hotkey for n in await asyncio.to_thread(net.chain.neurons)}:
            log.error("hotkey %s is not registered on netuid %s: register it (btcli subnet register), then start "
                      "again; nothing was created", net.hotkey, getattr(net.chain, "netuid", "?"))
            return 2
        store = await net.pool.own_store()  # our bucket: our account's keys
        await store.create_bucket(args.bucket)
        await net.commit(location)
        log.info("%s %s on run %s, bucket %s, netuid %s", role, net.hotkey, net.spec.run_id, args.bucket,
                 getattr(net.chain, "netuid", "?"))
        if role == "miner":
            worker = Miner(net, args.bucket, config)
        else:
            state = args.state or Path.home() / ".mapreduce" / f"validator-{net.hotkey}.json"
            worker = Validator(net, args.bucket, state, config)
        metrics_server = start_metrics(args, role, net, worker)
        progress.start()
        task = asyncio.create_task(worker.run(windows=windows))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            log.info("stopping at a signal; state is saved after every window")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        else:
            stopper.cancel()
            task.result()
        return 0
    except (ChainError, StorageError, CommitmentError, ProtocolError) as e:
        log.error("%s", describe(e))
        return 1
    except SetupError as e:
        log.error("%s", e)
        return 2
    finally:
        progress.close()
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        await net.pool.close()


def start_metrics(args: argparse.Namespace, role: str, net: Network, worker: Miner | Validator) -> WSGIServer | None:
    """Serve the role's Prometheus metrics if ``--metrics.port`` is given; returns the server (or None).

    The HTTP exporter is started here, in the command line: the protocol package only counts (mapreduce/ops/metrics.py).
    """
    port, host = getattr(args, "metrics.port"), getattr(args, "metrics.host")
    if port is None:
        return None
    from prometheus_client import start_http_server

    from .metrics import ROLE_METRICS

    metrics = ROLE_METRICS[role](net.hotkey, net.spec.run_id, net.pool.stats)
    worker.observers.append(metrics.observe)
    try:
        server, _ = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as e:
        raise SetupError(f"cannot serve metrics on {host}:{port}: {e}; "
                         "choose a free port with --metrics.port") from None
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server


def _main(role: str, argv: list[str] | None) -> int:
    parser = build_parser(role)
    args = parser.parse_args(argv)
    try:  # a value a config dataclass refuses is a usage error, reported before anything starts
        config = role_config(args, role)
        storage_knobs(args)
    except (ValueError, TypeError) as e:
        parser.error(f"--{role}.* / --s3.*: {e}")
    setup_logging(args)
    try:
        return asyncio.run(_serve(role, args, config))
    except KeyboardInterrupt:
        return 130


def miner_main(argv: list[str] | None = None) -> int:
    return _main("miner", argv)


def validator_main(argv: list[str] | None = None) -> int:
    return _main("validator", argv)
