"""Installable, not only a checkout: the package installed into a temporary directory runs from outside the checkout.

pip builds the package from pyproject.toml (no dependencies: they are the suite's own virtualenv) into a target
directory; the roles' ``--help`` and a short local swarm then run with only that directory on ``PYTHONPATH`` and a
working directory that is not the checkout, so nothing is found by accident.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_package_runs_the_roles_and_a_swarm_outside_the_checkout(tmp_path) -> None:
    # Built from a copy of what the package is made of: a build leaves its scratch (build/, *.egg-info) beside the
    # sources, and the checkout stays clean.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "requirements.txt"):
        shutil.copy(ROOT / name, src / name)
    for package in ("mapreduce", "storage"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    assert (site / "mapreduce" / "wire" / "codec.py").exists() and (site / "storage" / "client.py").exists()
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MR_")}
    env["PYTHONPATH"] = str(site)

    def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv], cwd=work, env=env, capture_output=True, text=True,
                              timeout=timeout)

    where = run("-c", "import mapreduce, storage; print(mapreduce.__file__); print(storage.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    for role in ("miner", "validator"):
        helped = run("-m", "mapreduce", role, "--help")
        assert helped.returncode == 0, helped.stderr[-2000:]
        assert "--bucket" in helped.stdout and "--spec" in helped.stdout
    # Two windows: the swarm checks that the loss goes down, which one window cannot show.
    swarm = run("-m", "mapreduce", "swarm", "--peers", "2", "--miners", "2", "--windows", "2", timeout=300)
    assert swarm.returncode == 0, swarm.stdout[-3000:] + swarm.stderr[-3000:]
    runs = list((work / "runs").iterdir())  # the run's files land where it was started, not in site-packages
    assert len(runs) == 1 and (runs[0] / "logs").is_dir()
    assert not (site / "runs").exists()
    # The processes it spawned imported the installed copy.
    assert re.search(r"honest", swarm.stdout), swarm.stdout[-2000:]
