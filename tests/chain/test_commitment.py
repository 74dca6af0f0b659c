"""The on-chain commitment (mapreduce/directory.py, docs/PROTOCOL.md *Participants on chain*): every provider
round-trips and fits in 128 bytes, readers reach a bucket where its commitment says (never at their own default),
and a malformed string is a CommitmentError, nothing else."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mapreduce.__main__ import main
from mapreduce.chain import MAX_COMMITMENT_BYTES
from mapreduce.directory import LEGACY, BucketLocation, CommitmentError
from mapreduce.network import StorePool
from storage import S3Config

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "0123456789abcdef" * 2
R2_KEY, R2_SECRET = "fedcba9876543210" * 2, "00112233445566778899aabbccddeeff" * 2
R2 = f"https://{ACCOUNT}.r2.cloudflarestorage.com"
AWS_KEY, AWS_SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

ROUND_TRIPS = {
    "aws": BucketLocation("miner", "my-miner-bucket", "", AWS_KEY, AWS_SECRET, region="ap-southeast-1"),
    "aws-anonymous": BucketLocation("peer", "my-peer-bucket", region="us-east-1"),
    "r2": BucketLocation("miner", "my-miner-bucket", R2, R2_KEY, R2_SECRET),
    "r2-eu": BucketLocation("validator", "my-bucket", f"https://{ACCOUNT}.eu.r2.cloudflarestorage.com", R2_KEY,
                            R2_SECRET),
    "r2-fedramp-anonymous": BucketLocation("peer", "my-bucket", f"https://{ACCOUNT}.fedramp.r2.cloudflarestorage.com"),
    "minio-path": BucketLocation("miner", "my-bucket", "http://203.0.113.7:9000", "mrminer", "s" * 33,
                                 path_style=True),
    "other-s3": BucketLocation("validator", "my-bucket", "https://s3.example.org"),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_every_provider_round_trips(name: str) -> None:
    loc = ROUND_TRIPS[name]
    text = loc.encode()
    assert text.startswith("mr2|") and len(text.encode()) <= MAX_COMMITMENT_BYTES
    assert BucketLocation.decode(text) == loc
    assert BucketLocation.decode(text).provider == {"aws": "aws", "r2": "r2", "minio": "s3", "other": "s3"}[
        name.split("-")[0]]


def test_the_provider_is_inferred_from_the_endpoint() -> None:
    assert BucketLocation("miner", "bkt", R2).provider == "r2"
    assert BucketLocation("miner", "bkt", "http://127.0.0.1:9000").provider == "s3"
    aws = BucketLocation("miner", "bkt", "https://s3.eu-west-1.amazonaws.com")
    # AWS keeps no endpoint: readers use botocore's for the region, which the endpoint gave.
    assert (aws.provider, aws.endpoint, aws.region) == ("aws", "", "eu-west-1")
    assert aws.encode() == "mr2|m|a|bkt|eu-west-1|||"


def test_a_15_character_bucket_on_r2_fits_with_room_to_spare() -> None:
    loc = BucketLocation("miner", "b" * 15, R2, R2_KEY, R2_SECRET)
    size = len(loc.encode().encode())
    print(f"R2, 15-character bucket: {size} bytes of {MAX_COMMITMENT_BYTES}")
    # 12 fixed (mr2, role, provider, 7 separators) + 15 + 22 account + 22 key + 43 secret; the old format took 185.
    assert size == 114 and MAX_COMMITMENT_BYTES - size == 14
    # The guide's figures (docs/OPERATIONS.md, section 3): the longest bucket name per provider.
    assert len(BucketLocation("miner", "b" * 29, R2, R2_KEY, R2_SECRET).encode()) == 128
    with pytest.raises(CommitmentError, match="commitment is 129 bytes"):
        BucketLocation("miner", "b" * 30, R2, R2_KEY, R2_SECRET).encode()
    assert len(BucketLocation("miner", "b" * 47, "", AWS_KEY, AWS_SECRET, region="us-east-1").encode()) == 128
    assert len(BucketLocation("miner", "b" * 42, "", AWS_KEY, AWS_SECRET, region="ap-southeast-1").encode()) == 128
    minio = BucketLocation("miner", "b" * 42, "http://203.0.113.7:9000", "k" * 17, "s" * 33, path_style=True)
    assert len(minio.encode()) == 128


@pytest.mark.parametrize("key, secret, match", [
    ("K" * 32, R2_SECRET, "access key id must be 32 lower-case hex digits"),
    (R2_KEY[:-1], R2_SECRET, "access key id must be 32 lower-case hex digits"),
    (R2_KEY, "z" * 64, "secret access key must be 64 lower-case hex digits"),
])
def test_r2_values_that_are_not_hex_are_refused_with_a_clear_message(key: str, secret: str, match: str) -> None:
    with pytest.raises(CommitmentError, match=match):
        BucketLocation("miner", "bkt", R2, key, secret)
    with pytest.raises(CommitmentError, match="R2 endpoint is https://<32 lower-case hex account id>"):
        BucketLocation("miner", "bkt", "https://not-an-account.r2.cloudflarestorage.com")


def _mr2(provider: str = "r", field1: str = "ASNFZ4mrze8BI0VniavN7w", field2: str = "", key: str = "",
         secret: str = "", role: str = "m", bucket: str = "bkt") -> str:
    return "|".join(("mr2", role, provider, bucket, field1, field2, key, secret))


MALFORMED = {
    "too few fields": "mr2|m|a|bkt|us-east-1||",
    "too many fields": "mr2|m|a|bkt|us-east-1||||",
    "unknown provider": _mr2("x", "us-east-1"),
    "unknown role": _mr2(role="q"),
    "unknown version": "mr3|m|a|bkt|us-east-1|||",
    "aws without region": _mr2("a", ""),
    "aws with a bad region": _mr2("a", "US East"),
    "aws with a sixth field": _mr2("a", "us-east-1", "x"),
    "r2 account not base64url": _mr2(field1="!" * 22),
    "r2 account too short": _mr2(field1="ASNFZ4mrze8BI0VniavN7"),
    "r2 account padded": _mr2(field1="ASNFZ4mrze8BI0VniavN7w=="),
    "r2 account with stray bits": _mr2(field1="ASNFZ4mrze8BI0VniavN7x"),
    "r2 key not base64url": _mr2(key="*" * 22, secret="A" * 43),
    "r2 secret missing": _mr2(key="A" * 22),
    "r2 secret wrong length": _mr2(key="A" * 22, secret="A" * 42),
    "r2 bad jurisdiction": _mr2(field2="EU"),
    "r2 jurisdiction with a dot": _mr2(field2="eu.x"),
    "s3 without endpoint": _mr2("s", ""),
    "s3 bad endpoint": _mr2("s", "http://[::1"),
    "s3 endpoint with a path": _mr2("s", "http://host/path"),
    "s3 bad flag": _mr2("s", "http://host", "x"),
    "bad bucket": _mr2("s", "http://host", bucket="B!"),
    "non-ascii": _mr2("s", "http://hóst"),
    "control character": _mr2("s", "http://host", key="a\x00", secret="b"),
    "key without secret": _mr2("s", "http://host", key="a"),
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_commitment_is_a_commitment_error(name: str) -> None:
    with pytest.raises(CommitmentError):
        BucketLocation.decode(MALFORMED[name])


def test_mr1_is_still_decoded_as_it_meant() -> None:
    loc = BucketLocation.decode("mr1|m|bkt|http://203.0.113.7:9000|key|secret")
    assert (loc.provider, loc.endpoint, loc.access_key_id) == (LEGACY, "http://203.0.113.7:9000", "key")
    assert BucketLocation.decode("mr1|p|bkt|||").endpoint == ""
    with pytest.raises(CommitmentError, match="mr1 location cannot be written"):
        loc.encode()


# -- readers ------------------------------------------------------------------------------------------------------

OWN_R2 = S3Config(endpoint_url=f"https://{'f' * 32}.r2.cloudflarestorage.com", region="auto",
                  access_key_id="own-account-key", secret_access_key="own-account-secret", addressing_style="virtual")


def test_an_aws_location_is_read_at_aws_in_its_region_whatever_our_default() -> None:
    """The bug of mr1: an empty endpoint meant the reader's default, so an R2 reader looked for an AWS bucket on R2."""
    loc = BucketLocation.decode(f"mr2|m|a|my-bucket|eu-west-1||{AWS_KEY}|{AWS_SECRET}")
    cfg = StorePool(OWN_R2).config_for(loc)
    assert cfg.endpoint_url is None and cfg.region == "eu-west-1" and cfg.addressing_style == "virtual"
    assert (cfg.access_key_id, cfg.secret_access_key) == (AWS_KEY, AWS_SECRET)
    # mr1 keeps its meaning: the reader's own default endpoint and region (what mr2 exists to stop).
    old = StorePool(OWN_R2).config_for(BucketLocation.decode("mr1|m|my-bucket|||"))
    assert old.endpoint_url == OWN_R2.endpoint_url and old.anonymous and old.access_key_id is None


def test_an_r2_location_is_read_at_its_account_endpoint_region_auto() -> None:
    own = S3Config(endpoint_url="http://127.0.0.1:9000", region="eu-west-1", access_key_id="own",
                   secret_access_key="own-secret")
    loc = BucketLocation.decode(BucketLocation("miner", "bkt", R2, R2_KEY, R2_SECRET).encode())
    cfg = StorePool(own).config_for(loc)
    assert (cfg.endpoint_url, cfg.region, cfg.access_key_id, cfg.secret_access_key) == (R2, "auto", R2_KEY, R2_SECRET)
    eu = BucketLocation.decode(_mr2(field2="eu"))
    cfg = StorePool(own).config_for(eu)
    assert cfg.endpoint_url == f"https://{ACCOUNT}.eu.r2.cloudflarestorage.com" and cfg.anonymous
    assert cfg.access_key_id is None and cfg.secret_access_key is None  # never our own keys


def test_another_s3_is_read_at_its_endpoint_path_style_when_flagged() -> None:
    pool = StorePool(OWN_R2)
    flagged = pool.config_for(BucketLocation.decode("mr2|m|s|bkt|http://203.0.113.7:9000|p||"))
    assert (flagged.endpoint_url, flagged.addressing_style, flagged.region) == ("http://203.0.113.7:9000", "path",
                                                                                "us-east-1")
    assert flagged.anonymous and flagged.access_key_id is None
    assert pool.config_for(BucketLocation.decode("mr2|m|s|bkt|http://203.0.113.7:9000|||")).addressing_style == "auto"


async def test_buckets_in_two_aws_regions_get_two_stores() -> None:
    made: list[S3Config] = []

    class Store:
        def __init__(self, cfg, *_):
            made.append(cfg)

        async def __aenter__(self):
            return self

        async def __aexit__(self, *_):
            return None

    pool = StorePool(OWN_R2, store_factory=Store)
    for region in ("eu-west-1", "us-west-2", "eu-west-1"):
        await pool.store_for(BucketLocation("miner", "bkt", region=region))
    await pool.close()
    assert [c.region for c in made] == ["eu-west-1", "us-west-2"]


# -- what a process publishes -------------------------------------------------------------------------------------

def test_published_takes_region_and_addressing_from_public_then_own_settings() -> None:
    aws = BucketLocation.published("miner", "bkt", None, {}, own_region="eu-north-1")
    assert (aws.provider, aws.region) == ("aws", "eu-north-1")
    aws = BucketLocation.published("miner", "bkt", None, {"MR_PUBLIC_REGION": "us-west-2"}, own_region="eu-north-1")
    assert aws.region == "us-west-2"
    minio = BucketLocation.published("miner", "bkt", "http://203.0.113.7:9000", {}, own_region="us-east-1",
                                     own_addressing_style="path")
    assert (minio.provider, minio.region, minio.path_style) == ("s3", "", True)
    minio = BucketLocation.published("miner", "bkt", "http://203.0.113.7:9000", {"MR_PUBLIC_ADDRESSING_STYLE": "auto"},
                                     own_addressing_style="path")
    assert not minio.path_style
    # Our own R2 settings (region auto, any addressing style) publish an R2 location as it is committed.
    r2 = BucketLocation.published("miner", "bkt", R2, {"MR_PUBLIC_ACCESS_KEY_ID": R2_KEY,
                                                       "MR_PUBLIC_SECRET_ACCESS_KEY": R2_SECRET},
                                  own_region="auto", own_addressing_style="virtual")
    assert (r2.provider, r2.region, r2.path_style) == ("r2", "auto", False)
    with pytest.raises(CommitmentError, match="auto, path or virtual"):
        BucketLocation.published("miner", "bkt", None, {"MR_PUBLIC_ADDRESSING_STYLE": "dns"}, own_region="us-east-1")


# -- the command line ---------------------------------------------------------------------------------------------

def test_encode_prints_the_string_alone(capsys) -> None:
    code = main(["commitment", "encode", "--role", "miner", "--bucket", "b" * 15, "--endpoint", R2,
                 "--access-key-id", R2_KEY, "--secret-access-key", R2_SECRET])
    out = capsys.readouterr()
    assert code == 0 and out.err == ""
    assert out.out == BucketLocation("miner", "b" * 15, R2, R2_KEY, R2_SECRET).encode() + "\n"


def test_encode_exits_2_when_the_commitment_does_not_fit() -> None:
    """Run as operators do, in a process of its own: the reason on stderr, nothing on stdout, exit code 2."""
    result = subprocess.run(
        [sys.executable, "-m", "mapreduce", "commitment", "encode", "--role", "miner", "--bucket", "b" * 63,
         "--endpoint", "https://minio.storage.example-provider.com:9000", "--access-key-id", "k" * 20,
         "--secret-access-key", "s" * 40, "--path-style"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert "the chain stores at most 128" in result.stderr and "Traceback" not in result.stderr


def test_encode_names_an_invalid_bucket_without_a_traceback(capsys) -> None:
    code = main(["commitment", "encode", "--role", "miner", "--bucket", "b", "--region", "us-east-1"])
    out = capsys.readouterr()
    assert code == 2 and out.out == "" and "not a valid S3 bucket name" in out.err


def test_encode_refuses_non_hex_r2_keys(capsys) -> None:
    code = main(["commitment", "encode", "--role", "peer", "--bucket", "bkt", "--endpoint", R2,
                 "--access-key-id", "not-hex", "--secret-access-key", R2_SECRET])
    out = capsys.readouterr()
    assert code == 2 and out.out == "" and "32 lower-case hex digits" in out.err


@pytest.mark.parametrize("location, endpoint, region, path_style", [
    (ROUND_TRIPS["aws"], "https://s3.ap-southeast-1.amazonaws.com", "ap-southeast-1", False),
    (ROUND_TRIPS["r2"], R2, "auto", True),
    (ROUND_TRIPS["minio-path"], "http://203.0.113.7:9000", "us-east-1", True),
])
def test_decode_prints_exactly_the_documented_keys(capsys, location: BucketLocation, endpoint: str, region: str,
                                                    path_style: bool) -> None:
    assert main(["commitment", "decode", location.encode()]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "role": location.role, "bucket": location.bucket, "endpoint": endpoint,
        "access_key_id": location.access_key_id, "secret_access_key": location.secret_access_key,
        "region": region, "path_style": path_style}


def test_decode_of_garbage_exits_2(capsys) -> None:
    assert main(["commitment", "decode", "mr2|m|x|bkt||||"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "unknown provider" in out.err
