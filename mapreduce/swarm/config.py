"""The local swarm's configuration: a plain dataclass, importable without torch (``python -m mapreduce --help``).

Every field is a ``python -m mapreduce swarm`` flag (``--block-time`` for ``block_time``), its meaning and default
taken from the field: :func:`add_swarm_flags` and :func:`swarm_config_from_args`.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..ops.flags import argument_for


@dataclass
class SwarmConfig:
    peers: int = field(default=4, metadata={"help": "training peers, one process each"})
    miners: int = field(default=3, metadata={"help": "miners, one process each"})
    windows: int = field(default=5, metadata={"help": "windows to train for (one optimizer step each)"})
    # S3 stamps objects to the second, so the reduce phase must hold a ~1.75 s settling wait (see windows.py)
    block_time: float | None = field(default=None, metadata={
        "help": "seconds per local block; default: 1.0, longer for more processes than this machine has cores "
                "for (swarm.config.auto_block_time)"})
    blocks_per_window: int = field(default=10, metadata={"help": "blocks per window"})
    upload_blocks: int = field(default=4, metadata={"help": "blocks of each window's upload phase"})
    reduce_blocks: int = field(default=4, metadata={"help": "blocks of each window's reduce phase"})
    segments: int = field(default=6, metadata={"help": "segments the gradient is cut into"})
    redundancy: int = field(default=2, metadata={"help": "miners that reduce each segment"})
    wire_dtype: typing.Literal["float32", "bfloat16", "int8", "topk"] = field(default="float32", metadata={
        "help": "wire format: float32, bfloat16, int8 inputs (a scale per 256 elements) with bf16 outputs, or topk "
                "(64 of each 4096 elements, fp32 values and int16 indexes, with error feedback; bf16 outputs) "
                "(mapreduce/wire/formats.py)"})
    fallback: typing.Literal["reduce", "own"] = field(default="reduce", metadata={
        "help": "what a peer does with a segment no miner delivered: reduce it itself, or keep its own gradient"})
    lr: float = field(default=0.01, metadata={"help": "the peers' Adam learning rate"})
    batch: int = field(default=256, metadata={
        "help": "examples per peer per step, drawn from its own shard of the digits (all of it when smaller)"})
    # dim and classes are the digits' (swarm/data.py): 8x8 pixels, 10 classes
    model: dict = field(default_factory=lambda: {"dim": 64, "hidden": 128, "classes": 10}, metadata={
        "help": "the MLP's sizes", "flag": False})
    run_dir: Path | None = field(default=None, metadata={"help": "where the run writes; default: runs/<run-id>"})
    timeout: float | None = field(default=None, metadata={
        "help": "seconds before the swarm gives up; default: start-up allowance plus twice the run's length"})
    faults: float = field(default=0.0, metadata={
        "help": "share of S3 requests answered 503 through a fault proxy (a fifth of it reset, a hundredth "
                "stalled 3 s; the soak: --windows 30 --faults 0.1)"})
    # Storage timeouts of every process: local blocks are a second, so a request must give up quickly.
    s3_read_timeout: float = field(default=2.0, metadata={"help": "every process's S3 read timeout, in seconds"})
    s3_retry_budget: float = field(default=10.0, metadata={
        "help": "seconds after which every process stops retrying an S3 request"})

    @property
    def processes(self) -> int:
        return self.peers + self.miners + 1

    def with_block_time(self, cores: int) -> "SwarmConfig":
        """This config with its block time set: the one given, else :func:`auto_block_time`."""
        if self.block_time is not None:
            return self
        return dataclasses.replace(self, block_time=auto_block_time(self.processes, cores))


def auto_block_time(processes: int, cores: int) -> float:
    """1 s per block while there are at most 4 processes per core; beyond, in proportion. Each window's phases must
    hold the slowest process's work, and on a small machine that grows with how many processes share a core: on 2
    cores, 8 processes (4 peers, 3 miners, a validator) fit 1 s blocks; 13 (8 peers, 4 miners) need 1.625 s."""
    return max(1.0, round(processes / (4 * max(1, cores)), 3))


def add_swarm_flags(parser: argparse.ArgumentParser) -> None:
    """``--<field>`` (underscores as dashes) for every field of :class:`SwarmConfig`, with its meaning and default."""
    hints = typing.get_type_hints(SwarmConfig)
    for f in dataclasses.fields(SwarmConfig):
        if not f.metadata.get("flag", True):
            continue
        meaning = f.metadata["help"] + ("" if f.default is None else f" (default: {f.default})")  # None: it says
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=f.default,
                            help=meaning.replace("%", "%%"), **argument_for(hints[f.name]))


def swarm_config_from_args(args: argparse.Namespace) -> SwarmConfig:
    return SwarmConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SwarmConfig)
                          if f.metadata.get("flag", True)})
