"""`S3Config.to_env` is the inverse of `S3Config.from_env`: the ``MR_S3_*`` variables a child process is given."""

from __future__ import annotations

import pytest

from storage import S3Config

CONFIGS = [
    S3Config(),
    S3Config("http://127.0.0.1:9000", "us-east-1", "testing", "testing", "path"),
    S3Config("https://acct.r2.cloudflarestorage.com", "auto", "AKIAEXAMPLE", "c2VjcmV0/+=", "virtual",
             session_token="FwoGZXIvYXdzEXAMPLE"),
    S3Config(region="eu-west-1", addressing_style="auto"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=range(len(CONFIGS)))
def test_from_env_of_to_env_is_the_config(cfg: S3Config) -> None:
    env = cfg.to_env()
    assert S3Config.from_env(None, environ=env) == cfg
    assert set(env) == {f"MR_S3_{n}" for n in ("ENDPOINT_URL", "REGION", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY",
                                                "ADDRESSING_STYLE", "SESSION_TOKEN")}
    assert all(isinstance(v, str) for v in env.values())  # an environment holds strings only
    assert S3Config.from_env(None, prefix="X_", environ=cfg.to_env(prefix="X_")) == cfg


def test_to_env_laid_over_an_environment_replaces_stale_values() -> None:
    stale = {"MR_S3_SESSION_TOKEN": "old-token", "MR_S3_ENDPOINT_URL": "http://old:1", "MR_S3_REGION": "ap-south-1"}
    cfg = S3Config("http://new:2", access_key_id="a", secret_access_key="b")
    assert S3Config.from_env(None, environ={**stale, **cfg.to_env()}) == cfg


def test_to_env_written_to_a_dotenv_file_reads_back(tmp_path, monkeypatch) -> None:
    for name in S3Config().to_env():
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    cfg = CONFIGS[2]
    path = tmp_path / ".env"
    path.write_text("".join(f"{k}='{v}'\n" for k, v in cfg.to_env().items()))
    assert S3Config.from_env(path) == cfg


def test_anonymous_config_has_no_env_form() -> None:
    with pytest.raises(ValueError, match="anonymous"):
        S3Config("http://127.0.0.1:9000", anonymous=True).to_env()
