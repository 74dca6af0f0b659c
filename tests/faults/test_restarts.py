"""SIGKILL a miner and the validator mid-window and restart them: they carry on, nothing is counted twice, the
validator's scores survive. Miner and validator are real ``miner.py`` / ``validator.py`` processes."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from mapreduce.wire import keys
from mapreduce.flat import flatten
from mapreduce.errors import InvalidObject
from mapreduce.peer import Peer
from mapreduce.wire.records import decode_report
from mapreduce.scoring import ScoringConfig
from mapreduce.swarm.orchestrator import write_wallet
from storage import StorageError
from tests.support.cluster import PUBLIC_KEYS, peer_gradients

ROOT = Path(__file__).resolve().parents[2]


class Process:
    def __init__(self, argv: list[str], env: dict, log: Path):
        self.argv, self.env, self.log = argv, env, log
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        f = open(self.log, "a")
        self.popen = subprocess.Popen([sys.executable, *self.argv], cwd=ROOT, env=self.env, stdout=f,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


async def test_killed_miner_and_validator_carry_on(cluster_factory, embedded_s3, tmp_path, reliability) -> None:
    c = await cluster_factory(peers=3, miners=2, redundancy=2, segments=4, block_time=0.5, numel=100_000)
    spec_path = tmp_path / "spec.json"
    c.spec.save(spec_path)
    wallets = tmp_path / "wallets"
    for i in range(2):
        write_wallet(wallets, f"miner{i}", f"//{c.spec.run_id}/miners/{i}")
    write_wallet(wallets, "validator0", f"//{c.spec.run_id}/validators/0")
    env = {**os.environ, **embedded_s3.config().to_env(), "PYTHONUNBUFFERED": "1",
           "MR_PUBLIC_ACCESS_KEY_ID": PUBLIC_KEYS[0], "MR_PUBLIC_SECRET_ACCESS_KEY": PUBLIC_KEYS[1]}
    (tmp_path / "empty.env").write_text("")  # not the checkout's .env, if a developer has one
    common = ["--spec", str(spec_path), "--chain.local", str(c.chain.path), "--netuid", "1",
              "--wallet.path", str(wallets), "--wallet.hotkey", "default", "--env-file", str(tmp_path / "empty.env")]
    miners = [Process(["miner.py", "--bucket", c.bucket_of("miners", i), "--wallet.name", f"miner{i}", *common],
                      env, tmp_path / f"miner{i}.log") for i in range(2)]
    state = tmp_path / "validator-state.json"
    validator = Process(["validator.py", "--bucket", c.bucket_of("validators", 0), "--wallet.name", "validator0",
                         "--state", str(state), *common], env, tmp_path / "validator.log")
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(3)]
    try:
        for p in [*miners, validator]:
            p.start()
        wanted = {s.hotkey for s in c.signers["miners"] + c.signers["validators"]}
        for _ in range(600):
            if wanted <= set(c.chain.commitments()):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("processes never published their buckets: " + miners[0].log.read_text()[-2000:])
        first = await c.next_window()
        windows = [first, first + 1, first + 2, first + 3]
        grads = {w: peer_gradients(c.spec, 3, seed=w) for w in windows}
        net = peers[0].net

        async def chaos() -> None:
            # miner 0 dies in the middle of the first window's reduce phase, and comes straight back
            await net.wait_for_block(c.spec.windows.phases(first).upload_deadline + 1)
            miners[0].kill()
            miners[0].start()
            # the validator dies while it watches the second window, and comes straight back (a process start
            # takes seconds here, so it resumes at the first window it can still watch from its upload deadline)
            await net.wait_for_block(c.spec.windows.phases(first + 1).start_block + 1)
            validator.kill()
            validator.start()

        chaos_task = asyncio.create_task(chaos())
        results = {}
        for w in windows:
            results[w] = await asyncio.gather(*(p.allreduce(g, window=w) for p, g in zip(peers, grads[w])))
        await chaos_task

        for w in windows:
            mean = torch.stack([flatten(c.spec, g).double() for g in grads[w]]).mean(0)
            scale = max(float(t.abs().max()) for g in grads[w] for t in g.values())
            for r in results[w]:
                assert not r.fallbacks, f"window {w}: {r.segments}"
                assert float((r.flat.double() - mean).abs().max()) <= 4 * 2.0 ** -24 * scale
        # no output of the killed miner counts an input twice or is half-written: each decodes with 3 inputs
        plan = await net.plan(first)
        killed = c.signers["miners"][0].hotkey
        bucket = await net.bucket(first, killed)
        outputs = 0
        for seg in plan.segments_for(killed):
            key = str(keys.output_key(c.spec.run_id, first, seg.index, killed))
            objs = await bucket.store.list(bucket.name, key)
            if objs:
                outputs += 1
                d = __import__("mapreduce.wire.codec", fromlist=["decode"]).decode(
                    await bucket.store.get(bucket.name, key), key, net.output_expect(seg, killed, 3))
                assert d.meta.extra["count"] == "3"
        log = miners[0].log.read_text()
        assert f"window {first + 1}:" in log and f"window {first + 2}:" in log, log[-2000:]

        # the validator's state survived its restart: it resumed after the last window it had finished
        for _ in range(100):
            if state.exists() and json.loads(state.read_text())["last_window"] >= first + 3:
                break
            await asyncio.sleep(0.2)
        saved = json.loads(state.read_text())
        assert saved["last_window"] >= first + 3
        assert all(v > 0 for v in saved["ema"].values()) and len(saved["ema"]) == 2
        vbucket = await net.bucket(first, c.signers["validators"][0].hotkey)
        reports = {}
        for w in windows:
            key = str(keys.report_key(c.spec.run_id, w, c.signers["validators"][0].hotkey))
            try:
                reports[w] = decode_report(await vbucket.store.get(vbucket.name, key), c.spec.run_id, w,
                                           c.signers["validators"][0].hotkey)
            except (StorageError, InvalidObject):  # not written (the validator was down then)
                pass
        assert first in reports
        resumed = min(w for w in reports if w > first)
        assert resumed <= first + 3 and reports[resumed]["checks"], "the restarted validator judged a window"
        # EMA continued from the state saved before the kill, not from zero
        alpha = ScoringConfig().ema_alpha
        before = reports[max(w for w in reports if w < resumed)]["ema"]
        for m, score in reports[resumed]["scores"].items():
            assert abs(reports[resumed]["ema"][m] - (alpha * score + (1 - alpha) * before.get(m, 0.0))) < 1e-9
        reliability("fault", "SIGKILL a miner mid-reduce, restart", "carried on next window; no double counting",
                    f"{outputs} of its {len(plan.segments_for(killed))} outputs of that window written, each with "
                    "3 inputs; peers used the other replica where needed")
        reliability("fault", "SIGKILL the validator mid-window, restart", "scores and last window survived",
                    f"killed in window {first + 1}, resumed judging at window {resumed} (process start ~s); "
                    "EMA continued from the saved state")
    finally:
        for p in [*miners, validator]:
            p.stop()
