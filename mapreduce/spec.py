"""The run spec: what every participant of a run agrees on before the first window.

Named tensors with their shapes fix the flat parameter vector (tensors concatenated in the listed order); the
segment count and redundancy fix the plan; the wire dtype fixes what goes over S3; the window config fixes the
clock; the allow and deny lists and the minimum validator stake fix who takes part (every participant applies them
the same way, so they may change the plan, unlike a process's own ``--whitelist``/``--blacklist`` flags, which only
narrow what that process accepts; see :class:`mapreduce.directory.Admission`). A spec is plain JSON so operators can
publish it beside their bucket and pass it with ``--spec``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from .windows import WindowConfig
from .wire.formats import FORMATS, WireFormat
from .wire.names import check_hotkey, check_run_id



@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    tensors: tuple[TensorSpec, ...]
    segments: int
    redundancy: int = 2
    wire_dtype: str = "float32"
    windows: WindowConfig = field(default_factory=WindowConfig)
    # Readers refuse anything larger before downloading it; see codec.max_object_bytes for the derived cap.
    max_header_bytes: int = 1 << 20
    # Every value of every input must lie within [-max_abs_value, max_abs_value], or the input is refused
    # (out_of_bounds): far beyond any gradient of a run that trains, and small enough that the fp32 sum of
    # 3.4e38 / max_abs_value inputs (3.4e29 at the default) cannot overflow, so the mean of valid inputs is finite.
    max_abs_value: float = 1e9
    # Who takes part. Empty allow list: every registered hotkey; the deny list always wins.
    allow_hotkeys: tuple[str, ...] = ()
    deny_hotkeys: tuple[str, ...] = ()
    # Peers and miners trust the reports of validators with a validator permit and at least this stake.
    min_validator_stake: float = 0.0
    # The version_key validators send with their weights: the subnet owner's weights_version hyperparameter, which
    # the chain requires weights to meet (not the installed SDK's version, which changes with every upgrade).
    weights_version: int = 0

    def __post_init__(self) -> None:
        check_run_id(self.run_id)
        if not self.tensors:
            raise ValueError("a run spec needs at least one tensor")
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            raise ValueError("tensor names must be unique")
        if any(d <= 0 for t in self.tensors for d in t.shape):
            raise ValueError("tensor dimensions must be positive")
        if not 1 <= self.segments <= self.numel:
            raise ValueError(f"segments must be between 1 and numel ({self.numel})")
        if self.redundancy < 1:
            raise ValueError("redundancy must be >= 1")
        if self.wire_dtype not in FORMATS:
            raise ValueError(f"wire_dtype must be one of {sorted(FORMATS)}")
        for name in ("allow_hotkeys", "deny_hotkeys"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} must be a list of hotkeys, not a string")
            # JSON gives lists; a frozen spec keeps tuples so it stays hashable and compares equal after a round trip.
            object.__setattr__(self, name, tuple(check_hotkey(h) for h in value))
        both = set(self.allow_hotkeys) & set(self.deny_hotkeys)
        if both:
            raise ValueError(f"hotkeys on both the allow and the deny list: {sorted(both)[:3]}")
        if not (isinstance(self.min_validator_stake, (int, float)) and math.isfinite(self.min_validator_stake)
                and self.min_validator_stake >= 0):
            raise ValueError("min_validator_stake must be a finite number >= 0")
        if isinstance(self.weights_version, bool) or not isinstance(self.weights_version, int) \
                or not 0 <= self.weights_version < 2 ** 64:
            raise ValueError("weights_version must be an integer in [0, 2^64) (the chain's u64 version_key)")
        if not (isinstance(self.max_abs_value, (int, float)) and 0 < self.max_abs_value <= 1e30):
            raise ValueError("max_abs_value must be a number in (0, 1e30]: the sum of a million inputs at the bound "
                             "must stay finite in fp32")

    @property
    def numel(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def wire(self) -> WireFormat:
        """How inputs and outputs travel (mapreduce/wire/formats.py)."""
        return FORMATS[self.wire_dtype]

    @classmethod
    def for_module(cls, run_id: str, named: Iterable[tuple[str, torch.Tensor]], **kw: Any) -> "RunSpec":
        """The spec of a model's parameters (``module.named_parameters()``), in their registration order."""
        tensors = tuple(TensorSpec(name, tuple(p.shape)) for name, p in named)
        return cls(run_id=run_id, tensors=tensors, **kw)

    def to_json(self) -> str:
        d = asdict(self)
        d["tensors"] = [{"name": t.name, "shape": list(t.shape)} for t in self.tensors]
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        d = json.loads(text)
        d["tensors"] = tuple(TensorSpec(t["name"], tuple(t["shape"])) for t in d["tensors"])
        d["windows"] = WindowConfig(**d.get("windows", {}))
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "RunSpec":
        return cls.from_json(Path(path).read_text())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())
