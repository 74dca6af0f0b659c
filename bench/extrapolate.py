"""The projection of docs/SCALING.md: `bench.scale.predict` and `bench.scale.model_sizes` at a size no machine here
runs, with prices, S3's request-rate limits and the all-reduce baselines. ``python -m bench.scale --extrapolate``.

Nothing here is measured. The request formulas are `predict`'s (so the document and the code agree); what this
module adds is arithmetic on them: phase lengths, poll rounds from poll intervals, rates, and dollars.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from typing import Any

from mapreduce.peer import PeerConfig
from mapreduce.validator import ValidatorConfig
from mapreduce.windows import WindowConfig

from .scale import (BYTES_DOWN, BYTES_UP, EGRESS, KINDS, OWN_READS, REQUESTS, ROLES, Knobs, miner_loads,
                    model_sizes, predict)

GB = 1e9
ITEMSIZE = {"bfloat16": 2, "float32": 4}
# Request classes as S3 and R2 bill them (DELETE is free on both).
CLASS_A = ("PUT", "LIST poll", "LIST")
CLASS_B = ("GET", "GET range", "HEAD")
READS = ("GET", "GET range", "HEAD", "LIST poll", "LIST")  # against S3's 5,500 GET/HEAD per s (LIST counted here)
WRITES = ("PUT", "DELETE")  # against S3's 3,500 PUT/COPY/POST/DELETE per s


@dataclass(frozen=True)
class Prices:
    """Dollars, list prices: S3 Standard in us-east-1 (first egress tier), Cloudflare R2 Standard."""

    s3_class_a_per_1000: float = 0.005  # PUT, COPY, POST, LIST
    s3_class_b_per_1000: float = 0.0004  # GET, HEAD and the rest
    s3_egress_per_gb: float = 0.09  # to the internet
    r2_class_a_per_million: float = 4.50
    r2_class_b_per_million: float = 0.36
    r2_egress_per_gb: float = 0.0


@dataclass(frozen=True)
class ExtrapolationSpec:
    peers: int = 256
    miners: int = 64
    segments: int = 256
    redundancy: int = 2
    validators: int = 16
    parameters: float = 7e9
    window_seconds: float = 120.0
    design: str = "new"
    # Poll intervals, seconds. Today a peer polls each segment's replicas every `PeerConfig.poll_interval`; the new
    # peer's watch (mapreduce/watch.py) starts there and backs off by `peer_backoff` up to `peer_poll_max` while
    # nothing new appears; a validator watches outputs every `ValidatorConfig.poll_interval`. Polls are counted
    # from the upload deadline to the reduce deadline with every miner still polled: the worst case, outputs that
    # appear at the deadline (each new output resets the peer's interval, but a miner whose outputs are all in is
    # polled no more).
    peer_poll_interval: float = PeerConfig().poll_interval
    peer_backoff: float = 1.5
    peer_poll_max: float = getattr(PeerConfig(), "max_poll_interval", 1.0)
    validator_poll_interval: float = ValidatorConfig().poll_interval

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ExtrapolationSpec":
        return cls(**{f.name: getattr(args, f"x_{f.name}") for f in fields(cls)})

    @property
    def phases(self) -> tuple[float, float, float]:
        """Seconds of the upload phase, the reduce phase and the rest of a window, in a default `WindowConfig`'s
        proportions (4, 4 and 2 of 10 blocks)."""
        w = WindowConfig()
        upload = self.window_seconds * w.upload_blocks / w.blocks_per_window
        reduce = self.window_seconds * w.reduce_blocks / w.blocks_per_window
        return upload, reduce, self.window_seconds - upload - reduce


def add_extrapolation_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--extrapolate", "the projected run (defaults: docs/SCALING.md's)")
    for f in fields(ExtrapolationSpec):
        flag = f"--x-{f.name.replace('_', '-')}"
        group.add_argument(flag, dest=f"x_{f.name}", type=type(f.default), default=f.default,
                           help=f"default {f.default}")


def backoff_rounds(seconds: float, first: float, factor: float, cap: float) -> int:
    """Polls in ``seconds`` when the wait between polls starts at ``first`` and grows by ``factor`` up to ``cap``
    (one poll at the start)."""
    rounds, t, wait = 1, 0.0, first
    while t + wait <= seconds:
        t += wait
        rounds += 1
        wait = min(cap, wait * factor)
    return rounds


def _dollars(counts: dict[str, float], egress_bytes: float, p: Prices) -> dict[str, float]:
    a = sum(counts[k] for k in CLASS_A)
    b = sum(counts[k] for k in CLASS_B)
    s3 = a / 1000 * p.s3_class_a_per_1000 + b / 1000 * p.s3_class_b_per_1000
    r2 = a / 1e6 * p.r2_class_a_per_million + b / 1e6 * p.r2_class_b_per_million
    return {"class_a": a, "class_b": b, "egress_gb": egress_bytes / GB,
            "s3_requests": s3, "s3_egress": egress_bytes / GB * p.s3_egress_per_gb,
            "s3": s3 + egress_bytes / GB * p.s3_egress_per_gb,
            "r2_requests": r2, "r2": r2 + egress_bytes / GB * p.r2_egress_per_gb}


def extrapolate(spec: ExtrapolationSpec, prices: Prices = Prices(), knobs: Knobs = Knobs()) -> dict[str, Any]:
    P, M, S, r, V = spec.peers, spec.miners, spec.segments, min(spec.redundancy, spec.miners), spec.validators
    upload_s, reduce_s, rest_s = spec.phases
    polls = {
        # today: each segment polls its replicas every interval, from the upload deadline until its output is there
        "today": backoff_rounds(reduce_s, spec.peer_poll_interval, 1.0, spec.peer_poll_interval),
        "new": backoff_rounds(reduce_s, spec.peer_poll_interval, spec.peer_backoff, spec.peer_poll_max),
    }
    validator_rounds = backoff_rounds(reduce_s, spec.validator_poll_interval, 1.0, spec.validator_poll_interval)
    windows_per_day = 86400 / spec.window_seconds
    out: dict[str, Any] = {"spec": asdict(spec), "prices": asdict(prices), "knobs": asdict(knobs),
                           "phases_seconds": {"upload": upload_s, "reduce": reduce_s, "rest": rest_s},
                           "poll_rounds": {"peer_today_per_segment": polls["today"], "peer_new_per_window":
                                           polls["new"], "validator": validator_rounds},
                           "windows_per_day": windows_per_day, "dtypes": {}}
    loads = miner_loads(S, r, M)
    m_mean = sum(loads) / M
    for dtype, itemsize in ITEMSIZE.items():
        G = spec.parameters * itemsize
        sizes = model_sizes(P, M, S, r, int(spec.parameters), itemsize, knobs)
        pred = {design: predict(P, M, S, r, V, design=design, peer_poll_rounds=polls[design],
                                validator_poll_rounds=validator_rounds, sizes=sizes, knobs=knobs)
                for design in ("today", "new")}
        chosen = pred[spec.design]
        peer = chosen["peer"]
        bytes_per_peer = {
            "ours_up": peer[BYTES_UP], "ours_down": peer[BYTES_DOWN],
            "allgather_up": G, "allgather_down": (P - 1) * G,
            "ring_up": 2 * (P - 1) / P * G, "ring_down": 2 * (P - 1) / P * G,
        }
        # Rates against S3's per-prefix limits, averaged over the phase each request belongs to, for one miner's
        # bucket taken as a single prefix (the worst case: S3 splits a busy bucket's prefixes only over time).
        # Upload phase: the peers' input PUTs. Reduce phase: the miner's own reads and everyone's polls and
        # listings. The rest: the peers' downloads and audits and the validators' checks.
        mb = chosen["by_bucket"]["miner"]
        new_peer_puts = P * S * r / M
        reads_reduce = (sum(mb[k] for k in ("LIST poll", "LIST", "HEAD")) + P * m_mean)  # miner GETs: P per seg
        reads_rest = sum(mb[k] for k in READS) - reads_reduce
        rates = {
            "miner_bucket_put_per_s_upload": new_peer_puts / upload_s,
            "miner_segment_prefix_put_per_s_upload": P / upload_s,
            "miner_bucket_read_per_s_reduce": reads_reduce / reduce_s,
            "miner_bucket_read_per_s_rest": reads_rest / rest_s,
            "miner_out_prefix_list_per_s_reduce": mb["LIST poll"] / reduce_s,
            "validator_bucket_read_per_s": chosen["by_bucket"]["validator"][REQUESTS] / spec.window_seconds,
            "peer_bucket_read_per_s": chosen["by_bucket"]["peer"][REQUESTS] / spec.window_seconds,
            "limit_write": 3500, "limit_read": 5500,
        }
        bills = {}
        for role in ROLES:
            b = chosen["by_bucket"][role]
            per_window = _dollars(b, b[EGRESS], prices)
            per_window["own_reads_gb"] = b[OWN_READS] / GB
            bills[role] = per_window
        count = {"peer": P, "miner": M, "validator": V}
        network = {k: sum(bills[role][k] * count[role] for role in ROLES) for k in bills["peer"]}
        out["dtypes"][dtype] = {
            "gradient_bytes": G, "sizes": asdict(sizes), "requests": {d: {role: pred[d][role] for role in
                                                                          (*ROLES, "total")} for d in pred},
            "by_bucket": chosen["by_bucket"], "bytes_per_peer": bytes_per_peer, "rates": rates,
            "bills_per_window": bills, "network_per_window": network,
            "network_per_day": {k: v * windows_per_day for k, v in network.items()},
        }
    return out


def _money(x: float) -> str:
    return f"${x:,.2f}" if x < 1000 else f"${x:,.0f}"


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"


def _table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]], left: int = 1,
           note: bool = True) -> str:
    """An aligned plain-text table: the first ``left`` columns and, with ``note``, the last left-aligned, the rest
    right-aligned."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def fmt(r: tuple[str, ...]) -> str:
        cells = [f"{c:<{w}}" if i < left or (note and i == len(r) - 1) else f"{c:>{w}}"
                 for i, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()
    return "\n".join([title, fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])


def format_extrapolation(report: dict[str, Any]) -> str:
    s = report["spec"]
    up, red, rest = (report["phases_seconds"][k] for k in ("upload", "reduce", "rest"))
    pr = report["poll_rounds"]
    lines = [f"Extrapolation (bench.scale.predict, design {s['design']!r} unless marked): P={s['peers']} peers, "
             f"M={s['miners']} miners, S={s['segments']} segments, r={s['redundancy']}, V={s['validators']} "
             f"validators, {s['parameters']:.3g} parameters, windows of {s['window_seconds']:.0f} s (upload "
             f"{up:.0f} s, reduce {red:.0f} s, rest {rest:.0f} s), {report['windows_per_day']:.0f} windows a day.",
             f"Poll rounds (worst case, outputs at the reduce deadline): peer today {pr['peer_today_per_segment']} per "
             f"segment, peer new {pr['peer_new_per_window']} per window (backoff {s['peer_poll_interval']} s "
             f"x{s['peer_backoff']:g} up to {s['peer_poll_max']} s), validator {pr['validator']} per window.", ""]
    first = next(iter(report["dtypes"].values()))
    rows = []
    for role in (*ROLES, "total"):
        for key in (*KINDS, REQUESTS):
            today, new = first["requests"]["today"][role][key], first["requests"]["new"][role][key]
            if today or new:
                rows.append(("network" if role == "total" else role, key, _num(new), _num(today),
                             f"{today / new:.1f}x" if new else "-"))
    lines.append(_table("Requests per window, per process (network: all processes together)",
                        ("role", "kind", "new", "today", "today/new"), rows, left=2, note=False))
    for dtype, d in report["dtypes"].items():
        G = d["gradient_bytes"]
        b = d["bytes_per_peer"]
        z = d["sizes"]
        lines += ["", f"=== {dtype}: gradient G = {G / GB:.1f} GB; segment {z['segment_data'] / 1e6:.1f} MB, input "
                      f"object {z['input'] / 1e6:.2f} MB, output {z['output'] / 1e6:.2f} MB (proof rows included), "
                      f"record {z['record'] / 1e3:.0f} kB, report {z['report'] / 1e3:.0f} kB", ""]
        rows = [("ours (new design)", f"{b['ours_up'] / GB:,.1f}", f"{b['ours_up'] / G:.3f}",
                 f"{b['ours_down'] / GB:,.1f}", f"{b['ours_down'] / G:.3f}",
                 "up: each segment to r replicas; down: one output per segment with its proof rows, the other "
                 "replicas' headers, audits"),
                ("naive all-gather", f"{b['allgather_up'] / GB:,.1f}", "1", f"{b['allgather_down'] / GB:,.1f}",
                 f"{P_minus_1(report)}", "each peer uploads G, downloads everyone else's"),
                ("ring all-reduce", f"{b['ring_up'] / GB:,.1f}", f"{b['ring_up'] / G:.3f}",
                 f"{b['ring_down'] / GB:,.1f}", f"{b['ring_down'] / G:.3f}", "2 (P - 1) / P G each way")]
        lines.append(_table("Bytes per peer per window", ("", "up GB", "up / G", "down GB", "down / G", "note"),
                            rows))
        rt = d["rates"]
        lim_w, lim_r = rt["limit_write"], rt["limit_read"]
        rate_rows = [("miner bucket, upload phase", "PUT", rt["miner_bucket_put_per_s_upload"], lim_w,
                      "the peers' inputs"),
                     ("one segment's in/ prefix, upload phase", "PUT", rt["miner_segment_prefix_put_per_s_upload"],
                      lim_w, "P inputs"),
                     ("miner bucket, reduce phase", "reads", rt["miner_bucket_read_per_s_reduce"], lim_r,
                      "its own listings and GETs; peers' and validators' polls and listings"),
                     ("  of which out/ LIST polls", "reads", rt["miner_out_prefix_list_per_s_reduce"], lim_r, ""),
                     ("miner bucket, rest of the window", "reads", rt["miner_bucket_read_per_s_rest"], lim_r,
                      "peers' downloads, header reads, audits; validators' checks"),
                     ("validator bucket, whole window", "reads", rt["validator_bucket_read_per_s"], lim_r,
                      "miners' standing reads"),
                     ("peer bucket, whole window", "reads", rt["peer_bucket_read_per_s"], lim_r, "auditors' reads")]
        lines += ["", _table("Request rates per second, averaged over the phase; one bucket taken as one prefix "
                             "(LIST counted with GET/HEAD)", ("where", "kind", "rate", "S3 limit", "headroom",
                                                              "what"),
                             [(w, k, _num(v), f"{lim:,}", f"{lim / v:,.1f}x" if v else "-", n)
                              for w, k, v, lim, n in rate_rows], left=2)]
        rows = []
        for role in ROLES:
            bill = d["bills_per_window"][role]
            rows.append((f"each {role}", f"{bill['class_a']:,.0f}", f"{bill['class_b']:,.0f}",
                         f"{bill['egress_gb']:,.1f}", _money(bill["s3_requests"]), _money(bill["s3_egress"]),
                         _money(bill["s3"]), _money(bill["r2"]), f"{bill['own_reads_gb']:,.1f}"))
        net, day = d["network_per_window"], d["network_per_day"]
        for label, x in (("network, per window", net), ("network, per day", day)):
            rows.append((label, f"{x['class_a']:,.0f}", f"{x['class_b']:,.0f}", f"{x['egress_gb']:,.0f}",
                         _money(x["s3_requests"]), _money(x["s3_egress"]), _money(x["s3"]), _money(x["r2"]),
                         f"{x['own_reads_gb']:,.0f}"))
        lines += ["", _table("Dollars per window, billed to each bucket's owner (own reads: the owner's GETs of its "
                             "own bucket, free in-region, egress otherwise; not in the sums)",
                             ("bucket owner", "class A", "class B", "egress GB", "S3 requests", "S3 egress", "S3",
                              "R2", "own reads GB"), rows)]
    return "\n".join(lines)


def P_minus_1(report: dict[str, Any]) -> str:
    return str(report["spec"]["peers"] - 1)
