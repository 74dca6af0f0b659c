"""The README's peer, examples/peer.py, run as a user runs it: its own process, outside the checkout, against the
local swarm (embedded S3 server, local chain, miner and validator processes)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from mapreduce.chain.local import LocalChain
from mapreduce.swarm.orchestrator import PUBLIC_KEY_ID, PUBLIC_SECRET, Swarm, SwarmConfig, write_wallet
from storage import EmbeddedS3

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "peer.py"


def test_the_readme_peer_trains_with_another_against_the_local_swarm(tmp_path) -> None:
    # The package is on PYTHONPATH as an installed package would be on sys.path; the working directory is not the
    # checkout, so nothing is found by accident.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    empty_env = tmp_path / "empty.env"  # S3 settings from the environment alone
    empty_env.write_text("")
    spec_out = subprocess.run([sys.executable, str(EXAMPLE), "spec", "--run-id", "example-run", "--out", "run.json"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert spec_out.returncode == 0, spec_out.stderr[-2000:]
    written = json.loads((tmp_path / "run.json").read_text())

    swarm = Swarm(SwarmConfig(peers=0, miners=2, windows=4, run_dir=tmp_path / "swarm"))
    spec = swarm.prepare()
    # The example's model is the demo's: the spec it writes names the same tensors the swarm's run averages.
    assert written["tensors"] == json.loads(spec.to_json())["tensors"]
    assert written["run_id"] == "example-run"
    with EmbeddedS3() as s3:
        chain = LocalChain.open(swarm.dir / "chain.sqlite")
        procs = []
        try:
            swarm.start(s3)
            swarm.wait_ready(chain)
            # Our account (MR_S3_*) and the read keys we publish for others (MR_PUBLIC_*), as in a user's .env.
            env.update({**s3.config().to_env(), "MR_PUBLIC_ACCESS_KEY_ID": PUBLIC_KEY_ID,
                        "MR_PUBLIC_SECRET_ACCESS_KEY": PUBLIC_SECRET})
            for i in range(2):
                hotkey = write_wallet(tmp_path / "wallets", f"peer{i}", f"//{swarm.run_id}/readme-peer/{i}")
                chain.register(hotkey)  # an admin action on the local chain; `btcli subnet register` on a real one
                procs.append(subprocess.Popen(
                    [sys.executable, str(EXAMPLE), "train", "--spec", str(swarm.dir / "spec.json"),
                     "--bucket", f"{swarm.run_id}-readme-peer-{i}", "--netuid", "1", "--wallet.name", f"peer{i}",
                     "--wallet.hotkey", "default", "--wallet.path", str(tmp_path / "wallets"),
                     "--chain.local", str(swarm.dir / "chain.sqlite"), "--env-file", str(empty_env),
                     "--steps", "2"],
                    cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            outputs = [p.communicate(timeout=240) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            swarm.stop()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
        steps = re.findall(r"step (\d): window (\d+), loss ([\d.]+), averaged over (\d+) peers", out)
        assert [s[0] for s in steps] == ["0", "1"], out
        # Each started when the other did, give or take a window: of two windows, at least one averaged both.
        assert any(s[3] == "2" for s in steps), out
