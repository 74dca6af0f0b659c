"""Start the whole system on one machine, run it for a few windows, print what happened, check it was right.

Processes: the embedded S3 server (moto, a subprocess on 127.0.0.1), the local chain (a SQLite file every process
opens), ``miner.py`` x M, ``validator.py`` x 1 and trainer peers x N. Everything a run writes goes under
``runs/<run-id>/``: the spec, the chain file, wallets, each process's log, each peer's gradients.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import boto3
import safetensors.torch
import torch

from storage import EmbeddedS3

from ..chain.local import LocalChain
from ..spec import RunSpec
from ..windows import WindowConfig
from ..wire.formats import FORMATS
from ..wire.keys import report_key
from ..wire.records import decode_report
from ..wire.signing import Signer
from .config import SwarmConfig  # noqa: F401  (re-exported: the orchestrator's configuration)
from .model import make_model

# The keys every process of the swarm publishes for the others (a stand-in for scoped keys: the embedded server
# accepts any key). Each process still writes its own bucket with the account's keys.
PUBLIC_KEY_ID = "MRSWARMPUBLICKEY0000"
PUBLIC_SECRET = "swarm-public-secret-not-the-account-key"

# Where the ``mapreduce`` and ``storage`` packages are (a checkout or site-packages): the processes the swarm
# spawns import them from here, whatever their working directory.
PACKAGES = Path(__file__).resolve().parents[2]
METRICS_HOST = "127.0.0.1"


def package_path() -> str:
    """``PYTHONPATH`` for the processes the swarm spawns: where this package is, then what was there already."""
    return os.pathsep.join([str(PACKAGES), *filter(None, [os.environ.get("PYTHONPATH")])])


def write_wallet(path: Path, name: str, uri: str) -> str:
    """An unencrypted wallet ``name`` (hotkey ``default``) under ``path`` for the key at ``uri``; its hotkey. Local
    runs and tests only: real wallets are made with btcli and hold encrypted keys."""
    from bittensor_wallet import Keypair, Wallet
    w = Wallet(name=name, hotkey="default", path=str(path))
    kp = Keypair.create_from_uri(uri)
    w.set_hotkey(kp, encrypt=False, overwrite=True)
    w.set_coldkeypub(kp, overwrite=True)
    return kp.ss58_address


def free_port(host: str = METRICS_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path


class Swarm:
    def __init__(self, cfg: SwarmConfig):
        self.auto_block_time = cfg.block_time is None
        self.cfg = cfg.with_block_time(os.cpu_count() or 1)
        self.run_id = f"swarm-{int(time.time())}"
        self.dir = Path(cfg.run_dir or Path.cwd() / "runs" / self.run_id).resolve()
        self.procs: list[Proc] = []
        self.metrics_ports: dict[str, int] = {}  # process name -> its Prometheus port (swarm/ops.py)

    # -- set-up ------------------------------------------------------------------------------------------------------

    def _identities(self) -> dict:
        def ident(role: str, i: int) -> dict:
            uri = f"//{self.run_id}/{role}/{i}"
            return {"uri": uri, "hotkey": Signer.from_uri(uri).hotkey, "bucket": f"{self.run_id}-{role}-{i}"}
        return {"miners": [ident("miner", i) for i in range(self.cfg.miners)],
                "validators": [ident("validator", 0)],
                "peers": [ident("peer", i) for i in range(self.cfg.peers)]}

    def prepare(self) -> RunSpec:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        model = make_model(**self.cfg.model)
        spec = RunSpec.for_module(
            self.run_id, model.named_parameters(), segments=self.cfg.segments, redundancy=self.cfg.redundancy,
            wire_dtype=self.cfg.wire_dtype,
            # one machine, one clock: the skew allowance only needs to cover the S3 server's second stamps
            windows=WindowConfig(self.cfg.blocks_per_window, self.cfg.upload_blocks, self.cfg.reduce_blocks,
                                 clock_skew_seconds=0.5))
        spec.save(self.dir / "spec.json")
        ids = self._identities()
        chain = LocalChain.create(self.dir / "chain.sqlite", netuid=1, block_time=self.cfg.block_time)
        for m in ids["miners"]:
            chain.register(m["hotkey"])
        for v in ids["validators"]:
            chain.register(v["hotkey"], stake=1000.0, validator_permit=True)
        for p in ids["peers"]:
            chain.register(p["hotkey"])
        for i, m in enumerate(ids["miners"]):
            write_wallet(self.dir / "wallets", f"miner{i}", m["uri"])
        write_wallet(self.dir / "wallets", "validator0", ids["validators"][0]["uri"])
        config = {**asdict(self.cfg), **ids, "run_dir": str(self.dir)}
        (self.dir / "swarm.json").write_text(json.dumps(config, indent=1))
        self.ids = ids
        self.spec = spec
        return spec

    def _metrics_flags(self, name: str) -> list[str]:
        """``--metrics.port`` (and host) for process ``name``; records the port in ``metrics.json``."""
        port = free_port()
        self.metrics_ports[name] = port
        (self.dir / "metrics.json").write_text(json.dumps(self.metrics_ports, indent=1))
        return ["--metrics.port", str(port), "--metrics.host", METRICS_HOST]

    def _spawn(self, name: str, argv: list[str], env: dict) -> Proc:
        log = self.dir / "logs" / f"{name}.log"
        f = open(log, "w")
        popen = subprocess.Popen([sys.executable, *argv], cwd=self.dir, env=env, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start(self, s3: EmbeddedS3, endpoint: str | None = None) -> None:
        """Start every process; ``endpoint`` is where they reach S3 (a fault proxy), by default the server."""
        # Every process writes its own bucket with the account's keys (MR_S3_*) and publishes other keys for the
        # others (MR_PUBLIC_*), as on a real network: the embedded server accepts any key.
        env = {**os.environ, **replace(s3.config(), endpoint_url=endpoint or s3.endpoint_url).to_env(),
               "MR_PUBLIC_ACCESS_KEY_ID": PUBLIC_KEY_ID, "MR_PUBLIC_SECRET_ACCESS_KEY": PUBLIC_SECRET,
               "PYTHONUNBUFFERED": "1", "PYTHONPATH": package_path()}
        common = ["--spec", str(self.dir / "spec.json"), "--chain.local", str(self.dir / "chain.sqlite"),
                  "--netuid", "1", "--wallet.path", str(self.dir / "wallets"), "--wallet.hotkey", "default",
                  "--s3.connect_timeout", "1",
                  "--s3.read_timeout", str(self.cfg.s3_read_timeout),
                  "--s3.retry_budget", str(self.cfg.s3_retry_budget)]
        for i, m in enumerate(self.ids["miners"]):
            self._spawn(f"miner-{i}", ["-m", "mapreduce", "miner", "--bucket", m["bucket"], "--wallet.name", f"miner{i}", *common,
                                       *self._metrics_flags(f"miner-{i}")], env)
        v = self.ids["validators"][0]
        self._spawn("validator-0", ["-m", "mapreduce", "validator", "--bucket", v["bucket"], "--wallet.name", "validator0",
                                    "--state", str(self.dir / "validator-state.json"), *common,
                                    *self._metrics_flags("validator-0")], env)
        for i in range(self.cfg.peers):
            self._spawn(f"peer-{i}", ["-m", "mapreduce", "peer", "--run-dir", str(self.dir), "--index", str(i)], env)

    def wait_ready(self, chain: LocalChain, timeout: float = 120.0) -> int:
        """Wait until every process has published its bucket, then fix the first window for the peers."""
        wanted = {x["hotkey"] for group in ("miners", "validators", "peers") for x in self.ids[group]}
        deadline = time.monotonic() + timeout
        while not wanted <= set(chain.commitments()):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes not ready after {timeout:.0f}s; see {self.dir / 'logs'}")
            time.sleep(0.2)
        # The next window whose directory lists everyone: its anchor block is still ahead.
        first = self.spec.windows.first_window_anchored_after(chain.current_block())
        (self.dir / "start_window").write_text(str(first))
        return first

    def _check_alive(self, names: tuple[str, ...] = ("miner", "validator", "peer")) -> None:
        for p in self.procs:
            if p.name.startswith(names) and p.popen.poll() is not None and p.popen.returncode != 0:
                tail = p.log.read_text()[-2000:]
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode}:\n{tail}")

    def wait_done(self, s3: EmbeddedS3, first: int, timeout: float,
                  on_window: Callable[[int, dict], None] | None = None) -> dict[int, dict]:
        """Wait for the peers to finish and the validator's report of the last window; return the reports.
        ``on_window(w, report)`` is called once per window, in order, as soon as every peer finished it and the
        validator's report of it is in (or, at the end, for a window that never got both)."""
        deadline = time.monotonic() + timeout
        last = first + self.cfg.windows - 1
        client = boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        v = self.ids["validators"][0]
        reports: dict[int, dict] = {}
        closed = first  # the next window to hand to on_window

        def close_windows(final: bool) -> None:
            nonlocal closed
            peer_windows = self.peer_windows()
            while closed <= last and (final or (closed in reports
                                                and len(peer_windows.get(closed, [])) == self.cfg.peers)):
                if on_window is not None:
                    on_window(closed, reports.get(closed, {}))
                closed += 1
        while time.monotonic() < deadline:
            self._check_alive()
            peers_done = all(p.popen.poll() is not None for p in self.procs if p.name.startswith("peer"))
            for w in range(first, last + 1):
                if w not in reports:
                    key = str(report_key(self.run_id, w, v["hotkey"]))
                    try:
                        data = client.get_object(Bucket=v["bucket"], Key=key)["Body"].read()
                    except client.exceptions.NoSuchKey:
                        continue
                    reports[w] = decode_report(data, self.run_id, w, v["hotkey"])  # signed by the validator
            close_windows(final=False)
            if peers_done and last in reports:
                close_windows(final=True)
                return reports
            time.sleep(0.5)
        raise RuntimeError(f"swarm did not finish within {timeout:.0f}s; see {self.dir / 'logs'}")

    def stop(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                os.killpg(p.popen.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.popen.pid, signal.SIGKILL)
                p.popen.wait()

    # -- results -----------------------------------------------------------------------------------------------------

    def peer_windows(self) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        for i in range(self.cfg.peers):
            path = self.dir / "peers" / f"p{i}" / "windows.jsonl"
            for line in path.read_text().splitlines() if path.exists() else []:
                d = json.loads(line)
                d["peer"] = i
                out.setdefault(d["window"], []).append(d)
        return out

    def reference_check(self, window: int) -> tuple[float, float]:
        """(largest |peer average - reference mean|, tolerance) over every peer, for one window. The reference is
        the mean of the peers' gradients; with error feedback (topk), of what the peers sent (gradient plus
        residual, decoded: trainer.py saves it), since a sparse input is far from its gradient by design: the
        check is then exact up to fp32 accumulation and the bf16 output."""
        grads = [safetensors.torch.load_file(self.dir / "peers" / f"p{i}" / f"w{window}.safetensors")
                 for i in range(self.cfg.peers)]
        sent = "sent" if FORMATS[self.cfg.wire_dtype].error_feedback else "local"
        local = torch.stack([g[sent].double() for g in grads])
        reference = local.mean(0)
        worst = max(float((g["averaged"].double() - reference).abs().max()) for g in grads)
        return worst, tolerance(local, self.cfg.wire_dtype)


def tolerance(local: torch.Tensor, wire_dtype: str) -> float:
    """The stated bound: fp32 accumulation of P inputs in a fixed order, plus the wire format's rounding.

    Each of the P additions rounds once in fp32 (relative 2^-24) on a partial sum no larger than P * max|g|, so
    the sum is off by at most P^2 * 2^-24 * max|g| and the mean by P * 2^-24 * max|g|; the division and the cast
    to fp32 add 2^-24 * max|g|. The inputs' and the output's rounding (a bf16 wire: 2^-8 each; int8: half a
    quantization step, max|g| / 254, then a bf16 output) add theirs (``WireFormat.rounding``). For topk, ``local``
    is what the peers sent (exact: no input rounding) and only the bf16 output's is added.
    """
    p = local.shape[0]
    scale = float(local.abs().max())
    inputs, output = FORMATS[wire_dtype].rounding()
    return ((p + 1) * 2.0 ** -24 + inputs + output) * scale
