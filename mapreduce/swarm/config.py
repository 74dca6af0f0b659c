"""The local swarm's configuration: a plain dataclass, importable without torch (``python -m mapreduce --help``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SwarmConfig:
    peers: int = 4
    miners: int = 3
    windows: int = 5
    # S3 stamps objects to the second, so the reduce phase must hold a ~1.75 s settling wait (see windows.py)
    block_time: float = 1.0
    blocks_per_window: int = 10
    upload_blocks: int = 4
    reduce_blocks: int = 4
    segments: int = 6
    redundancy: int = 2
    wire_dtype: str = "float32"
    fallback: str = "reduce"
    lr: float = 0.01
    batch: int = 256
    model: dict = field(default_factory=lambda: {"dim": 32, "hidden": 128, "classes": 10})
    run_dir: Path | None = None
    timeout: float | None = None  # seconds; default: start-up allowance plus twice the run's nominal length
    # Share of S3 requests answered 503 through a fault proxy between every process and the server (0: none);
    # a fifth of that share gets its connection reset, a hundredth stalls for 3 s.
    faults: float = 0.0
    # Storage timeouts of every process: local blocks are a second, so a request must give up quickly.
    s3_read_timeout: float = 2.0
    s3_retry_budget: float = 10.0
