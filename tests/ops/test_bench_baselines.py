"""The other systems `python -m bench` compares a window with: the naive all-gather through S3 gives the exact mean
(within fp32 summation error), and hivemind's row is "skipped" with its reason when its virtualenv is absent."""
from __future__ import annotations

from pathlib import Path

from bench.baselines import hivemind_averaging
from bench.naive import naive_allgather
from storage import EmbeddedS3


def test_naive_allgather_returns_the_exact_mean(embedded_s3: EmbeddedS3) -> None:
    result = naive_allgather(embedded_s3.endpoint_url, peers=2, mib_per_peer=1, reps=1)
    assert len(result.rounds) == 1 and result.seconds > 0
    assert result.mean_abs_max > 1.0  # the comparison ran against real data (262,144 means of two N(0, 1))
    # Two fp32 values summed (one rounding, at most half an ulp of the sum) and halved (exact): within 2^-24 of the
    # largest mean, with a factor 2 to spare.
    assert 0 <= result.error_max <= result.mean_abs_max * 2 ** -23


def test_hivemind_is_skipped_with_the_reason_without_its_venv(tmp_path: Path) -> None:
    result = hivemind_averaging(2, 1, python=tmp_path / ".venv-baselines" / "bin" / "python")
    assert result.seconds is None
    assert result.skipped == "no .venv-baselines: run make bench-baselines"
