"""What operators read and run stays true to the code: the guide, the README, .env.example, pyproject, pm2 file."""
from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import shutil
import subprocess
import tomllib

import pytest

from mapreduce.ops import commitment_command, inspection, prune, report_command
from mapreduce.ops.cli import build_parser, published_location
from storage import S3Config

from .helpers import ROOT

GUIDE = ROOT / "docs" / "OPERATIONS.md"
# Flags of other tools the guide shows (aws, mc, pm2, wrangler): not ours to check.
EXTERNAL_FLAGS = {"--user-name", "--lifecycle-configuration", "--region", "--policy", "--only", "--expire-days",
                  "--endpoint-url", "--create-bucket-configuration", "--user"}


def ops_parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m mapreduce {command}")
    {"report": report_command.add_arguments, "prune": prune.add_arguments, "inspect": inspection.add_arguments,
     "commitment": commitment_command.add_arguments}[command](p)
    return p


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its subcommands (``commitment encode``)."""
    out = set()
    for action in parser._actions:
        out |= set(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            out |= {s for sub in action.choices.values() for s in _flags(sub)}
    return out


def our_flags() -> set[str]:
    parsers = [build_parser("miner"), build_parser("validator"), ops_parser("report"), ops_parser("prune"),
               ops_parser("inspect"), ops_parser("commitment")]
    return {s for p in parsers for s in _flags(p)}


def commands_in(text: str) -> list[str]:
    """Our command lines in fenced blocks, continuation lines joined, placeholders made concrete."""
    out = []
    for lang, block in re.findall(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", text, flags=re.S | re.M):
        if lang not in ("bash", "sh", ""):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            ours = (r"(python (miner|validator)\.py|mapreduce-(miner|validator)"
                    r"|python -m mapreduce (report|prune|inspect|commitment))")
            if re.match(ours, line):
                out.append(line.replace(" N ", " 1 ").replace(" RUN ", " run-x "))
    return out


def test_readme_links_the_operations_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "](docs/OPERATIONS.md)" in readme and GUIDE.exists()
    assert "](../ecosystem.config.js)" in GUIDE.read_text() and (ROOT / "ecosystem.config.js").exists()


@pytest.mark.parametrize("doc", ["README.md", "docs/OPERATIONS.md"])
def test_documented_command_lines_parse(doc: str) -> None:
    lines = commands_in((ROOT / doc).read_text())
    assert lines, f"no command lines found in {doc}"
    for line in lines:
        argv = shlex.split(line)
        if argv[0] == "python" and argv[1] != "-m":
            parser, args = build_parser(argv[1].removesuffix(".py")), argv[2:]
        elif argv[0].startswith("mapreduce-"):
            parser, args = build_parser(argv[0].removeprefix("mapreduce-")), argv[1:]
        else:
            parser, args = ops_parser(argv[3]), argv[4:]
        parser.parse_args(args)  # SystemExit (a failed test) on an unknown flag or a bad value


def test_every_flag_in_the_guide_exists() -> None:
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9._-]*[a-z0-9]", GUIDE.read_text()))
    unknown = mentioned - our_flags() - EXTERNAL_FLAGS
    assert not unknown, f"docs/OPERATIONS.md mentions flags no command has: {sorted(unknown)}"


def variables_read_by_the_code() -> set[str]:
    names = set()
    for path in [*ROOT.glob("mapreduce/**/*.py"), *ROOT.glob("storage/*.py"), ROOT / "miner.py", ROOT / "validator.py"]:
        names |= set(re.findall(r"[\"'](MR_[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text()))
    # S3Config.from_env builds its names from a prefix: MR_S3_ + each pick("NAME", fallbacks...)
    config = (ROOT / "storage" / "config.py").read_text()
    names |= {"MR_S3_" + n for n in re.findall(r'pick\("([A-Z_]+)"', config)}
    return names - {"MR_S3"}


def test_env_example_lists_every_variable_with_a_comment() -> None:
    lines = (ROOT / ".env.example").read_text().splitlines()
    listed = {line.split("=")[0]: i for i, line in enumerate(lines) if re.match(r"[A-Z][A-Z0-9_]*=", line)}
    missing = variables_read_by_the_code() - set(listed)
    assert not missing, f".env.example lacks {sorted(missing)}"
    for name, i in listed.items():
        assert i > 0 and lines[i - 1].startswith("#"), f"{name} in .env.example has no comment above it"
    fallbacks = set(re.findall(r'"(AWS_[A-Z0-9_]+)"', (ROOT / "storage" / "config.py").read_text()))
    text = "\n".join(lines)
    assert fallbacks and all(f in text for f in fallbacks), "an AWS_* fallback is not mentioned in .env.example"


def test_console_scripts_point_at_the_command_lines() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert {"mapreduce-miner", "mapreduce-validator"} <= set(scripts)
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
    assert scripts["mapreduce-miner"] == "mapreduce.ops.cli:miner_main"
    assert scripts["mapreduce-validator"] == "mapreduce.ops.cli:validator_main"
    assert project["tool"]["setuptools"]["dynamic"]["dependencies"]["file"] == ["requirements.txt"]


def ecosystem_apps() -> list[dict]:
    path = ROOT / "ecosystem.config.js"
    if shutil.which("node"):
        out = subprocess.run(["node", "-e", f"process.stdout.write(JSON.stringify(require({str(path)!r}).apps))"],
                             capture_output=True, text=True, timeout=30, check=True)
        return json.loads(out.stdout)
    # Without node: the same fields, read with a pattern (the file keeps each value on one logical line).
    text = path.read_text()
    scripts = re.findall(r'script: "([^"]+)"', text)
    args = ["".join(re.findall(r'"([^"]*)"', a)) for a in re.findall(r"args: ((?:\"[^\"]*\"\s*\+?\s*)+),", text)]
    return [{"script": s, "args": a} for s, a in zip(scripts, args)]


def test_pm2_file_runs_our_scripts_with_valid_flags() -> None:
    apps = ecosystem_apps()
    assert sorted(a["script"] for a in apps) == ["miner.py", "validator.py"]
    for app in apps:
        assert (ROOT / app["script"]).exists()
        args = build_parser(app["script"].removesuffix(".py")).parse_args(shlex.split(app["args"]))
        assert getattr(args, "metrics.port") and getattr(args, "metrics.host") == "127.0.0.1"
        # S3 settings stay in .env: one set here, even empty, would win over it (the environment wins).
        assert not [k for k in app.get("env", {}) if k.startswith(("MR_", "AWS_"))]


def test_empty_public_endpoint_falls_back_to_ours(monkeypatch) -> None:
    """An empty MR_PUBLIC_ENDPOINT_URL (as copied from .env.example) must not put an empty endpoint on chain,
    which readers would take for AWS."""
    s3 = S3Config(endpoint_url="http://203.0.113.7:9000")
    monkeypatch.setenv("MR_PUBLIC_ENDPOINT_URL", "")
    assert published_location("miner", "my-bucket", s3).endpoint == "http://203.0.113.7:9000"
    monkeypatch.setenv("MR_PUBLIC_ENDPOINT_URL", "https://public.example:9000")
    assert published_location("miner", "my-bucket", s3).endpoint == "https://public.example:9000"


def test_commitment_budget_in_the_guide_matches_the_code() -> None:
    """docs/OPERATIONS.md, section 3: the room left for the bucket name per provider, and R2 fits."""
    from mapreduce.directory import BucketLocation, CommitmentError

    guide = GUIDE.read_text()
    aws = dict(role="miner", endpoint="", access_key_id="A" * 20, secret_access_key="s" * 40)
    r2 = dict(role="miner", endpoint=f"https://{'a' * 32}.r2.cloudflarestorage.com", access_key_id="b" * 32,
              secret_access_key="c" * 64)
    minio = dict(role="miner", endpoint="http://203.0.113.7:9000", access_key_id="k" * 17,
                 secret_access_key="s" * 33, path_style=True)
    for fields, room, row in [(dict(aws, region="us-east-1"), 47, "| AWS S3 |"),
                              (dict(aws, region="ap-southeast-1"), 42, "| AWS S3 |"),
                              (minio, 42, "| MinIO |"), (r2, 29, "| Cloudflare R2 |")]:
        BucketLocation(bucket="b" * room, **fields).encode()
        with pytest.raises(CommitmentError, match="commitment is 129 bytes"):
            BucketLocation(bucket="b" * (room + 1), **fields).encode()
        line = next(x for x in guide.splitlines() if x.startswith(row))
        assert f"{room} characters" in line, (row, room)
    assert len(BucketLocation(bucket="b" * 15, **r2).encode()) == 114 and "takes 114 bytes" in guide
    assert "R2 does not fit" not in guide
