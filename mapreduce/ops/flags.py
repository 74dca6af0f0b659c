"""Command-line flags generated from config dataclasses: one flag per field, its default and meaning taken from
the field, so the dataclass is the one place both live.

Every field of a config dataclass carries its meaning as ``field(default=..., metadata={"help": "..."})``.
:func:`add_dataclass_flags` adds ``--<prefix>.<field>`` for each field (a field that is itself a config dataclass
becomes ``--<prefix>.<field>.<subfield>``, and so on) and :func:`dataclass_from_args` builds the config back from
the parsed arguments::

    parser = argparse.ArgumentParser()
    add_dataclass_flags(parser, "peer", PeerConfig)
    args = parser.parse_args()
    config = dataclass_from_args(args, "peer", PeerConfig)

Field types: ``int``, ``float``, ``str``, ``bool`` (``--x`` / ``--no-x``), ``Literal[...]`` (its values are the
choices), ``X | None`` (``none`` gives None) and ``tuple[X, ...]`` (comma-separated; empty for none). A flag left
off the command line is absent from the parsed namespace (``argparse.SUPPRESS``): the dataclass's own default then
applies, and :func:`given` tells which flags were set.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

__all__ = ["add_dataclass_flags", "dataclass_from_args", "flag_fields", "given"]

T = TypeVar("T")


def flag_fields(cls: type, prefix: str, exclude: Iterable[str] = ()) -> list[tuple[str, dataclasses.Field, Any]]:
    """``(dest, field, type)`` of every flag ``cls`` gives under ``prefix``, nested configs flattened, in order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude:
            continue
        dest, kind = f"{prefix}.{f.name}", hints[f.name]
        if dataclasses.is_dataclass(kind):
            out += flag_fields(kind, dest)
        else:
            out.append((dest, f, kind))
    return out


def add_dataclass_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, prefix: str, cls: type, *,
                        exclude: Iterable[str] = (), aliases: Mapping[str, str] | None = None,
                        shown_defaults: Mapping[str, str] | None = None, title: str | None = None
                        ) -> argparse._ArgumentGroup:
    """Add ``--<prefix>.<field>`` for every field of the dataclass ``cls`` (nested configs included), in a group of
    the help named ``title`` (default: the class's name); returns the group.

    ``exclude`` names top-level fields to leave out, ``aliases`` maps a field to another flag name under the same
    prefix that sets it too (an older name, say), ``shown_defaults`` maps a field to the text --help gives as its
    default when the caller derives it from other flags instead of using the dataclass's. A field without a
    ``help`` in its metadata is a TypeError: every flag says what it means.
    """
    aliases, shown_defaults = aliases or {}, shown_defaults or {}
    unknown = (set(aliases) | set(shown_defaults) | set(exclude)) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {sorted(unknown)}")
    group = parser.add_argument_group(title or f"{cls.__name__} (--{prefix}.*)") \
        if isinstance(parser, argparse.ArgumentParser) else parser
    defaults = _defaults(cls)
    for dest, f, kind in flag_fields(cls, prefix, exclude):
        meaning = f.metadata.get("help")
        if not meaning:
            raise TypeError(f"{cls.__name__}: the field behind --{dest} has no metadata={{'help': ...}}; "
                            "give every config field a one-line meaning")
        name = dest[len(prefix) + 1:]
        required = defaults[name] is dataclasses.MISSING  # a field without a default: a flag one must give
        shown = "required" if required else f"default: {shown_defaults.get(name, _show(defaults[name]))}"
        options = [f"--{dest}"] + ([f"--{prefix}.{aliases[name]}"] if name in aliases else [])
        group.add_argument(*options, dest=dest, default=argparse.SUPPRESS, required=required,
                           help=f"{meaning} ({shown})".replace("%", "%%"), **argument_for(kind))
    return group


def dataclass_from_args(args: argparse.Namespace, prefix: str, cls: type[T], base: T | None = None,
                        exclude: Iterable[str] = ()) -> T:
    """``cls`` with the fields given as ``--<prefix>.*`` flags; the others from ``base`` (default: ``cls``'s own
    defaults). Raises ValueError (or TypeError) as the dataclass does for a value it refuses."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude:
            continue
        dest = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            inner = getattr(base, f.name) if base is not None else _default(f)
            if inner is dataclasses.MISSING:
                inner = None
            if inner is None or given(args, dest):
                values[f.name] = dataclass_from_args(args, dest, hints[f.name], inner)
        elif hasattr(args, dest):
            values[f.name] = getattr(args, dest)
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def given(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """The flags under ``prefix`` set on the command line, by their name after the prefix."""
    start = prefix + "."
    return {k[len(start):]: v for k, v in vars(args).items() if k.startswith(start)}


# -- types -----------------------------------------------------------------------------------------------------------


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _defaults(cls: type, instance: Any = None, prefix: str = "") -> dict[str, Any]:
    """Field name (dotted for nested configs) -> default, as the dataclass fills it in (or ``instance``'s value)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name) if instance is not None else _default(f)
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(_defaults(hints[f.name], None if value is dataclasses.MISSING else value, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = value
    return out


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "empty"
    return str(value)


def _optional(kind: Any) -> tuple[Any, bool]:
    """``X`` and whether ``kind`` is ``X | None``."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0], True
        raise TypeError(f"unsupported flag type {kind}: only X | None unions")
    return kind, False


def _scalar(kind: Any) -> tuple[Callable[[str], Any], dict[str, Any]]:
    """The parser of one value of type ``kind``, and argparse keywords (choices, metavar) for it."""
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        by_text = {str(c): c for c in choices}

        def literal(text: str) -> Any:
            if text not in by_text:
                raise argparse.ArgumentTypeError(f"must be one of {', '.join(by_text)}")
            return by_text[text]
        literal.__name__ = "choice"
        return literal, {"metavar": "{" + ",".join(by_text) + "}"}
    if kind in (int, float, str, Path):
        return kind, {"metavar": {int: "N", float: "X", str: "TEXT", Path: "PATH"}[kind]}
    raise TypeError(f"unsupported flag type {kind}")


def argument_for(kind: Any) -> dict[str, Any]:
    """argparse keywords (type or action, choices, metavar) for a config field of type ``kind``."""
    inner, optional = _optional(kind)
    if inner is bool:
        if optional:
            raise TypeError("unsupported flag type bool | None")
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(inner) is tuple:
        items = typing.get_args(inner)
        if len(items) != 2 or items[1] is not Ellipsis:
            raise TypeError(f"unsupported flag type {kind}: only tuple[X, ...]")
        one, extra = _scalar(items[0])

        def many(text: str) -> tuple | None:
            if optional and text.lower() == "none":
                return None
            return tuple(one(t.strip()) for t in text.split(",") if t.strip())
        many.__name__ = "list"
        return {"type": many, "metavar": extra["metavar"].strip("{}") + ",..."}
    one, extra = _scalar(inner)
    if not optional:
        return {"type": one, **extra}

    def maybe(text: str) -> Any:
        return None if text.lower() == "none" else one(text)
    maybe.__name__ = one.__name__ if hasattr(one, "__name__") else "value"
    return {"type": maybe, **extra}


# -- the env file ---------------------------------------------------------------------------------------------------

def _existing_file(path: str) -> str:
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"no such file: {path!r} (leave --env-file off to read ./.env if there "
                                         "is one, or the environment alone)")
    return path


def add_env_file_flag(parser: argparse.ArgumentParser) -> None:
    """``--env-file PATH``: a file named on the command line must exist (a typo is an error, not silently skipped);
    left off, ``./.env`` is read if there is one. Read it with :func:`env_file`."""
    parser.add_argument("--env-file", type=_existing_file, default=None, metavar="PATH",
                        help="file of MR_S3_* and MR_PUBLIC_* variables (dotenv syntax; see .env.example), which "
                             "must exist; default: .env in the working directory, if there is one. Variables "
                             "already in the environment win")


def env_file(args: argparse.Namespace) -> str:
    """The env file to read: the one named on the command line, else ``.env`` (skipped by readers when absent)."""
    return args.env_file or ".env"
