"""What the local swarm adds for operators: metrics ports for its miners and validator, and plots at its end.

Each miner and the validator serve Prometheus metrics on a free port of 127.0.0.1 (``--metrics.port``); the ports
are printed at start and kept in ``<run dir>/metrics.json``, so the endpoints can be scraped while the swarm runs.
At the end the swarm runs ``python -m mapreduce report`` on its validator's bucket, as an operator would, and
draws the peers' loss curve; the figures go to ``<run dir>/plots/`` and the command to ``logs/report.log``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from storage import EmbeddedS3

from .orchestrator import METRICS_HOST, Swarm, package_path


def metrics_urls(swarm: Swarm) -> str:
    return ", ".join(f"{name} http://{METRICS_HOST}:{port}/metrics" for name, port in swarm.metrics_ports.items())


def report_command(swarm: Swarm, s3: EmbeddedS3, first: int) -> tuple[list[str], dict[str, str]]:
    """The ``python -m mapreduce report`` command line (and its S3 variables) for the swarm's validator bucket:
    the windows of the table (not the idle ones before the peers started or after they stopped), the miners named
    as in the table (m0, m1, ...)."""
    validator = swarm.ids["validators"][0]
    argv = ["-m", "mapreduce", "report", "--bucket", validator["bucket"], "--run", swarm.run_id,
            "--validator", validator["hotkey"], "--windows", f"{first}:{first + swarm.cfg.windows - 1}",
            "--out", str(swarm.dir / "plots")]
    for i, miner in enumerate(swarm.ids["miners"]):
        argv += ["--label", f"{miner['hotkey']}=m{i}"]
    return argv, s3.config().to_env()


def write_plots(swarm: Swarm, s3: EmbeddedS3, first: int) -> list[Path]:
    """Run ``python -m mapreduce report`` on the validator's bucket, exactly as an operator would, and draw the
    peers' loss curve; both into ``<run dir>/plots``."""
    from ..ops.plots import plot_loss  # matplotlib only when plotting: the swarm's peers import this package too

    argv, env = report_command(swarm, s3, first)
    done = subprocess.run([sys.executable, *argv], cwd=swarm.dir, env={**os.environ, **env, "PYTHONPATH": package_path()},
                          capture_output=True, text=True, timeout=120)
    shown = f"MR_S3_ENDPOINT_URL={s3.endpoint_url} MR_S3_ADDRESSING_STYLE=path python {' '.join(argv)}"  # no keys
    (swarm.dir / "logs" / "report.log").write_text(f"$ {shown}\n{done.stdout}{done.stderr}")
    if done.returncode != 0:
        raise RuntimeError(f"the report command failed: {(done.stdout + done.stderr).strip()[-500:]}")
    paths = [Path(line.split(" ", 1)[1]) for line in done.stdout.splitlines() if line.startswith("wrote ")]
    windows = range(first, first + swarm.cfg.windows)
    rows = [r for w, rs in swarm.peer_windows().items() if w in windows for r in rs]
    if rows:
        paths.append(plot_loss(rows, swarm.dir / "plots" / "loss.png", title=f"swarm {swarm.run_id}: loss per window"))
    return paths


def plots_line(swarm: Swarm, s3: EmbeddedS3, first: int) -> str:
    """Draw the plots and say where they are, in one line; a plotting failure is reported, never raised, so it
    cannot hide the run's verdict."""
    try:
        paths = write_plots(swarm, s3, first)
    except Exception as e:
        return f"plots: none ({type(e).__name__}: {e})"
    return f"plots: {', '.join(str(p) for p in paths)}" if paths else "plots: none (no reports or losses)"
