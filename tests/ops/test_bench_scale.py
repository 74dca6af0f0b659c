"""``python -m bench.scale``: its JSON, and its measured counts against `bench.scale.predict` on a tiny network.

The measured poll rounds are handed to `predict` (polls depend on timing, not on the protocol), so what remains
to compare is structural: every other request the roles make. The tolerances are what timing can still move:
a miner lists a segment's inputs once or twice depending on whether it starts before its listing is final
(`predict` assumes the first `MinerConfig.segment_concurrency` segments do), which is up to a tenth of a tiny
miner's requests and about 1% of the network's.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.extrapolate import ExtrapolationSpec, extrapolate
from bench.scale import Knobs, model_sizes, predict

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("case", "issue"), [((4, 2, 2), 41), ((16, 4, 8), 455), ((32, 8, 16), 1679)])
def test_predict_gives_the_issues_figures(case: tuple[int, int, int], issue: int) -> None:
    # The issue counted one poll LIST per segment (the first replica alone): half a round of r = 2 replicas.
    p, m, s = case
    peer = predict(p, m, s, 2, 1, design="today", peer_poll_rounds=0.5)["peer"]
    assert peer["requests"] == issue
    assert peer["GET range"] == 3 * p * s  # the P^2 term: every input opened and one range read, per segment


def test_the_new_design_removes_the_square() -> None:
    def peer(p: int, audits: float) -> float:
        return predict(p, 32, 64, 2, 1, design="new", peer_poll_rounds=10, sizes=model_sizes(p, 32, 64, 2, 64 * 64, 4),
                       knobs=Knobs(audits_per_segment=audits))["peer"]["requests"]
    assert peer(64, 0.0) == peer(256, 0.0)  # without audits a peer's requests do not depend on P at all
    # With them each peer audits S * audits / P segments of 1 + 3P requests: that tends to 3 S, whatever P.
    assert peer(256, 1.0) - peer(256, 0.0) == pytest.approx(64 / 256 * (1 + 3 * 256))
    report = extrapolate(ExtrapolationSpec())
    bf16 = report["dtypes"]["bfloat16"]["requests"]
    assert bf16["new"]["peer"]["requests"] < bf16["today"]["peer"]["requests"] / 10


def test_json_on_a_tiny_network_matches_the_formulas() -> None:
    run = subprocess.run([sys.executable, "-m", "bench.scale", "--cases", "4x2x2", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)  # stdout holds exactly one JSON object
    (case,) = report["cases"]
    for key in ("peers", "miners", "segments", "per_peer_requests", "per_miner_requests", "per_validator_requests",
                "total_requests", "per_peer_bytes_down", "predicted_total_requests"):
        assert isinstance(case[key], (int, float)), key
    assert (case["peers"], case["miners"], case["segments"]) == (4, 2, 2)
    assert case["fallbacks"] == 0 and not case["checks_not_ok"] and case["validator_checks"] > 0
    assert case["total_requests"] == pytest.approx(case["predicted_total_requests"], rel=0.05)
    for role in ("peer", "miner", "validator"):
        measured, predicted = case["measured"][role], case["predicted"][role]
        assert measured["requests"] == pytest.approx(predicted["requests"], rel=0.15), role
        assert measured["GET range"] == predicted["GET range"], role  # no timing in these: exact
    assert case["per_peer_bytes_down"] == pytest.approx(case["predicted"]["peer"]["bytes down"], rel=0.05)
