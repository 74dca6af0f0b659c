"""Requests and bytes per role and window at scale, measured beside what the formulas of `predict` say.

    python -m bench.scale [--peers 16,64,128] [--miners 32] [--segments 64] [--validators 1] [--windows 1]
                          [--cases 4x2x2,16x4x8] [--store memory|embedded] [--json]
    python -m bench.scale --extrapolate [--json]

Each case is an in-process network with the real roles (`mapreduce.peer.Peer`, `mapreduce.miner.Miner`,
`mapreduce.validator.Validator`), real keys and codec, tiny gradients (``--elements-per-segment`` elements per
segment) and a `SteppedChain` (bench/chain.py: a `LocalChain` whose blocks the benchmark produces as soon as each
phase's work is done, so windows take the time their work takes, whatever their length in blocks). Each participant
has its own `StorePool`, whose `TransferStats` count its requests by operation, by byte range or whole object, and
by the role of the object they were about (``in``, ``out``, ``record``...); a window's figures are the counters'
differences around it. Windows run one after another, so nothing of one window is counted in another.

For every case it prints, per role, the mean over that role's processes of one window's requests by kind (PUT,
GET of a whole object, ranged GET, HEAD, LIST, DELETE) and bytes up and down, beside `predict`'s figures. Polls
(the LISTs a peer or a validator repeats until outputs appear) depend on timing, not on the protocol: they are
reported as measured, in their own row, and `predict` is handed the measured number of poll rounds.

The store is the in-memory S3 by default (`storage.memory`: the real `ObjectStore` over an in-memory transport;
moto over HTTP costs ~7 ms per request here, and P = 128 makes millions); ``--store embedded`` runs the same on the
embedded moto server. ``--extrapolate`` prints the projection to a large run (docs/SCALING.md) from the same
formulas: requests and bytes per role and window, rates per prefix against S3's limits, and dollars on S3 and R2.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import math
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mapreduce.audit import sample_checks
from mapreduce.plan import Segment
from mapreduce.wire import hashtree
from mapreduce.wire.partial import first_read_guess
from mapreduce.hosting import HostingConfig
from mapreduce.miner import Miner, MinerConfig
from mapreduce.peer import Peer, PeerConfig
from mapreduce.validator import Validator, ValidatorConfig
from storage import EmbeddedS3, MemoryS3, StatsSnapshot, TransferStats

from .cluster import BenchCluster, bench_spec
from .table import Row, format_table

KINDS = ("PUT", "GET", "GET range", "HEAD", "LIST poll", "LIST", "DELETE")
ROLES = ("peer", "miner", "validator")
REQUESTS = "requests"
BYTES_UP, BYTES_DOWN = "bytes up", "bytes down"

# Which design `predict` describes by default: the one of the code checked out. "today" is protocol v2 (commit
# 4836666: every peer audits every output it takes, the P^2 term); "new" is protocol v3 (peers take an output two
# replicas agree on and audit only at random, one poll listing per miner). v3's PeerConfig has audits_per_segment.
DESIGN = "new" if hasattr(PeerConfig(), "audits_per_segment") else "today"


# =====================================================================================================================
# The formulas. Everything that enters them is an argument; the role configs' defaults are read from the code.
# =====================================================================================================================

@dataclass(frozen=True)
class Knobs:
    """Role settings that enter the formulas; the defaults are the roles' own defaults."""

    # peer (mapreduce/peer.py, PeerConfig): element ranges recomputed per audited output, and their length
    spot_check_ranges: int = PeerConfig().spot_check_ranges
    spot_check_elements: int = PeerConfig().spot_check_elements
    # new design only: audits per segment over the whole network when its replicas agree (each peer audits with
    # probability this / P); a disagreement or a lone replica is audited always (not modelled: honest runs)
    audits_per_segment: float = getattr(PeerConfig(), "audits_per_segment", 1.0)
    # miner (mapreduce/miner.py, MinerConfig): segments reduced at once; only the first ones start before the
    # input listing is final, and list their inputs twice
    miner_concurrency: int = MinerConfig().segment_concurrency
    # validator (mapreduce/validator.py, ValidatorConfig): peers whose evidence (signed headers of outputs they
    # refused) it reads each window, at random (new design); outputs sampled per miner, ranges per output, length
    evidence_peers: int = getattr(ValidatorConfig(), "evidence_peers", 0)
    segments_per_miner: int = ValidatorConfig().segments_per_miner
    ranges_per_segment: int = ValidatorConfig().ranges_per_segment
    range_elements: int = ValidatorConfig().range_elements


@dataclass(frozen=True)
class Sizes:
    """Object sizes in bytes (whole objects), header lengths (the 8-byte length prefix included) and the data
    section of one segment. Measured from the objects in a bench run, or modelled (`model_sizes`)."""

    input: int
    output: int
    record: int
    report: int
    input_header: int
    output_header: int
    segment_data: int  # one segment's values in the wire dtype
    itemsize: int  # bytes per element on the wire


@functools.cache
def _calibration() -> dict[str, tuple[float, ...]]:
    """Header sizes of the real codec, measured on small objects and fitted as lines: `model_sizes` extrapolates
    from them. Keys are ss58 hotkeys (48 characters), run ids 24 characters, as in a real run."""
    from mapreduce import audit
    from mapreduce.wire.codec import ObjectMeta, encode
    from mapreduce.wire.records import SegmentUpload, UploadRecord, encode_report
    from mapreduce.scoring import SegmentCheck
    from mapreduce.wire.signing import Signer
    from mapreduce.spec import RunSpec, TensorSpec
    from mapreduce.validator import WindowReport

    signer = Signer.from_uri("//bench-scale/calibration")
    hk, run, sha, tag = signer.hotkey, "r" * 24, "a" * 64, "b" * 128

    def header(obj: Any) -> int:
        return 8 + int.from_bytes(bytes(obj.data[:8]), "little")

    def output(p: int) -> int:
        inputs = json.dumps([[hk, sha, tag]] * p, separators=(",", ":"))
        extra = {"inputs": inputs, "count": str(p)}
        if hasattr(audit, "mean_digest"):  # protocol v3 outputs also sign their mean's digest
            extra["mean"] = sha
        meta = ObjectMeta(run, 1, "out", hk, 0, extra=extra)
        return header(encode(meta, {"data": torch.zeros(64), "proof": torch.zeros(1, p, 8, dtype=torch.uint8)},
                             signer))

    spec = RunSpec(run, (TensorSpec("g", (64, 1)),), segments=2, redundancy=2)

    def record(segments: int, r: int) -> int:
        uploads = {s: SegmentUpload(sha, tuple((hk, tag) for _ in range(r))) for s in range(segments)}
        return len(UploadRecord(hk, 1, uploads).encode(spec, signer).data)

    def report(miners: int, checks: int) -> int:
        body = WindowReport(1, hk, [SegmentCheck(hk, i, "ok", "", 1.5e-9, 128, 128, 128, 12.345, 0.987)
                                    for i in range(checks)], {f"{hk}{i}": 0.987 for i in range(miners)},
                            {f"{hk}{i}": 0.876 for i in range(miners)})
        return len(encode_report(run, 1, signer, json.loads(body.to_json())).data)

    in_header = header(encode(ObjectMeta(run, 1, "in", hk, 0), {"data": torch.zeros(64)}, signer))
    o1, o4 = output(1), output(4)
    r11, r21, r12 = record(1, 1), record(2, 1), record(1, 2)
    p11, p21, p12 = report(1, 1), report(2, 1), report(1, 2)
    return {"input_header": (in_header,), "output_header": (o1 - (o4 - o1) / 3, (o4 - o1) / 3),
            "record": (r11 - (r21 - r11), r21 - r11 - (r12 - r11), r12 - r11),
            "report": (p11 - (p21 - p11) - (p12 - p11), p21 - p11, p12 - p11)}


def model_sizes(P: int, M: int, S: int, r: int, numel: int, itemsize: int, knobs: Knobs = Knobs()) -> Sizes:
    """`Sizes` of a run without running it: the codec's layout (data, the hash tree's leaves, a header with one
    64-hex-digit hash per 1 MiB group) with header, record and report sizes from `_calibration`."""
    c = _calibration()
    seg = -(-numel // S) * itemsize
    groups = hashtree.group_count(hashtree.leaf_count(seg))
    in_header = round(c["input_header"][0] + 64 * (groups - 1))
    proof = hashtree.leaf_count(seg) * P * hashtree.PROOF_BYTES
    out_groups = hashtree.group_count(hashtree.leaf_count(seg + proof))
    out_header = round(c["output_header"][0] + c["output_header"][1] * P + 64 * (out_groups - 1))
    r = min(r, M)
    record = round(c["record"][0] + S * (c["record"][1] + r * c["record"][2]))
    checks = sum(min(knobs.segments_per_miner, m) for m in miner_loads(S, r, M))
    report = round(c["report"][0] + M * c["report"][1] + checks * c["report"][2])
    return Sizes(input=in_header + seg + hashtree.leaf_count(seg) * hashtree.DIGEST,
                 output=out_header + seg + proof + hashtree.leaf_count(seg + proof) * hashtree.DIGEST,
                 record=record, report=report, input_header=in_header, output_header=out_header, segment_data=seg,
                 itemsize=itemsize)


def _first_read(size: int, header: int, guess: int) -> tuple[int, int]:
    """(requests, bytes) of opening an object with `mapreduce.wire.partial.RangeReader`: a first read of ``guess``
    bytes (the whole object if smaller), then the rest of the header if it did not fit."""
    first = min(size, guess)
    return (1, first) if header <= first else (2, header)


def _guess(z: Sizes, output: bool, design: str, readers_before: int = 0) -> int:
    """`mapreduce.audit.ReaderCache`'s first-read guess (`mapreduce.wire.partial.first_read_guess`) for an input,
    or for an output, whose size says how many inputs its header lists. The design before (v2): 4 KiB, 64 B per
    leaf group, 128 B per reader already open in the same cache."""
    if design == "today":
        size = z.output if output else z.input
        return 4096 + 64 * hashtree.group_count(hashtree.leaf_count(size)) + 128 * readers_before
    if not output:
        return first_read_guess(z.input)
    return first_read_guess(z.output, z.segment_data, hashtree.leaf_count(z.segment_data))


def _range_read(span: int, data_len: int) -> tuple[int, float]:
    """(requests, expected bytes) of `RangeReader.read_chunks` of ``span`` bytes at a random place in a hashed data
    section of ``data_len`` bytes: the leaves of the group(s) it touches, then the 16 KiB chunks that cover it."""
    c = hashtree.CHUNK_BYTES
    leaves = hashtree.leaf_count(data_len)
    chunk_bytes = data_len if data_len <= c else min(data_len, c + span - 1)  # 1 + (span-1)/c chunks expected
    group_leaves = min(leaves, hashtree.GROUP_LEAVES * (1 + (span - 1) / (hashtree.GROUP_LEAVES * c)))
    return 2, chunk_bytes + hashtree.DIGEST * group_leaves


def _chunk_read(span: int, data_len: int) -> tuple[int, float]:
    """(requests, bytes) of `RangeReader.read_chunks` of a range widened to whole chunks (audit.sample_ranges, new
    design): the leaves of the one group it lies in (ranges of at most a group's chunks), then the chunks."""
    c = hashtree.CHUNK_BYTES
    leaves = hashtree.leaf_count(data_len)
    return 2, min(data_len, -(-span // c) * c) + hashtree.DIGEST * min(leaves, hashtree.GROUP_LEAVES)


def holders(S: int, r: int, M: int) -> list[list[int]]:
    """The miners (by their place in the plan's shuffled order) holding each segment: the plan deals S * r
    replicas round-robin over the miners (mapreduce/plan.py)."""
    r = min(r, M)
    return [[(s * r + j) % M for j in range(r)] for s in range(S)]


def miner_loads(S: int, r: int, M: int) -> list[int]:
    """Segments per miner (``floor`` or ``ceil`` of S * r / M)."""
    loads = [0] * M
    for replicas in holders(S, r, M):
        for i in replicas:
            loads[i] += 1
    return loads


@functools.lru_cache(maxsize=64)
def sampled_segments(S: int, r: int, M: int, per_miner: int, draws: int = 200) -> float:
    """Expected number of distinct segments a validator samples when each miner has ``per_miner`` of its segments
    checked, preferring segments drawn for another replica (`mapreduce.audit.sample_checks`): the mean over
    ``draws`` seeded draws of that very function (no closed form: the overlap depends on the order)."""
    holdings: dict[str, list[Segment]] = {}
    for s, replicas in enumerate(holders(S, r, M)):
        for i in replicas:
            holdings.setdefault(f"{i:06d}", []).append(Segment(s, 0, 1))
    rng = random.Random(0)
    return statistics.fmean(len({seg.index for _, seg in sample_checks(rng, holdings, per_miner)})
                            for _ in range(draws))


COUNT_KEYS = (*KINDS, REQUESTS, BYTES_UP, BYTES_DOWN)
EGRESS, OWN_READS = "bytes out", "own reads"  # by bucket: bytes read from it by others, and by its owner


def _zero() -> dict[str, float]:
    return {k: 0.0 for k in (*COUNT_KEYS, EGRESS, OWN_READS)}


class _Tally:
    """One window's requests and bytes, network totals counted twice: by the role that asks, and by the role whose
    bucket is asked (the bucket's owner pays for them: S3 and R2 bill requests and egress to the bucket's owner)."""

    def __init__(self) -> None:
        self.by_role = {role: _zero() for role in ROLES}
        self.by_bucket = {role: _zero() for role in ROLES}

    def add(self, who: str, whose: str, kind: str, n: float, *, down: float = 0.0, up: float = 0.0,
            own: bool = False) -> None:
        """``n`` requests of ``kind`` by ``who`` to buckets of ``whose`` (its own bucket if ``own``), moving
        ``down`` bytes from the store and ``up`` bytes to it."""
        for table, role in ((self.by_role, who), (self.by_bucket, whose)):
            table[role][kind] += n
            table[role][BYTES_DOWN] += down
            table[role][BYTES_UP] += up
        self.by_bucket[whose][OWN_READS if own else EGRESS] += down


def predict(P: int, M: int, S: int, r: int = 2, V: int = 1, *, design: str = DESIGN, peer_poll_rounds: float = 1.0,
            validator_poll_rounds: float = 1.0, sizes: Sizes | None = None, knobs: Knobs = Knobs(),
            missing_reports: int = 0, peer_audits: float | None = None,
            validator_segments: float | None = None) -> dict[str, Any]:
    """Requests by kind and bytes per process of each role for one window of an honest network (no fallback, no
    junk, no failure, every output on time): ``{"peer": {...}, "miner": {...}, "validator": {...}, "total": {...},
    "by_bucket": {role: {...}}}``. A role's figures are the mean over that role's processes of what each asks
    (``bytes down``/``bytes up``: what it reads and writes); ``total`` is the whole network (P peers, M miners,
    V validators); ``by_bucket[role]`` is the mean over that role's processes of what is asked of its bucket, by
    anyone (what its owner is billed for), with ``bytes out`` read by others (egress) and ``own reads``.
    Kinds: PUT, GET (whole object), GET range, HEAD, LIST poll, LIST (the others), DELETE.

    ``peer_poll_rounds``: rounds of output polling per segment (today: each segment polls on its own) or per
    window (new design) of one peer; ``validator_poll_rounds``: rounds of the validator's output watch. Both
    depend on timing, not on the protocol (a bench passes what it measured). ``sizes``: object sizes for the byte
    figures (None: bytes are 0). ``missing_reports``: windows a miner looks back through for a validator's report
    without finding one (0, the steady state: last window's is there; 1 in a run's first window).
    Two figures are random draws, whose expectation is used unless given: ``peer_audits``, outputs one peer audits
    in a window (new design; today every output is audited), and ``validator_segments``, distinct segments one
    validator samples (new design: it reads the headers of their replicas while observing).
    The same derivation, in words, is in docs/SCALING.md.
    """
    if design not in ("today", "new"):
        raise ValueError("design must be 'today' or 'new'")
    r = min(r, M)
    loads = miner_loads(S, r, M)
    active = [m for m in loads if m]  # miners the plan gives no segment are not checked
    k = knobs
    z = sizes or Sizes(0, 0, 0, 0, 0, 0, 0, 0)
    pages_of = lambda keys: max(1, math.ceil(keys / 1000))  # noqa: E731 - ListObjectsV2 pages of 1,000 keys
    out_data = z.segment_data + hashtree.leaf_count(z.segment_data) * P * hashtree.PROOF_BYTES  # mean, proof
    t = _Tally()

    # -- peer (mapreduce/peer.py), per peer ---------------------------------------------------------------------------
    # Upload: one write-once PUT of each segment to each of its r replicas (writes.write_copies), then its signed
    # upload record into its own bucket (Peer._write_record).
    t.add("peer", "miner", "PUT", P * S * r, up=P * S * r * z.input)
    t.add("peer", "peer", "PUT", P, up=P * z.record, own=True)
    # The full audit of one output (audit.open_listed_inputs, audit.recompute_difference): one LIST of the
    # segment's inputs; open all P listed inputs, one after another in one reader cache (a ranged GET each, two if
    # a header outgrows the first read); recompute `spot_check_ranges` ranges from every input (two ranged GETs
    # each: the leaves, then the chunks).
    in_open = [_first_read(z.input, z.input_header, _guess(z, False, design, i)) for i in range(P)]
    seg_elements = z.segment_data // z.itemsize if z.itemsize else k.spot_check_elements
    read = _chunk_read if design == "new" else _range_read  # new: ranges are whole chunks
    in_range = read(min(k.spot_check_elements, seg_elements) * z.itemsize, z.segment_data)
    audit_ranged = sum(n for n, _ in in_open) + k.spot_check_ranges * P * in_range[0]
    audit_bytes = sum(b for _, b in in_open) + k.spot_check_ranges * P * in_range[1]
    if design == "today":
        # Download, today: every other peer's upload record (audit.read_records: a GET with max_bytes, so HEAD then
        # GET); then for each segment on its own: poll every replica at once (one LIST each, the output's key as
        # prefix) until an output is there, download the first valid one (one GET), and audit it in full before
        # trusting it. The audit is the P^2 term: P * S * (1 + 2 * ranges) ranged GETs per peer.
        t.add("peer", "peer", "HEAD", P * (P - 1))
        t.add("peer", "peer", "GET", P * (P - 1), down=P * (P - 1) * z.record)
        t.add("peer", "miner", "LIST poll", P * S * r * peer_poll_rounds)
        t.add("peer", "miner", "GET", P * S, down=P * S * z.output)
        t.add("peer", "miner", "LIST", P * S * pages_of(P))
        t.add("peer", "miner", "GET range", P * S * audit_ranged, down=P * S * audit_bytes)
    else:
        # Download, new design (protocol v3): one watch per window polls each replica miner once per round (a LIST
        # of its outputs' prefix: all its segments at once; mapreduce/watch.py), with backoff, while some segment is
        # still wanted from it. Each replica's output header is read as it appears (one ranged GET, two once the
        # listed inputs outgrow the reader's first read: P of about 14 and more); once two replicas sign the same
        # claim, one output is downloaded (one GET) and, with probability audits_per_segment / P, audited in full
        # as above (the records are read only of peers the output leaves out: none in an honest run). So the
        # network audits about `audits_per_segment` times per segment: no P^2 term.
        out_open = _first_read(z.output, z.output_header, _guess(z, True, design))
        audited = S * min(1.0, k.audits_per_segment / P) if peer_audits is None else peer_audits
        t.add("peer", "miner", "LIST poll", P * min(M, S * r) * peer_poll_rounds)
        t.add("peer", "miner", "GET range", P * S * r * out_open[0], down=P * S * r * out_open[1])
        t.add("peer", "miner", "GET", P * S, down=P * S * z.output)
        t.add("peer", "miner", "LIST", P * audited * pages_of(P))
        t.add("peer", "miner", "GET range", P * audited * audit_ranged, down=P * audited * audit_bytes)

    # -- miner (mapreduce/miner.py, mapreduce/inputs.py), per assigned segment -----------------------------------------
    # A HEAD of its own output key (Miner._reduce_and_write: written before a restart?), which misses, so the store
    # asks HeadBucket too; the segment's inputs listed (inputs.reduce_segment), twice for the first
    # `miner_concurrency` segments, which start at the deadline, before the listing is final, and list again at
    # the settle time (the others start after it, once the first are done); every input downloaded (one GET each);
    # the output written (one write-once PUT). Then, once per window, its standing: the latest report of each
    # validator (trust.standing_line: a GET with max_bytes, so HEAD + GET; a report not there yet costs HEAD +
    # HeadBucket for each window looked back).
    for m in loads:
        t.add("miner", "miner", "HEAD", 2 * m, own=True)
        t.add("miner", "miner", "LIST", (m + min(m, k.miner_concurrency)) * pages_of(P), own=True)
        t.add("miner", "miner", "GET", P * m, down=P * m * z.input, own=True)
        t.add("miner", "miner", "PUT", m, up=m * z.output, own=True)
        if missing_reports:
            t.add("miner", "validator", "HEAD", 2 * missing_reports * V)
        else:
            t.add("miner", "validator", "HEAD", V)
            t.add("miner", "validator", "GET", V, down=V * z.report)

    # -- validator (mapreduce/validator.py, mapreduce/hosting.py), per validator ---------------------------------------
    # Observe: each active miner's inputs listed at the upload deadline (evidence) and at the settle time (what
    # counts); its outputs listed every poll round until the reduce deadline (one LIST each: polls), and the header
    # of each new output it watches read once (a fresh reader: the first read is not sized for the listed inputs;
    # in the new design it watches only the outputs it will check and their replicas). Check:
    # `segments_per_miner` sampled outputs per miner; per output, the headers of the P inputs that count (a ranged
    # GET each), a HEAD of the output, its header (this reader's first read is sized for P inputs; two reads once
    # the header outgrows it), and per sampled range the output's values and proof rows (two ranged GETs each) and
    # every input's values (two each). Then broadcast hosting (one LIST of each miner's bcast/ prefix: nothing
    # there in these runs), the outputs listed once more at the window's end (overwrites), the evidence of
    # `evidence_peers` peers drawn at random (new design: a GET with max_bytes, so a HEAD, which finds nothing in an
    # honest window and asks HeadBucket too), and its signed report written (one PUT).
    out_obs = _first_read(z.output, z.output_header, _guess(z, True, design))
    out_chk = _first_read(z.output, z.output_header, _guess(z, True, design, P))
    in_chk = [_first_read(z.input, z.input_header, _guess(z, False, design, i)) for i in range(P)]
    # The new validator checks the set of its sampled ranges: two draws of the same range (a segment hardly longer
    # than a range) are read once.
    seg_numel = z.segment_data // z.itemsize if z.itemsize else k.range_elements
    # new: distinct whole chunks (sample_ranges draws places without repeating them)
    chunks = max(1, hashtree.leaf_count(z.segment_data))
    ranges = min(chunks, k.ranges_per_segment) if design == "new" else k.ranges_per_segment
    v_span = min(k.range_elements, seg_numel) * z.itemsize
    v_in, v_out = read(v_span, z.segment_data), read(v_span, out_data)
    proof_span = int((1 + (v_span - 1) / hashtree.CHUNK_BYTES) * P * hashtree.PROOF_BYTES)
    v_proof = _range_read(proof_span, out_data)
    slot_ranged = sum(n for n, _ in in_chk) + out_chk[0] + ranges * (v_out[0] + v_proof[0])
    slot_bytes = sum(b for _, b in in_chk) + out_chk[1] + ranges * (v_out[1] + v_proof[1])
    # Header reads while observing: today every output seen; in the new design only the outputs the validator
    # will check and their other replicas (drawn from its own entropy before the window: `watched`).
    drawn = sampled_segments(S, r, M, k.segments_per_miner) if validator_segments is None else validator_segments
    read_headers = r * drawn if design == "new" else sum(active)
    t.add("validator", "miner", "GET range", V * read_headers * out_obs[0], down=V * read_headers * out_obs[1])
    slots = 0
    for m in active:
        t.add("validator", "miner", "LIST", V * (2 * pages_of(P * m) + 1 + 1))  # inputs x2, bcast/, final outputs
        t.add("validator", "miner", "LIST poll", V * validator_poll_rounds)
        slots += min(k.segments_per_miner, m)
        t.add("validator", "miner", "HEAD", V * min(k.segments_per_miner, m))
        t.add("validator", "miner", "GET range", V * min(k.segments_per_miner, m) * slot_ranged,
              down=V * min(k.segments_per_miner, m) * slot_bytes)
    # Every input's values at each range: in the new design, read in full by the first check of each sampled
    # segment only; a later replica's check of it takes those reads (the same signed inputs, the same ranges:
    # audit.InputReads) but for one input of its own, drawn at random. Today: every check reads every input.
    in_reads = P * slots if design != "new" else P * min(drawn, slots) + max(0.0, slots - drawn)
    t.add("validator", "miner", "GET range", V * in_reads * ranges * v_in[0], down=V * in_reads * ranges * v_in[1])
    if design == "new":
        t.add("validator", "peer", "HEAD", V * 2 * min(k.evidence_peers, P))
    t.add("validator", "validator", "PUT", V, up=V * z.report, own=True)

    counts = {"peer": P, "miner": M, "validator": V}
    out: dict[str, Any] = {}
    for role in ROLES:
        for table in (t.by_role, t.by_bucket):
            table[role][REQUESTS] = sum(table[role][kind] for kind in KINDS)
        out[role] = {key: t.by_role[role][key] / counts[role] for key in COUNT_KEYS}
    out["total"] = {key: sum(t.by_role[role][key] for role in ROLES) for key in COUNT_KEYS}
    out["by_bucket"] = {role: {key: v / counts[role] for key, v in t.by_bucket[role].items()} for role in ROLES}
    return out


def peer_polls_per_round(M: int, S: int, r: int, design: str) -> int:
    """LISTs one peer makes per poll round: every replica of every segment (today), every replica miner (new)."""
    return S * min(r, M) if design == "today" else min(M, S * min(r, M))


# =====================================================================================================================
# Measuring: counters by kind, per participant and window
# =====================================================================================================================

_ROLE_IN_KEY = re.compile(r"/w[0-9]{8}/([a-z-]+)/")


def object_role(target: str | None) -> str:
    """The protocol role of the object a request was about (``in``, ``out``, ``record``...): from its key or the
    listed prefix (mapreduce/wire/keys.py); ``-`` for bucket calls and other keys."""
    if target is None:
        return "-"
    m = _ROLE_IN_KEY.search(target)
    return m.group(1) if m else "-"


_PUTS = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
_DELETES = ("DeleteObject", "DeleteObjects", "AbortMultipartUpload")


def kinds_between(before: StatsSnapshot, after: StatsSnapshot) -> dict[str, float]:
    """Requests by kind and payload bytes between two snapshots of one participant's counters. ``LIST poll`` is
    every listing of an ``out/`` prefix (the caller takes out what is not a poll)."""
    def calls(op: str) -> int:
        return (after.operations[op].calls if op in after.operations else 0) - (
            before.operations[op].calls if op in before.operations else 0)

    def ranged(op: str) -> int:
        return (after.operations[op].ranged if op in after.operations else 0) - (
            before.operations[op].ranged if op in before.operations else 0)

    polls = after.labelled.get(("ListObjectsV2", "out"), 0) - before.labelled.get(("ListObjectsV2", "out"), 0)
    out = {k: 0.0 for k in COUNT_KEYS}
    out["PUT"] = sum(calls(op) for op in _PUTS)
    out["GET range"] = ranged("GetObject")
    out["GET"] = calls("GetObject") - out["GET range"]
    out["HEAD"] = calls("HeadObject") + calls("HeadBucket")
    out["LIST poll"] = polls
    out["LIST"] = calls("ListObjectsV2") + calls("ListMultipartUploads") - polls
    out["DELETE"] = sum(calls(op) for op in _DELETES)
    out[REQUESTS] = sum(out[k] for k in KINDS)
    out[BYTES_UP] = after.bytes_sent - before.bytes_sent
    out[BYTES_DOWN] = after.bytes_received - before.bytes_received
    return out


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.fmean(r[k] for r in rows) for k in rows[0]} if rows else _zero()


def _mean_of(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    out = {role: _mean([p[role] for p in predictions]) for role in (*ROLES, "total")}
    out["by_bucket"] = {role: _mean([p["by_bucket"][role] for p in predictions]) for role in ROLES}
    return out


@dataclass(frozen=True)
class ScaleCase:
    peers: int
    miners: int
    segments: int
    redundancy: int = 2
    validators: int = 1

    @property
    def label(self) -> str:
        return (f"P={self.peers} M={self.miners} S={self.segments} r={min(self.redundancy, self.miners)} "
                f"V={self.validators}")


@dataclass(frozen=True)
class ScaleConfig:
    store: str = "memory"
    windows: int = 1
    elements_per_segment: int = 64
    numel: int | None = None  # overrides elements_per_segment
    wire_dtype: str = "float32"
    design: str = DESIGN
    # Timeouts far above the defaults: here every role shares one event loop (and 2 cores), so a request waits
    # for thousands of others' work; what is measured is what they ask, not how fast one process would be answered.
    role_timeout: float = 3600.0
    # How often a waiting role asks the chain for its block; blocks come when the bench produces them, and
    # thousands of roles asking every 5 ms (SteppedChain's default) would keep the worker threads busy.
    chain_poll: float = 0.05

    def numel_for(self, case: ScaleCase) -> int:
        return self.numel or case.segments * self.elements_per_segment


@dataclass
class CaseResult:
    case: ScaleCase
    config: ScaleConfig
    numel: int
    seconds: float  # the whole case: set-up, windows, teardown
    window_seconds: list[float]
    measured: dict[str, dict[str, float]]  # role -> kind -> mean per process per window
    predicted: dict[str, dict[str, float]]
    peer_poll_rounds: float
    validator_poll_rounds: float
    sizes: Sizes
    fallbacks: int = 0
    checks: int = 0
    checks_not_ok: list[str] = field(default_factory=list)
    draws: dict[str, float] = field(default_factory=dict)  # the random draws, measured and expected
    expected_total_requests: float = 0.0  # predict's network total with the expected draws instead of the measured

    def summary(self) -> dict[str, Any]:
        m, p, c = self.measured, self.predicted, self.case
        return {
            "peers": c.peers, "miners": c.miners, "segments": c.segments, "redundancy": min(c.redundancy, c.miners),
            "validators": c.validators, "numel": self.numel, "windows": self.config.windows,
            "store": self.config.store, "design": self.config.design,
            "per_peer_requests": m["peer"][REQUESTS], "per_miner_requests": m["miner"][REQUESTS],
            "per_validator_requests": m["validator"][REQUESTS], "total_requests": m["total"][REQUESTS],
            "per_peer_bytes_down": m["peer"][BYTES_DOWN], "per_peer_bytes_up": m["peer"][BYTES_UP],
            "predicted_total_requests": p["total"][REQUESTS],
            "expected_total_requests": self.expected_total_requests, "draws": self.draws,
            "predicted_per_peer_requests": p["peer"][REQUESTS],
            "peer_poll_rounds": self.peer_poll_rounds, "validator_poll_rounds": self.validator_poll_rounds,
            "seconds": round(self.seconds, 2), "window_seconds": [round(s, 2) for s in self.window_seconds],
            "fallbacks": self.fallbacks, "validator_checks": self.checks, "checks_not_ok": self.checks_not_ok[:5],
            "measured": m, "predicted": p, "sizes": asdict(self.sizes),
        }


async def _measured_sizes(cluster: BenchCluster, window: int, itemsize: int) -> Sizes:
    """Mean object sizes of ``window`` from the buckets, and header lengths (their first 8 bytes), read through a
    pool of no participant's (not counted)."""
    from mapreduce.wire.keys import ObjectKey, window_prefix

    pool = cluster.nets["peers"][0].pool.sibling()
    try:
        store = await pool.own_store()
        sizes: dict[str, list[int]] = {}
        first: dict[str, tuple[str, str]] = {}
        for role, group in cluster.nets.items():
            for i, _ in enumerate(group):
                name = cluster.bucket_of(role, i)
                for info in await store.list(name, window_prefix(cluster.spec.run_id, window), max_keys=None):
                    kind = ObjectKey.parse(info.key).role
                    sizes.setdefault(kind, []).append(info.size)
                    first.setdefault(kind, (name, info.key))

        async def header(kind: str) -> int:
            if kind not in first:
                return 0
            return 8 + int.from_bytes(await store.get_range(*first[kind], 0, 8), "little")

        def mean(kind: str) -> int:
            return round(statistics.fmean(sizes[kind])) if sizes.get(kind) else 0
        seg = cluster.spec.numel // cluster.spec.segments
        return Sizes(mean("in"), mean("out"), mean("record"), mean("report"), await header("in"),
                     await header("out"), seg * itemsize, itemsize)
    finally:
        await pool.close()


async def run_case(server: EmbeddedS3 | MemoryS3, case: ScaleCase, cfg: ScaleConfig, workdir: Path) -> CaseResult:
    started = time.perf_counter()
    numel = cfg.numel_for(case)
    run_id = f"scale-{case.peers}x{case.miners}x{case.segments}-{int(time.time() * 1000) % 10**7}"
    spec = bench_spec(run_id, numel, case.segments, case.redundancy, cfg.wire_dtype)
    cluster = await BenchCluster.create(
        server, spec, workdir, peers=case.peers, miners=case.miners, validators=case.validators,
        transfer=server.transfer_config(), store_factory=server.store if isinstance(server, MemoryS3) else None,
        # each participant's counters also count by object role: polls (out/) apart from the rest
        stats=lambda: TransferStats(label=object_role), chain_poll=cfg.chain_poll)
    try:
        t = cfg.role_timeout
        peers = cluster.peers(replace(PeerConfig(), fetch_timeout=t))
        miners = cluster.miners()
        validators = cluster.validators(replace(ValidatorConfig(), check_timeout=t, list_timeout=t,
                                                hosting=replace(HostingConfig(), check_timeout=t, list_timeout=t)))
        reads = [_track_header_reads(v) for v in validators]
        g = torch.Generator().manual_seed(case.peers)
        grads = torch.randn(case.peers, numel, generator=g) * 0.01
        per_window: list[dict[str, dict[str, float]]] = []
        window_seconds, fallbacks, checks, not_ok = [], 0, 0, []
        audits, sampled = [], []  # random draws, per window: outputs a peer audited, segments a validator checked
        sizes = None
        itemsize = spec.wire.data_dtype.itemsize
        for window in range(1, cfg.windows + 1):
            w0 = time.perf_counter()
            before = {role: [n.pool.stats.snapshot() for n in group] for role, group in cluster.nets.items()}
            results, reports = await _run_window(cluster, peers, miners, validators, reads, window, grads)
            after = {role: [n.pool.stats.snapshot() for n in group] for role, group in cluster.nets.items()}
            window_seconds.append(time.perf_counter() - w0)
            fallbacks += sum(len(r.fallbacks) for r in results)
            checks += sum(len(rep.checks) for rep in reports)
            not_ok += [f"{c.status}: {c.reason}" for rep in reports for c in rep.checks if c.status != "ok"]
            audits.append(statistics.fmean(getattr(r, "audits", case.segments) for r in results))
            sampled.append(statistics.fmean(len({c.segment for c in rep.checks}) for rep in reports))
            measured = {role.rstrip("s"): _mean([kinds_between(b, a) for b, a in zip(before[role], after[role])])
                        for role in before}
            per_window.append(measured)
            if sizes is None:
                sizes = await _measured_sizes(cluster, window, itemsize)
        measured = {role: _mean([w[role] for w in per_window]) for role in ROLES}
        # The validator lists outputs once more at the window's end (not a poll), once per miner in the plan.
        plan_miners = sum(1 for m in miner_loads(case.segments, case.redundancy, case.miners) if m)
        measured["validator"]["LIST poll"] -= plan_miners
        measured["validator"]["LIST"] += plan_miners
        measured["total"] = {k: case.peers * measured["peer"][k] + case.miners * measured["miner"][k]
                             + case.validators * measured["validator"][k] for k in measured["peer"]}
        peer_rounds = measured["peer"]["LIST poll"] / peer_polls_per_round(case.miners, case.segments,
                                                                           case.redundancy, cfg.design)
        validator_rounds = measured["validator"]["LIST poll"] / max(1, plan_miners)
        # Window 1 is a run's first: no validator report exists yet for the miners' standing reads. The random
        # draws of each window are passed as measured, like the poll rounds.
        predicted = _mean_of([predict(case.peers, case.miners, case.segments, case.redundancy, case.validators,
                                      design=cfg.design, peer_poll_rounds=peer_rounds,
                                      validator_poll_rounds=validator_rounds, sizes=sizes,
                                      missing_reports=1 if window == 1 else 0, peer_audits=audits[window - 1],
                                      validator_segments=sampled[window - 1])
                              for window in range(1, cfg.windows + 1)])
        expected = predict(case.peers, case.miners, case.segments, case.redundancy, case.validators,
                           design=cfg.design, peer_poll_rounds=peer_rounds, validator_poll_rounds=validator_rounds,
                           sizes=sizes)
        draws = {"peer_audits": statistics.fmean(audits), "validator_segments": statistics.fmean(sampled),
                 "expected_peer_audits": (case.segments if cfg.design == "today" else
                                          case.segments * min(1.0, Knobs().audits_per_segment / case.peers)),
                 "expected_validator_segments": sampled_segments(case.segments, case.redundancy, case.miners,
                                                                 Knobs().segments_per_miner)}
        return CaseResult(case, cfg, numel, time.perf_counter() - started, window_seconds, measured, predicted,
                          peer_rounds, validator_rounds, sizes, fallbacks, checks, not_ok, draws,
                          expected["total"][REQUESTS])
    finally:
        await cluster.close()


def _track_header_reads(validator: Validator) -> dict[str, int]:
    """Count the validator's output header reads in flight, by wrapping `Validator._read_version` on this one
    instance: the bench must not produce the reduce deadline while one is running (see `_validators_caught_up`)."""
    state = {"in_flight": 0}
    original = validator._read_version

    async def counted(*args: Any, **kwargs: Any) -> Any:
        state["in_flight"] += 1
        try:
            return await original(*args, **kwargs)
        finally:
            state["in_flight"] -= 1
    validator._read_version = counted  # type: ignore[method-assign]
    return state


async def _validators_caught_up(validators: list[Validator], reads: list[dict[str, int]], miners: int,
                                timeout: float = 300.0) -> None:
    """Wait until every validator has polled all ``miners`` twice since now (the first round, entirely after the
    outputs were written, saw them all and started a header read for each) and has no header read in flight."""
    def lists(v: Validator) -> int:
        return v.net.pool.stats.snapshot().labelled.get(("ListObjectsV2", "out"), 0)

    start = [lists(v) for v in validators]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(lists(v) >= s + 2 * miners and r["in_flight"] == 0 for v, s, r in zip(validators, start, reads)):
            return
        await asyncio.sleep(0.05)
    logging.getLogger(__name__).warning("validators still reading output headers after %.0f s", timeout)


async def _run_window(cluster: BenchCluster, peers: list[Peer], miners: list[Miner], validators: list[Validator],
                      reads: list[dict[str, int]], window: int, grads: torch.Tensor) -> tuple[list[Any], list[Any]]:
    """One window with everyone, blocks produced as each phase's work is done (as bench/window.py), and each miner's
    standing read as `Miner.run` does after every window."""
    from mapreduce.trust import standing_line

    chain, phases = cluster.chain, cluster.spec.windows.phases(window)
    chain.advance_to(phases.start_block)
    plan = await miners[0].net.plan(window)
    miner_tasks = [asyncio.create_task(m.run_window(window)) for m in miners]
    validator_tasks = [asyncio.create_task(v.validate_window(window)) for v in validators]
    receipts = await asyncio.gather(*(p.upload(window, grads[i]) for i, p in enumerate(peers)))
    chain.advance_to(phases.upload_deadline)
    downloads = [asyncio.create_task(p.download(window, r, grads[i]))
                 for i, (p, r) in enumerate(zip(peers, receipts))]
    await asyncio.gather(*miner_tasks)
    await asyncio.gather(*(standing_line(m.net, window) for m in miners))
    # On a real chain the outputs are there well before the deadline; here the deadline would come the moment the
    # last miner is done, before a validator's next poll, and a version it reads after the deadline does not count.
    await _validators_caught_up(validators, reads, sum(1 for m in miners if m.net.hotkey in plan.miners))
    chain.advance_to(phases.reduce_deadline)
    results = await asyncio.gather(*downloads)
    # The validators' last step re-lists outputs at the window's end (overwrite check): produce that block now.
    chain.advance_to(phases.end_block)
    reports = await asyncio.gather(*validator_tasks)
    return results, reports


# =====================================================================================================================
# Output
# =====================================================================================================================

def _unit(key: str) -> str:
    return "B" if key.startswith("bytes") else "req"


def case_table(result: CaseResult) -> str:
    rows = []
    for role in ROLES:
        m, p = result.measured[role], result.predicted[role]
        for key in (*KINDS, REQUESTS, BYTES_UP, BYTES_DOWN):
            if not (m[key] or p[key]):
                continue
            note = ""
            if key == "LIST poll":
                rounds = result.peer_poll_rounds if role == "peer" else result.validator_poll_rounds
                note = f"measured: {rounds:.2f} poll rounds (timing, not protocol)"
            elif key.startswith("bytes"):
                note = "estimate from object sizes (see docs/SCALING.md)"
            rows.append(Row(f"{role:9} {key}", m[key], p[key], unit=_unit(key), note=note))
    t = result.measured["total"]
    rows.append(Row(f"{'network':9} {REQUESTS}", t[REQUESTS], result.predicted["total"][REQUESTS], unit="req",
                    note=f"{result.case.peers} peers + {result.case.miners} miners + "
                         f"{result.case.validators} validator(s)"))
    c = result
    title = (f"{c.case.label}, numel {c.numel} ({c.config.wire_dtype}), store {c.config.store}, design "
             f"{c.config.design!r}, {c.config.windows} window(s): {c.seconds:.1f} s (windows "
             + ", ".join(f"{s:.1f}" for s in c.window_seconds) + " s); per process per window, mean over the role")
    text = format_table(rows, title=title, value_header="measured", baseline_header="predicted")
    d = c.draws
    text += (f"\nrandom draws, measured (expected): outputs audited per peer {d['peer_audits']:.2f} "
             f"({d['expected_peer_audits']:.2f}), segments sampled per validator {d['validator_segments']:.2f} "
             f"({d['expected_validator_segments']:.2f}); network requests with the expected draws: "
             f"{c.expected_total_requests:,.0f}")
    warn = []
    if c.fallbacks or c.checks_not_ok or not c.checks:
        warn.append(f"WARNING: {c.fallbacks} fallbacks, {len(c.checks_not_ok)} validator checks not ok "
                    f"{c.checks_not_ok[:2]}, {c.checks} checks: the run was not clean, its counts are not the "
                    "honest case's")
    return "\n".join([text, *warn])


def _cases(args: argparse.Namespace) -> list[ScaleCase]:
    if args.cases:
        out = []
        for item in args.cases.split(","):
            p, m, s = (int(x) for x in item.lower().split("x"))
            out.append(ScaleCase(p, m, s, args.redundancy, args.validators))
        return out
    return [ScaleCase(int(p), args.miners, args.segments, args.redundancy, args.validators)
            for p in args.peers.split(",")]


async def run(args: argparse.Namespace) -> list[CaseResult]:
    cfg = ScaleConfig(store=args.store, windows=args.windows, elements_per_segment=args.elements_per_segment,
                      numel=args.numel, wire_dtype=args.wire_dtype, design=args.design)
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="mapreduce-scale-"))
    try:
        for case in _cases(args):
            server: EmbeddedS3 | MemoryS3 = MemoryS3() if cfg.store == "memory" else EmbeddedS3()
            with server:  # a fresh server per case: nothing of one case weighs on the next
                result = await run_case(server, case, cfg, workdir)
            results.append(result)
            if not args.json:
                print(case_table(result), flush=True)
                print(flush=True)
            else:
                print(f"{case.label}: {result.seconds:.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", default="16,64,128", help="comma-separated peer counts, one case each")
    parser.add_argument("--miners", type=int, default=32)
    parser.add_argument("--segments", type=int, default=64)
    parser.add_argument("--redundancy", type=int, default=2)
    parser.add_argument("--validators", type=int, default=1)
    parser.add_argument("--cases", default="", help="instead of --peers/--miners/--segments: PxMxS,PxMxS,...")
    parser.add_argument("--windows", type=int, default=1, help="windows measured per case (the mean is shown)")
    parser.add_argument("--elements-per-segment", type=int, default=64)
    parser.add_argument("--numel", type=int, default=None, help="gradient elements (overrides the above)")
    parser.add_argument("--wire-dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--store", default="memory", choices=("memory", "embedded"),
                        help="memory: the in-memory S3 (storage.memory); embedded: moto over HTTP")
    parser.add_argument("--design", default=DESIGN, choices=("today", "new"), help="which formulas to compare with")
    parser.add_argument("--json", action="store_true", help="print one JSON object, nothing else, on stdout")
    parser.add_argument("--extrapolate", action="store_true", help="print the projection (docs/SCALING.md)")
    parser.add_argument("--verbose", action="store_true", help="the roles' logs on stderr (warnings otherwise)")
    from .extrapolate import ExtrapolationSpec, add_extrapolation_args, extrapolate, format_extrapolation

    add_extrapolation_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, stream=sys.stderr)
    if args.extrapolate:
        report = extrapolate(ExtrapolationSpec.from_args(args))
        print(json.dumps({"extrapolation": report}, indent=1) if args.json else format_extrapolation(report))
        return
    results = asyncio.run(run(args))
    if args.json:
        print(json.dumps({"cases": [r.summary() for r in results]}))
    else:
        print("measured: mean per process of that role, one window; predicted: bench.scale.predict with the measured "
              "poll rounds; ratio: measured / predicted")


if __name__ == "__main__":
    main()
