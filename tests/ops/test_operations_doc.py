"""docs/OPERATIONS.md, section 3, stays true to the code: the provider walks' `encode` commands print what the guide
shows, each walk's `.env` files commit exactly that, the variables the guide names exist, and its policies parse
and grant no more than the per-prefix table. (Command-line flags and the bucket-name budget are checked in
test_deploy.py.)"""
from __future__ import annotations

import io
import json
import re
import shlex

import pytest
from dotenv import dotenv_values

from mapreduce.__main__ import main as mapreduce_main
from mapreduce.ops.cli import published_location
from storage import S3Config

from .helpers import ROOT
from .test_deploy import variables_read_by_the_code

GUIDE = ROOT / "docs" / "OPERATIONS.md"
WALKS = ("AWS S3", "Cloudflare R2", "MinIO")
ROLES = ("miner", "validator")
ENCODE = "python -m mapreduce commitment encode "
S3_ARN = "arn:aws:s3:::"


def section(number: int) -> str:
    text = GUIDE.read_text()
    start = text.index(f"\n## {number}. ")
    return text[start:text.index(f"\n## {number + 1}. ", start)]


def blocks(text: str) -> list[tuple[str, str, str, str]]:
    """``(walk, lang, body, text before it)`` for each fenced block: ``walk`` is the ``###`` heading it is under
    ("" before the first), the text before it runs from the previous block's end (indentation removed)."""
    out, walk, last = [], "", 0
    fence = re.compile(r"^([ \t]*)```(\w*)\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
    for m in fence.finditer(text):
        before = text[last:m.start()]
        for heading in re.findall(r"^### (.+)$", before, flags=re.M):
            walk = heading.strip()
        body = "\n".join(line.removeprefix(m[1]) for line in m[3].splitlines())
        out.append((walk, m[2], body, before))
        last = m.end()
    return out


def shown_encodes() -> dict[tuple[str, str], tuple[list[str], str]]:
    """``(walk, role) -> (argv after "python -m mapreduce", the output shown on the ``# mr2|...`` line below)``."""
    found = {}
    for walk, lang, body, _ in blocks(section(3)):
        if lang != "bash":
            continue
        lines = body.replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            if line.startswith(ENCODE):
                argv = shlex.split(line)[3:]
                role = argv[argv.index("--role") + 1]
                assert i + 1 < len(lines) and lines[i + 1].startswith("# mr2|"), f"{walk}: no output under {line}"
                assert (walk, role) not in found, f"{walk}: two encode commands for the {role}"
                found[walk, role] = argv, lines[i + 1].removeprefix("# ")
    return found


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_every_walk_encodes_both_roles() -> None:
    assert set(shown_encodes()) == {(w, r) for w in WALKS for r in ROLES}
    assert ENCODE not in GUIDE.read_text().replace(section(3), ""), "encode commands belong to the walks"


@pytest.mark.parametrize("walk, role", [(w, r) for w in WALKS for r in ROLES])
def test_encode_prints_what_the_guide_shows(walk: str, role: str, capsys) -> None:
    argv, shown = shown_encodes()[walk, role]
    assert mapreduce_main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == shown


def env_files() -> list[tuple[str, str, dict[str, str]]]:
    """``(walk, role, variables)`` of each ``dotenv`` block; its first line says whose it is."""
    out = []
    for walk, lang, body, _ in blocks(section(3)):
        if lang != "dotenv":
            continue
        head = re.fullmatch(r"# the (miner|validator)'s \.env", body.splitlines()[0])
        assert head, f"{walk}: a .env block starts with '# the miner's .env' or '# the validator's .env'"
        out.append((walk, head[1], {k: v or "" for k, v in dotenv_values(stream=io.StringIO(body)).items()}))
    return out


def test_every_walk_has_both_env_files_with_every_variable() -> None:
    found = env_files()
    assert sorted((w, r) for w, r, _ in found) == sorted((w, r) for w in WALKS for r in ROLES)
    example = {line.split("=")[0] for line in (ROOT / ".env.example").read_text().splitlines()
               if re.match(r"MR_[A-Z0-9_]+=", line)}
    for walk, role, values in found:
        assert set(values) == example, f"{walk}, the {role}'s .env: not the variables of .env.example"


@pytest.mark.parametrize("walk, role", [(w, r) for w in WALKS for r in ROLES])
def test_env_file_commits_what_encode_shows(walk: str, role: str, tmp_path, monkeypatch) -> None:
    """What the process would publish from that .env (as the miner and validator read it) is the walk's string."""
    values = next(v for w, r, v in env_files() if (w, r) == (walk, role))
    path = tmp_path / ".env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    s3 = S3Config.from_env(path, environ={})
    for name in [*values, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)  # load_dotenv does the same, empty values included
    argv, shown = shown_encodes()[walk, role]
    assert published_location(role, option(argv, "--bucket"), s3).encode() == shown
    assert s3.access_key_id and s3.access_key_id != values["MR_PUBLIC_ACCESS_KEY_ID"], "own keys are not published"


def test_section_4_starts_the_buckets_of_the_walks() -> None:
    """The walks say: start with section 4's commands. Their buckets are the walks' buckets."""
    buckets = {role: {option(argv, "--bucket") for (_, r), (argv, _) in shown_encodes().items() if r == role}
               for role in ROLES}
    started = dict(re.findall(r"python (miner|validator)\.py --bucket (\S+)", section(4)))
    assert set(started) == set(ROLES)
    for role in ROLES:
        assert buckets[role] == {started[role]}, (role, buckets[role], started[role])


def test_every_variable_the_guide_names_is_read_by_the_code() -> None:
    named = set(re.findall(r"\bMR_[A-Z0-9_]*[A-Z0-9]\b", GUIDE.read_text()))
    assert named, "no MR_* variable found in docs/OPERATIONS.md"
    unknown = named - variables_read_by_the_code()
    assert not unknown, f"docs/OPERATIONS.md names variables no code reads: {sorted(unknown)}"


def prefix_table() -> dict[str, str]:
    """The per-prefix table of *Permissions*: object pattern as a policy writes it (``RUN`` -> ``*``) -> what the
    published key may do there."""
    rows = {}
    text = section(3)
    table = text[text.index("| prefix in a miner's bucket"):]
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        for pattern in re.findall(r"`([^`]+)`", cells[0]):
            rows[pattern.replace("RUN", "*")] = cells[2]
    assert rows and all("/" in p for p in rows), rows
    return rows


def policies() -> list[tuple[str, str, dict]]:
    """``(walk, file name, policy)`` of each JSON block of section 3: every one is a policy, named in backquotes
    just before it."""
    out = []
    for walk, lang, body, before in blocks(section(3)):
        if lang != "json":
            continue
        names = re.findall(r"`([\w.-]+\.json)`", before)
        assert names, f"{walk}: a policy block without its file name before it"
        out.append((walk, names[-1], json.loads(body)))  # a JSONDecodeError fails the test
    return out


def own_actions() -> set[str]:
    text = section(3)
    sentence = text[text.index("Your own key (`MR_S3_*`) needs"):text.index("It is never used on anyone")]
    return {f"s3:{a}" for a in re.findall(r"`([A-Z][A-Za-z]+)`", sentence)}


def grants(policy: dict) -> list[tuple[str, str, str, dict]]:
    """``(action, bucket, object pattern or "" for the bucket itself, statement)`` for every action and resource."""
    out = []
    assert policy["Version"] == "2012-10-17"
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow" and set(st) <= {"Sid", "Effect", "Principal", "Action", "Resource", "Condition"}
        actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        resources = [st["Resource"]] if isinstance(st["Resource"], str) else st["Resource"]
        for resource in resources:
            assert resource.startswith(S3_ARN), resource
            bucket, _, pattern = resource.removeprefix(S3_ARN).partition("/")
            out += [(a, bucket, pattern, st) for a in actions]
    return out


def test_policies_grant_only_what_the_permissions_allow() -> None:
    table, own = prefix_table(), own_actions()
    writable = {p for p, may in table.items() if "PutObject" in may}
    buckets = {role: {option(argv, "--bucket") for (_, r), (argv, _) in shown_encodes().items() if r == role}
               for role in ROLES}
    found = policies()
    named = {name for _, name, _ in found}
    assert {"own.json", "miner-bucket-policy.json", "validator-bucket-policy.json", "miner-public.json",
            "validator-public.json"} <= named, named
    for walk, name, policy in found:
        role = "validator" if "validator" in name else "miner"
        actions = set()
        for action, bucket, pattern, st in grants(policy):
            where = f"{walk}, {name}: {action} on {bucket}/{pattern}"
            assert bucket in buckets[role], where
            assert pattern in ("", "*") or pattern in table, f"{where}: not a prefix of the table"
            assert (pattern == "") == (action in ("s3:ListBucket", "s3:CreateBucket")), f"{where}: wrong resource"
            if name != "own.json":
                assert action in ("s3:PutObject", "s3:GetObject", "s3:ListBucket"), where
                assert action != "s3:PutObject" or (role == "miner" and pattern in writable), where
                if "Principal" in st:  # a bucket policy: for a published user, and PutObject only write-once
                    assert st["Principal"]["AWS"].endswith(f":user/mr-{role}-public"), where
                    assert action != "s3:PutObject" or st.get("Condition"), f"{where}: no write-once condition"
            actions.add(action)
        if name == "own.json":
            assert actions == own, f"{name} grants {sorted(actions)}, the text names {sorted(own)}"
        elif role == "miner":
            put = {p for a, _, p, _ in grants(policy) if a == "s3:PutObject"}
            assert put == writable, f"{walk}, {name}: PutObject on {sorted(put)}, the table on {sorted(writable)}"


def test_every_policy_file_the_commands_use_is_shown() -> None:
    """Files handed to `aws s3api put-bucket-policy` or `mc admin policy create` are shown (or, for
    ``*-own.json``, are own.json for that bucket)."""
    named = {name for _, name, _ in policies()}
    used = set()
    for _, lang, body, _ in blocks(section(3)):
        if lang == "bash":
            used |= set(re.findall(r"--policy file://(\S+\.json)", body))
            used |= set(re.findall(r"mc admin policy create \S+ \S+ (\S+\.json)", body))
    assert used, "no policy file used by a command"
    for name in used:
        assert name in named or (name.endswith("-own.json") and "own.json" in named), name
