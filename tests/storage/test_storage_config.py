"""Configuration, error types and the backoff policy: no server needed."""

from __future__ import annotations

import pickle
import random
from dataclasses import replace
from pathlib import Path

import pytest

from storage import (
    AccessDenied,
    BucketNotFound,
    InvalidRange,
    NotFound,
    ObjectStore,
    ObjectTooLarge,
    PreconditionFailed,
    RetriesExhausted,
    RetryConfig,
    S3Config,
    StorageError,
    TransferConfig,
)
from storage.retry import backoff_delay

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ACCESS = "AKIAIOSFODNN7EXAMPLE"
TOKEN = "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"
ENV_VARS = [
    f"{p}{n}"
    for p in ("MR_S3_", "AWS_")
    for n in ("ENDPOINT_URL", "REGION", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "ADDRESSING_STYLE", "SESSION_TOKEN",
              "DEFAULT_REGION", "ENDPOINT_URL_S3")
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_repr_and_str_mask_credentials() -> None:
    cfg = S3Config("https://example.r2.cloudflarestorage.com", "auto", ACCESS, SECRET, "path", session_token=TOKEN)
    for text in (repr(cfg), str(cfg), repr(ObjectStore(cfg)), str([cfg])):
        assert SECRET not in text and TOKEN not in text and ACCESS not in text
    assert "****" in repr(cfg) and ACCESS[-4:] in repr(cfg)  # recognisable, not usable
    assert "https://example.r2.cloudflarestorage.com" in repr(cfg)


def test_s3config_validation() -> None:
    with pytest.raises(ValueError):
        S3Config(addressing_style="dns")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        S3Config(access_key_id=ACCESS)  # secret missing
    with pytest.raises(ValueError):
        S3Config(region="")


def test_from_env_reads_dotenv_file(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\n"
        "MR_S3_ENDPOINT_URL=http://127.0.0.1:9000\n"
        "MR_S3_REGION=eu-west-1\n"
        f"MR_S3_ACCESS_KEY_ID={ACCESS}\n"
        f"MR_S3_SECRET_ACCESS_KEY='{SECRET}'\n"
        "MR_S3_ADDRESSING_STYLE=path\n"
    )
    cfg = S3Config.from_env(env_file)
    assert cfg == S3Config("http://127.0.0.1:9000", "eu-west-1", ACCESS, SECRET, "path")
    assert cfg.session_token is None


def test_from_env_process_env_wins_and_aws_fallbacks(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text("MR_S3_REGION=eu-west-1\nMR_S3_ENDPOINT_URL=\nAWS_ENDPOINT_URL=http://file-fallback:1\n")
    clean_env.setenv("MR_S3_REGION", "ap-south-1")  # the process environment beats the file
    clean_env.setenv("AWS_ACCESS_KEY_ID", ACCESS)  # standard names fill what MR_S3_* leave unset
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    clean_env.setenv("AWS_SESSION_TOKEN", TOKEN)
    cfg = S3Config.from_env(env_file)
    assert cfg.region == "ap-south-1"
    assert cfg.endpoint_url == "http://file-fallback:1"  # empty MR_ value counts as unset
    assert (cfg.access_key_id, cfg.secret_access_key, cfg.session_token) == (ACCESS, SECRET, TOKEN)
    assert cfg.addressing_style == "auto"


def test_from_env_custom_prefix_missing_file_and_explicit_environ(tmp_path: Path, clean_env: object) -> None:
    environ = {"X_REGION": "auto", "X_ADDRESSING_STYLE": "VIRTUAL"}
    cfg = S3Config.from_env(tmp_path / "absent.env", prefix="X_", environ=environ)
    assert (cfg.region, cfg.addressing_style, cfg.endpoint_url, cfg.access_key_id) == ("auto", "virtual", None, None)
    assert S3Config.from_env(None, environ={}) == S3Config()
    with pytest.raises(ValueError):
        S3Config.from_env(None, environ={"MR_S3_ADDRESSING_STYLE": "sideways"})


def test_env_example_lists_every_variable() -> None:
    text = (Path(__file__).parents[2] / ".env.example").read_text()
    for name in ("ENDPOINT_URL", "REGION", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY", "ADDRESSING_STYLE", "SESSION_TOKEN"):
        assert f"MR_S3_{name}=" in text


def test_transfer_and_retry_config_validation() -> None:
    with pytest.raises(ValueError):
        TransferConfig(part_size=1024 * 1024)  # below S3's 5 MiB part minimum
    with pytest.raises(ValueError):
        TransferConfig(max_concurrency=0)
    with pytest.raises(ValueError):
        TransferConfig(read_timeout=0)
    with pytest.raises(ValueError):
        RetryConfig(max_attempts=0)
    tuned = replace(TransferConfig(), part_size=16 * 1024 * 1024)
    assert tuned.part_size == 16 * 1024 * 1024 and tuned.max_concurrency == TransferConfig().max_concurrency


def test_backoff_is_exponential_capped_and_jittered() -> None:
    exact = RetryConfig(base_delay=0.1, max_delay=1.0, jitter=False)
    assert [backoff_delay(exact, n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    jittered = RetryConfig(base_delay=0.1, max_delay=1.0, jitter=True)
    rng = random.Random(3)
    draws = [backoff_delay(jittered, 4, rng) for _ in range(200)]
    assert all(0.0 <= d <= 0.8 for d in draws)
    assert max(draws) - min(draws) > 0.4  # full jitter spreads over the whole [0, cap] interval


def test_errors_are_typed_readable_and_picklable() -> None:
    errors = [
        NotFound("bkt", "a/b"),
        BucketNotFound("bkt"),
        PreconditionFailed("bkt", "k", "If-None-Match"),
        ObjectTooLarge("bkt", "k", 2000, 1000),
        AccessDenied("bkt", "k", operation="PutObject", code="InvalidAccessKeyId"),
        RetriesExhausted("PutObject", "bkt", "k", 5, "SlowDown (HTTP 503)", 1.5),
        InvalidRange("bkt", "k", 10, 5),
    ]
    for err in errors:
        assert isinstance(err, StorageError)
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is type(err) and str(clone) == str(err) and clone.__dict__ == err.__dict__
    assert str(errors[0]) == "not found: s3://bkt/a/b" and errors[0].key == "a/b"
    assert (errors[3].size, errors[3].limit) == (2000, 1000) and "2000" in str(errors[3])
    assert errors[5].attempts == 5 and "5 attempt" in str(errors[5]) and "SlowDown" in str(errors[5])
    assert errors[2].condition == "If-None-Match"
    assert not issubclass(BucketNotFound, NotFound)  # a missing bucket is a setup problem, not a missing object
