"""Running the ops commands as a user would: a subprocess, S3 settings in the environment, no .env around."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def s3_env(s3) -> dict[str, str]:
    """The process environment for commands talking to the embedded S3 server ``s3``."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **s3.config().to_env()}


def mapreduce(*argv: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m mapreduce ARGV`` from ``cwd`` (a directory without a .env file)."""
    return subprocess.run([sys.executable, "-m", "mapreduce", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def is_png(path: Path, min_bytes: int = 5000) -> bool:
    """A PNG file with some content (an empty figure is already a few KiB; a real plot tens)."""
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) >= min_bytes
