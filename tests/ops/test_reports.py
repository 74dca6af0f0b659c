"""``python -m mapreduce report``: finding a validator's reports in a bucket, reading them, drawing them."""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone

import pytest

from mapreduce.wire import keys
from mapreduce.ops import report_command
from mapreduce.errors import InvalidObject
from mapreduce.ops.plots import latency_figure, rejections_figure, scores_figure
from mapreduce.ops.reports import ReportError, ReportSet, find_reports, parse_report
from mapreduce.wire.records import encode_report
from mapreduce.scoring import SegmentCheck
from mapreduce.wire.signing import Signer
from mapreduce.validator import WindowReport
from storage import ObjectInfo

from .helpers import is_png, mapreduce, s3_env

SIGNERS = {n: Signer.from_uri(f"//reports/{n}") for n in ("v1", "v2")}
V1, V2 = SIGNERS["v1"].hotkey, SIGNERS["v2"].hotkey
M1, M2 = "5" + "A" * 47, "5" + "B" * 47
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def info(key: str, minutes: int = 0) -> ObjectInfo:
    return ObjectInfo(key, 100, "etag", T0 + timedelta(minutes=minutes))


def report(window: int, validator: str = V1) -> WindowReport:
    """A realistic report: M1 fine, M2 missing every other window, a rejection now and then."""
    checks = [SegmentCheck(M1, 0, "ok", latency=0.5 + window % 3, score=0.9, difference=0.0)]
    if window % 2:
        checks.append(SegmentCheck(M2, 1, "missing", reason="no output by the reduce deadline"))
    else:
        checks.append(SegmentCheck(M2, 1, "ok", latency=2.0, score=0.7, difference=0.0))
    scores = {c.miner: c.score for c in checks}
    return WindowReport(window, validator, checks, scores, {m: s / 2 for m, s in scores.items()},
                        rejected={"late": window % 2})


def signed(r: WindowReport, run: str = "run-x", signer: Signer | None = None) -> bytes:
    """The report as its validator publishes it: signed (mapreduce/wire/records.py)."""
    signer = signer or SIGNERS["v1"]
    return bytes(encode_report(run, r.window, signer, json.loads(r.to_json())).data)


def test_find_reports_picks_the_newest_run_and_needs_a_validator_when_ambiguous() -> None:
    listing = [info(str(keys.report_key("old", w, V1)), w) for w in range(3)]
    listing += [info(str(keys.report_key("new", w, V1)), 10 + w) for w in range(2)]
    listing += [info(str(keys.input_key("new", 0, 0, M1, "0" * 128))), info("notes/readme.txt")]
    run, validator, infos = find_reports(listing)
    assert (run, validator, len(infos)) == ("new", V1, 2)
    assert find_reports(listing, run="old")[2][-1].key.endswith(f"w{2:08d}/report/{V1}")

    listing.append(info(str(keys.report_key("new", 5, V2)), 30))
    with pytest.raises(ReportError, match="--validator"):
        find_reports(listing)
    assert len(find_reports(listing, validator=V2)[2]) == 1
    with pytest.raises(ReportError, match="no validator reports found for run nope"):
        find_reports(listing, run="nope")


def test_parse_report_rejects_what_is_not_a_report() -> None:
    assert parse_report(signed(report(4)), "run-x", 4, V1)["window"] == 4
    forged = WindowReport(4, V1, [], {M1: 1.0}, {M1: 1.0})
    for bad, reason in ((b"[]", "truncated"), (report(4).to_json().encode(), "header_too_large"),
                        (signed(report(4), signer=SIGNERS["v2"]), "key_mismatch"),  # signed, by someone else
                        (signed(report(5)), "key_mismatch"),  # another window's report
                        (signed(forged, run="other"), "key_mismatch")):
        with pytest.raises(InvalidObject) as e:
            parse_report(bad, "run-x", 4, V1)
        assert e.value.reason == reason, (bad[:40], e.value)
    for body, reason in (({"window": 4, "validator": V1, "checks": {}}, "malformed_report"),
                         ({"window": 4, "validator": V2}, "malformed_report")):
        with pytest.raises(InvalidObject) as e:
            parse_report(bytes(encode_report("run-x", 4, SIGNERS["v1"], body).data), "run-x", 4, V1)
        assert e.value.reason == reason


def test_figures_show_the_reports_data() -> None:
    rs = ReportSet("b", "run", V1, [parse_report(signed(report(w), "run"), "run", w, V1) for w in range(10, 14)])
    ax = scores_figure(rs).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines[M1[:8]].get_xdata()) == [10, 11, 12, 13]
    assert list(lines[M2[:8]].get_ydata()) == [0.7, 0.0, 0.7, 0.0]  # a missing output scores 0
    assert len(ax.get_lines()) == 4  # a score line and an EMA line per miner

    median = [line for line in latency_figure(rs).axes[0].get_lines() if line.get_label() == "median"][0]
    assert list(median.get_xdata()) == [10, 11, 12, 13]

    top, bottom = rejections_figure(rs).axes[:2]
    assert [p.get_height() for p in top.patches] == [0, 1, 0, 1]  # "late" objects per window
    assert [p.get_height() for p in bottom.patches] == [0, 1, 0, 1]  # "missing" checks per window


async def test_report_command_writes_pngs_from_a_bucket(embedded_s3, store, bucket, tmp_path) -> None:
    for w in range(20, 25):
        await store.put(bucket, str(keys.report_key("run-x", w, V1)), signed(report(w)))
    await store.put(bucket, str(keys.report_key("run-x", 25, V1)), b"{ torn")  # a damaged report is skipped
    await store.put(bucket, str(keys.report_key("run-x", 26, V1)), report(26).to_json().encode())  # unsigned
    await store.put(bucket, "something/else", b"not ours")
    out = mapreduce("report", "--bucket", bucket, "--out", str(tmp_path / "plots"), env=s3_env(embedded_s3),
                    cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"run run-x, validator {V1}: 5 windows (20..24), 2 unreadable reports skipped" in out.stdout
    for name in ("scores.png", "latency.png", "rejections.png"):
        assert f"wrote {tmp_path / 'plots' / name}" in out.stdout
        assert is_png(tmp_path / "plots" / name)


def test_report_command_says_what_is_wrong(embedded_s3, bucket, tmp_path, monkeypatch, capsys) -> None:
    """In process (the same main() the command calls), to spare two interpreter start-ups."""
    for name, value in s3_env(embedded_s3).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)

    def run(bucket_name: str) -> tuple[int, str]:
        parser = argparse.ArgumentParser()
        report_command.add_arguments(parser)
        code = report_command.main(parser.parse_args(["--bucket", bucket_name]))
        return code, capsys.readouterr().out

    code, out = run(bucket)
    assert code == 1 and "no validator reports found" in out
    code, out = run("no-such-bucket-here")
    assert code == 1 and "BucketNotFound" in out and "What to do" in out
    code, out = run("Bad_Bucket")
    assert code == 1 and "not a valid S3 bucket name" in out
    assert not (tmp_path / "reports").exists()


def test_a_signed_report_with_malformed_rows_is_refused_not_plotted() -> None:
    """A validator signs whatever it likes: every field the plots and the miners read is checked when the report is
    decoded (mapreduce/wire/records.py), so a malformed row is a typed refusal, never a KeyError in the plots."""
    def body(**fields) -> bytes:
        return bytes(encode_report("run-x", 4, SIGNERS["v1"], {"window": 4, "validator": V1, **fields}).data)

    ok = parse_report(body(), "run-x", 4, V1)  # missing fields read as empty
    assert (ok["checks"], ok["scores"], ok["ema"], ok["rejected"], ok["hosting"]) == ([], {}, {}, {}, [])
    for fields in ({"checks": [{"status": "ok"}]},  # no miner, no segment: plots would raise KeyError
                   {"checks": [{"miner": M1, "segment": 0, "status": "ok", "latency": "fast"}]},
                   {"checks": [{"miner": "../x", "segment": 0, "status": "ok"}]},
                   {"hosting": [{"miner": M1, "segment": -1, "status": "ok"}]},
                   {"scores": {M1: 5.0}}, {"ema": {"not-a-hotkey": 0.5}}, {"ema": []},
                   {"rejected": {"late": -1}}, {"rejected": {"late": True}}):
        with pytest.raises(InvalidObject) as e:
            parse_report(body(**fields), "run-x", 4, V1)
        assert e.value.reason == "malformed_report", fields


def test_figures_name_miners_as_told_keep_them_apart_and_span_the_windows() -> None:
    """Labels as in the swarm's table (m0, m1); equal latencies of two miners in one window stay two dots; an axis
    spans the windows shown even with nothing drawn on it."""
    rs = ReportSet("b", "run", V1, [parse_report(signed(report(w), "run"), "run", w, V1) for w in (20, 22)],
                   labels={M2: "m0", M1: "m1"})
    lines = [line.get_label() for line in scores_figure(rs).axes[0].get_lines()]
    assert lines[0].startswith("m0 ") and lines[2].startswith("m1 ")  # score + EMA line per miner, m0 first

    same = [parse_report(signed(report(w), "run"), "run", w, V1) for w in (20, 21)]
    for r in same:
        for c in r["checks"]:
            c["latency"] = 1.0
    ax = latency_figure(ReportSet("b", "run", V1, same)).axes[0]
    xs = [tuple(x for x, _ in col.get_offsets()) for col in ax.collections]
    assert len(xs) == 2 and not set(xs[0]) & set(xs[1]), xs  # M1's and M2's dots at 20 do not overlap

    quiet = [parse_report(signed(WindowReport(w, V1, [], {}, {}), "run"), "run", w, V1) for w in (30, 31, 32)]
    top, bottom = rejections_figure(ReportSet("b", "run", V1, quiet)).axes[:2]
    assert top.get_xlim() == (29.5, 32.5) and bottom.get_xlim() == (29.5, 32.5)


async def test_report_command_takes_a_window_range(embedded_s3, store, bucket, tmp_path) -> None:
    for w in range(8, 13):
        await store.put(bucket, str(keys.report_key("run-x", w, V1)), signed(report(w)))
    out = mapreduce("report", "--bucket", bucket, "--windows", "9:11", "--label", f"{M1}=m0",
                    "--out", str(tmp_path / "plots"), env=s3_env(embedded_s3), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"run run-x, validator {V1}: 3 windows (9..11)" in out.stdout
    bad = mapreduce("report", "--bucket", bucket, "--windows", "11:9", env=s3_env(embedded_s3), cwd=tmp_path)
    assert bad.returncode == 2 and "FIRST:LAST" in bad.stderr
