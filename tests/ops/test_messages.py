"""Messages keep their promises: what a message tells an operator to read or set exists, and a start-up mistake
is named before anything is created."""
from __future__ import annotations

import re

import boto3
import pytest

from mapreduce.chain.local import LocalChain
from mapreduce.ops.advice import _ADVICE
from mapreduce.ops.cli import build_parser
from mapreduce.swarm.orchestrator import write_wallet
from tests.ops.helpers import ROOT, mapreduce, s3_env
from tests.support.cluster import make_spec

DOC_SECTION = re.compile(r"(docs/[A-Z]+\.md), \*([^*]+)\*")  # a section is named in italics: "docs/X.md, *Logs*"
DOC_MENTION = re.compile(r"docs/[A-Z]+\.md")
FLAG = re.compile(r"(?<![\w-])--[a-z][\w.-]*[a-z]")
VARIABLE = re.compile(r"\bMR_[A-Z_]*[A-Z]\b")


def headings(doc: str) -> set[str]:
    """Each heading of ``doc``, without its number or the files it names: "## 8. Retention" -> "Retention",
    "## Objects [`mapreduce/wire/codec.py`]" -> "Objects"."""
    found, fenced = set(), False
    for line in (ROOT / doc).read_text().splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced:
            found.add(re.sub(r"\s*\[`.*$", "", re.sub(r"^#+\s*(\d+\.\s*)?", "", line)).strip())
    return found


@pytest.mark.parametrize("kind, text", [(k.__name__, t) for k, t in _ADVICE])
def test_advice_names_only_what_exists(kind: str, text: str) -> None:
    for doc, section in DOC_SECTION.findall(text):
        assert section in headings(doc), f"{kind}: {doc} has no section {section!r}"
    assert len(DOC_MENTION.findall(text)) == len(DOC_SECTION.findall(text)), f"{kind}: name the section, in italics"
    flags = {a for role in ("miner", "validator") for action in build_parser(role)._actions
             for a in action.option_strings}
    for flag in FLAG.findall(text):
        assert flag in flags, f"{kind}: no flag {flag}"
    example = (ROOT / ".env.example").read_text()
    for variable in VARIABLE.findall(text):
        if variable.endswith("_"):
            continue
        assert variable in example, f"{kind}: {variable} is not in .env.example"


def test_every_protocol_error_gets_its_own_advice() -> None:
    """A reason-coded error an operator can meet says what to do about its kind, not "see the protocol"."""
    for _, text in _ADVICE:
        assert "for the rule named in the message" not in text


@pytest.fixture
def setup(tmp_path, embedded_s3):
    spec = tmp_path / "spec.json"
    make_spec("messages-run").save(spec)
    LocalChain.create(tmp_path / "chain.sqlite", netuid=1, block_time=0.5)
    hotkey = write_wallet(tmp_path / "wallets", "m", "//not-registered")
    common = ["--spec", str(spec), "--chain.local", str(tmp_path / "chain.sqlite"), "--netuid", "1",
              "--wallet.path", str(tmp_path / "wallets"), "--wallet.name", "m", "--wallet.hotkey", "default"]
    return common, hotkey, s3_env(embedded_s3)


def test_an_unregistered_hotkey_is_named_before_anything_is_created(setup, tmp_path, embedded_s3) -> None:
    common, hotkey, env = setup
    out = mapreduce("miner", "--bucket", "never-created", *common, env=env, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"hotkey {hotkey} is not registered" in out.stderr and "Traceback" not in out.stderr
    cfg = embedded_s3.config()
    s3 = boto3.client("s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region,
                      aws_access_key_id=cfg.access_key_id, aws_secret_access_key=cfg.secret_access_key)
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert "never-created" not in names


def test_a_mistyped_env_file_is_an_error(setup, tmp_path) -> None:
    common, _, env = setup
    out = mapreduce("miner", "--bucket", "some-bucket", *common, "--env-file", str(tmp_path / "nope.env"), env=env,
                    cwd=tmp_path)
    assert out.returncode == 2
    assert "--env-file" in out.stderr and "no such file" in out.stderr and "nope.env" in out.stderr
