"""Flags generated from the config dataclasses: every field of MinerConfig, ValidatorConfig (its scoring and hosting
configs included) and PeerConfig is a flag listed in ``--help`` with its default and meaning, and setting it changes
the config built from the command line."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Literal

import pytest

from mapreduce.miner import MinerConfig
from mapreduce.ops.cli import build_parser, miner_main, role_config, storage_knobs
from mapreduce.ops.flags import add_dataclass_flags, dataclass_from_args, flag_fields
from mapreduce.peer import PeerConfig
from mapreduce.validator import ValidatorConfig
from storage import RetryConfig, TransferConfig

REQUIRED = ["--bucket", "b", "--spec", "run.json"]


def peer_parser() -> argparse.ArgumentParser:
    """What a peer program does to take ``--peer.*`` flags."""
    p = argparse.ArgumentParser(prog="peer")
    add_dataclass_flags(p, "peer", PeerConfig)
    return p


PARSERS = {"miner": (lambda: build_parser("miner"), MinerConfig),
           "validator": (lambda: build_parser("validator"), ValidatorConfig),
           "peer": (peer_parser, PeerConfig)}


def leaves(cls: type, instance: Any, prefix: str) -> list[tuple[str, dataclasses.Field, Any, Any]]:
    """``(flag, field, type, default)`` of every non-dataclass field, nested configs walked."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out += leaves(hints[f.name], value, f"{prefix}.{f.name}")
        else:
            out.append((f"--{prefix}.{f.name}", f, hints[f.name], value))
    return out


def shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def help_lines(parser: argparse.ArgumentParser, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One line per option of ``--help``: its flags and its whole help text."""
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping; a long flag still puts its help on the next line
    out: list[str] = []
    in_option = False  # a group's title and description follow its last option: not part of it
    for line in parser.format_help().split("options:", 1)[1].splitlines():
        indent, line = len(line) - len(line.lstrip()), line.strip()
        if line.startswith("-"):
            out.append(line)
            in_option = True
        elif not line or indent <= 2:
            in_option = False
        elif in_option:
            out[-1] += " " + line
    return out


def entry(lines: list[str], flag: str) -> str:
    found = [line for line in lines if line.startswith(flag + " ") or line.startswith(flag + ",")]
    assert len(found) == 1, f"{flag} is not listed once in --help: {found}"
    return found[0]


@pytest.mark.parametrize("role", sorted(PARSERS))
def test_every_config_field_is_in_help_with_its_default_and_meaning(role: str, monkeypatch) -> None:
    make, cls = PARSERS[role]
    lines = help_lines(make(), monkeypatch)
    fields = leaves(cls, cls(), role)
    assert len(fields) >= len(dataclasses.fields(cls))
    for flag, f, _, default in fields:
        meaning = f.metadata.get("help", "")
        assert meaning and "\n" not in meaning, f"{flag}: its field needs a one-line metadata['help']"
        line = entry(lines, flag)
        assert meaning in line, f"{flag}: --help does not give its meaning"
        assert line.endswith(f"(default: {shown(default)})"), f"{flag}: --help does not give its default: {line}"


def test_validator_flags_include_the_nested_configs() -> None:
    p = build_parser("validator")
    dests = {a.dest for a in p._actions}
    assert {"validator.scoring.ema_alpha", "validator.scoring.weights_every", "validator.hosting.check_timeout",
            "validator.evidence_lead"} <= dests
    assert not any(d.startswith("miner.") for d in dests)
    assert not any(d.startswith("validator.") for d in {a.dest for a in build_parser("miner")._actions})


def changed(kind: Any, default: Any) -> tuple[list[str], Any]:
    """Command-line words that set a field of type ``kind`` to something else than ``default``, and that value."""
    if kind is bool:
        return (["--no-{}"] if default else ["--{}"]), not default
    if typing.get_origin(kind) is Literal:
        other = next(c for c in typing.get_args(kind) if c != default)
        return ["--{}", str(other)], other
    if kind is int:
        return ["--{}", str(default + 3)], default + 3
    if kind is float:
        return ["--{}", str(default + 0.5)], default + 0.5
    if kind == int | None:
        return ["--{}", "7"], 7
    raise AssertionError(f"no test value for {kind}")


def build(role: str, argv: list[str]) -> Any:
    make, cls = PARSERS[role]
    args = make().parse_args((REQUIRED if role != "peer" else []) + argv)
    return role_config(args, role) if role != "peer" else dataclass_from_args(args, "peer", cls)


@pytest.mark.parametrize("role", sorted(PARSERS))
def test_every_flag_sets_its_field(role: str) -> None:
    _, cls = PARSERS[role]
    assert build(role, []) == cls()  # no flag: the dataclass's defaults, exactly
    for flag, _, kind, default in leaves(cls, cls(), role):
        words, value = changed(kind, default)
        argv = [w.format(flag[2:]) for w in words]
        config = build(role, argv)
        path = flag[2:].split(".")[1:]
        # the field changed, and nothing else
        assert config == _set(cls(), path, value), f"{' '.join(argv)} built {config}"


def _set(obj: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    return dataclasses.replace(obj, **{path[0]: _set(getattr(obj, path[0]), path[1:], value)})


def test_examples_from_the_brief() -> None:
    assert build("miner", ["--miner.lookahead", "3"]) == MinerConfig(lookahead=3)
    v = build("validator", ["--validator.scoring.weights_every", "2", "--validator.concurrency", "4"])
    assert (v.scoring.weights_every, v.concurrency, v.hosting) == (2, 4, ValidatorConfig().hosting)
    assert build("peer", ["--peer.fallback", "own"]) == PeerConfig(fallback="own")
    with pytest.raises(SystemExit):
        peer_parser().parse_args(["--peer.fallback", "sideways"])
    with pytest.raises(SystemExit):
        build_parser("miner").parse_args(REQUIRED + ["--miner.lookahead", "two"])


def test_a_value_the_dataclass_refuses_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        miner_main(REQUIRED + ["--s3.part_size", "1024"])  # below S3's 5 MiB minimum: TransferConfig refuses it
    assert e.value.code == 2 and "part_size" in capsys.readouterr().err


# -- --s3.* ----------------------------------------------------------------------------------------------------------


def test_s3_flags_cover_transfer_and_retry_configs(monkeypatch) -> None:
    lines = help_lines(build_parser("miner"), monkeypatch)
    for cls in (TransferConfig, RetryConfig):
        for dest, f, _ in flag_fields(cls, "s3", exclude=("seed",)):
            line = entry(lines, f"--{dest}")
            assert f.metadata["help"] in line and "(default: " in line
    assert "--s3.seed" not in "\n".join(lines)  # reproducibility in tests, not an operator's knob


def old_knobs(read: float = 30.0, connect: float = 5.0, budget: float = 120.0) -> tuple[TransferConfig, RetryConfig]:
    """What the three hand-written --s3.* flags gave before they were generated."""
    return (TransferConfig(connect_timeout=connect, read_timeout=read, operation_timeout=max(10 * read, budget)),
            RetryConfig(total_budget=budget, max_delay=min(10.0, read)))


def test_s3_flags_keep_their_old_names_and_meaning() -> None:
    p = build_parser("validator")
    assert storage_knobs(p.parse_args(REQUIRED)) == old_knobs() == (TransferConfig(), RetryConfig())
    argv = ["--s3.connect_timeout", "1", "--s3.read_timeout", "2", "--s3.retry_budget", "7"]  # as the swarm runs
    assert storage_knobs(p.parse_args(REQUIRED + argv)) == old_knobs(2.0, 1.0, 7.0)
    assert storage_knobs(p.parse_args(REQUIRED + ["--s3.read_timeout", "60"])) == old_knobs(60.0)
    transfer, retry = storage_knobs(p.parse_args(REQUIRED + ["--s3.read_timeout", "60", "--s3.operation_timeout", "90",
                                                             "--s3.max_delay", "3", "--no-s3.jitter",
                                                             "--s3.total_budget", "50"]))
    assert (transfer.operation_timeout, retry.max_delay, retry.jitter, retry.total_budget) == (90.0, 3.0, False, 50.0)


# -- the helper itself -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Inner:
    depth: int = dataclasses.field(default=1, metadata={"help": "how deep"})


@dataclasses.dataclass(frozen=True)
class Toy:
    name: str = dataclasses.field(default="x", metadata={"help": "a name"})
    limit: float | None = dataclasses.field(default=None, metadata={"help": "a bound, or none"})
    ids: tuple[int, ...] = dataclasses.field(default=(1, 2), metadata={"help": "some ids"})
    mode: Literal["a", "b"] = dataclasses.field(default="a", metadata={"help": "a mode"})
    fast: bool = dataclasses.field(default=False, metadata={"help": "go fast"})
    inner: Inner = dataclasses.field(default_factory=lambda: Inner(depth=5), metadata={"help": "nested"})


def test_helper_types_and_nested_defaults(monkeypatch) -> None:
    p = argparse.ArgumentParser()
    add_dataclass_flags(p, "toy", Toy)
    lines = help_lines(p, monkeypatch)
    assert entry(lines, "--toy.inner.depth").endswith("(default: 5)")  # the factory's value, not Inner()'s
    assert entry(lines, "--toy.ids").endswith("(default: 1,2)") and entry(lines, "--toy.limit").endswith("none)")
    assert dataclass_from_args(p.parse_args([]), "toy", Toy) == Toy()
    args = p.parse_args(["--toy.name", "y", "--toy.limit", "2.5", "--toy.ids", "3,4,5", "--toy.mode", "b",
                         "--toy.fast", "--toy.inner.depth", "9"])
    assert dataclass_from_args(args, "toy", Toy) == Toy("y", 2.5, (3, 4, 5), "b", True, Inner(9))
    assert dataclass_from_args(p.parse_args(["--toy.limit", "none", "--toy.ids", ""]), "toy", Toy).ids == ()
    base = Toy(name="base", inner=Inner(7))
    assert dataclass_from_args(p.parse_args(["--toy.fast"]), "toy", Toy, base) == dataclasses.replace(base, fast=True)


def test_helper_refuses_a_field_without_meaning() -> None:
    @dataclasses.dataclass
    class Bare:
        n: int = 1

    with pytest.raises(TypeError, match="help"):
        add_dataclass_flags(argparse.ArgumentParser(), "bare", Bare)


def test_helper_makes_a_field_without_default_a_required_flag() -> None:
    @dataclasses.dataclass
    class Needs:
        n: int = dataclasses.field(metadata={"help": "a count"})

    p = argparse.ArgumentParser()
    add_dataclass_flags(p, "needs", Needs)
    assert dataclass_from_args(p.parse_args(["--needs.n", "4"]), "needs", Needs) == Needs(4)
    assert "a count (required)" in p.format_help()
    with pytest.raises(SystemExit):
        p.parse_args([])


def test_every_swarm_knob_is_a_flag_with_its_meaning_and_default() -> None:
    from mapreduce.swarm.config import SwarmConfig, add_swarm_flags, auto_block_time, swarm_config_from_args
    parser = argparse.ArgumentParser()
    add_swarm_flags(parser)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    for f in dataclasses.fields(SwarmConfig):
        if f.name == "model":
            continue
        assert f"--{f.name.replace('_', '-')}" in actions[f.name].option_strings
        assert "default" in actions[f.name].help, f"--{f.name}: {actions[f.name].help}"
    cfg = swarm_config_from_args(parser.parse_args(["--peers", "8", "--wire-dtype", "bfloat16", "--run-dir", "x"]))
    assert (cfg.peers, cfg.wire_dtype, str(cfg.run_dir), cfg.block_time) == (8, "bfloat16", "x", None)
    assert auto_block_time(8, 2) == 1.0 and auto_block_time(13, 2) == 1.625 and auto_block_time(13, 8) == 1.0
    assert cfg.with_block_time(2).block_time == 1.5  # 8 peers + 3 miners + 1 validator on 2 cores
