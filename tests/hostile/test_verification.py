"""Class 11: a cheat that passes a spot check still loses.

Every miner here signs what it publishes with its own key, so its proof of possession and its signature are valid;
what is wrong is the content, or what the miner's own server shows to whom, or when. Each test is one attack that
today's sampling misses, with the outcome the protocol owes the honest parties:

- ``one_element``: the honest mean with one element per segment moved by 100;
- ``noise_1e-4``: the honest mean with 1e-4 relative noise (a normalised difference of ~1e-4, under the old 1e-3
  tolerance);
- ``equivocates``: the miner's front gives downloaders (whole GETs) a corrupted output, checkers (ranged GETs) the
  honest one stored;
- ``deletes_input``: the miner deletes one peer's input from its bucket as it lands, and reduces without it;
- ``lying_listing``: the miner's front lists an output (early time, invented ETag) that is written only once the
  sampling seed exists;
- ``early_writer``: the miner writes at the upload deadline, before the settle time, to win on latency;
- ``omits_straggler``: an input that lands after the deadline but within the clock allowance is left out.

Peers must end with the exact mean of every valid input (within the fp32 bound), and the validator must rank the
cheat below every honest miner. Roles run in-process on a real local chain, stepped as the honest work is done
(tests/support/driver.py), and the embedded S3 server; a cheating miner that lies through its own endpoint publishes
a :class:`HostileFront` on 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import torch

from mapreduce.directory import BucketLocation
from mapreduce.flat import flatten
from mapreduce.miner import Miner
from mapreduce.peer import Peer
from mapreduce.scoring import ScoringConfig
from mapreduce.validator import Validator, ValidatorConfig
from mapreduce.windows import WindowConfig
from tests.faults.adversaries import AdversarialMiner
from tests.support.cluster import PUBLIC_KEYS, peer_gradients
from tests.support.hostile_front import HostileFront

from . import attacks
from .test_framing import fp32_bound, write_inputs

PEERS, MINERS, SEGMENTS, REDUNDANCY, NUMEL = 4, 3, 4, 2, 60_000


WRITES_AFTER_DEADLINE = ("lying_listing",)  # behaviours whose output exists only after the reduce deadline
DELETES_INPUTS = ("deletes_input",)  # behaviours that delete inputs from their own bucket as they land


class Verdict:
    """Every expectation of a test, checked; the test fails once, naming each that did not hold with its figures."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failures: list[str] = []

    def expect(self, ok: bool, message: str) -> None:
        if not ok:
            self.failures.append(message)

    def check(self) -> None:
        assert not self.failures, f"{self.name}: " + "; ".join(self.failures)


@dataclass
class Outcome:
    """One window with a cheating miner: what every role ended with."""

    c: object
    peers: list[Peer]
    honest: list[Miner]
    cheat: AdversarialMiner
    grads: list[dict[str, torch.Tensor]]  # of every peer, the straggler's included
    window: int
    peer_results: list = field(default_factory=list)
    miner_reports: list = field(default_factory=list)
    report: object | None = None  # the validator's WindowReport
    straggled: dict = field(default_factory=dict)  # when the straggler's inputs and record landed
    timed_out: list[str] = field(default_factory=list)  # the driver's holds that ran out (none, when all went well)

    @property
    def cheat_key(self) -> str:
        return self.cheat.net.hotkey

    @property
    def honest_keys(self) -> list[str]:
        return [m.net.hotkey for m in self.honest]

    def worst_error(self) -> tuple[float, float]:
        """(max |average - exact mean| over the peers, the fp32 bound), the exact mean over every peer's input."""
        mean = torch.stack([flatten(self.c.spec, g).double() for g in self.grads]).mean(0)
        worst = max(float((r.flat.double() - mean).abs().max()) for r in self.peer_results)
        return worst, fp32_bound(self.grads)

    def used_cheat(self) -> int:
        """How many (peer, segment) averages came from the cheat's output."""
        return sum(s.miner == self.cheat_key for r in self.peer_results for s in r.segments)

    def cheat_checks(self):
        return [ch for ch in self.report.checks if ch.miner == self.cheat_key]

    def scores(self) -> tuple[float, list[float]]:
        return (self.report.scores.get(self.cheat_key, 0.0),
                [self.report.scores.get(h, 0.0) for h in self.honest_keys])

    def checks_line(self) -> str:
        return ", ".join(f"s{ch.segment} {ch.status} {ch.score:.3f} ({(ch.reason or '-')[:60]})"
                         for ch in sorted(self.cheat_checks(), key=lambda ch: ch.segment))


def expect_exact_peers(v: Verdict, o: Outcome) -> None:
    worst, bound = o.worst_error()
    v.expect(worst <= bound, f"max |avg - mean| {worst:.3g} > fp32 bound {bound:.1e} (peers took the cheat's output "
                             f"{o.used_cheat()}x)")


def expect_ranked_below(v: Verdict, o: Outcome) -> None:
    cheat, honest = o.scores()
    v.expect(cheat < min(honest), f"cheat score {cheat:.3f} vs honest {', '.join(f'{s:.3f}' for s in honest)} "
                                  f"[{o.checks_line()}]")


def expect_honest_ok(v: Verdict, o: Outcome) -> None:
    bad = [(ch.miner[:8], ch.segment, ch.status, ch.reason) for ch in o.report.checks
           if ch.miner in o.honest_keys and ch.status != "ok"]
    v.expect(not bad, f"honest miners' checks not ok: {bad}")


async def join_behind_front(c, i: int, front: HostileFront):
    """Miner ``i`` publishes its front as where others reach its bucket; it reaches the bucket directly itself."""
    net = c.network(c.signers["miners"][i])
    loc = BucketLocation("miner", c.bucket_of("miners", i), front.endpoint_url, *PUBLIC_KEYS)
    await (await net.pool.own_store()).create_bucket(loc.bucket)
    await net.commit(loc)
    return net


async def run(cluster_factory, tmp_path, behaviour: str, *, front: HostileFront | None = None, eager: bool = False,
              victims: int = 0, validator: bool = True, windows: WindowConfig | None = None,
              straggler: bool = False, seed: int = 41) -> Outcome:
    """4 peers, 3 miners (the third cheats: ``behaviour``), r = 2, 4 segments, one validator checking every
    segment of every miner. ``victims``: the first peers are the cheat's victims. ``straggler``: the last peer's
    inputs and record are written by hand just after the upload deadline (its gradient counts in the exact mean;
    it is the victim)."""
    kw = {"windows": windows} if windows else {}
    c = await cluster_factory(peers=PEERS, miners=MINERS, redundancy=REDUNDANCY, segments=SEGMENTS,
                              numel=NUMEL, stepped=True, **kw)
    running = PEERS - 1 if straggler else PEERS
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(running)]
    late = await c.join("peers", PEERS - 1) if straggler else None
    honest = [Miner(await c.join("miners", i), c.bucket_of("miners", i)) for i in range(MINERS - 1)]
    net = (await join_behind_front(c, MINERS - 1, front) if front else await c.join("miners", MINERS - 1))
    victim_keys = [late.hotkey] if straggler else [p.hotkey for p in peers[:victims]]
    cheat = AdversarialMiner(net, c.bucket_of("miners", MINERS - 1), behaviour=behaviour,
                             victim_hotkeys=victim_keys, front=front, eager=eager)
    v = (Validator(await c.join("validators", 0), c.bucket_of("validators", 0), tmp_path / "v.json",
                   ValidatorConfig(segments_per_miner=SEGMENTS, scoring=ScoringConfig(weights_every=1)))
         if validator else None)
    grads = peer_gradients(c.spec, PEERS, seed=seed)
    window = await c.next_window()
    o = Outcome(c, peers, honest, cheat, grads, window)
    extra = [straggle(late, window, flatten(c.spec, grads[-1]))] if straggler else []
    # The chain moves on as the honest work is done (tests/support/driver.py): the upload deadline once every
    # running peer's inputs are in and, where the cheat deletes inputs as they land, not waiting for its bucket;
    # the reduce deadline once the outputs are written, but for the cheat whose output exists only after it.
    drive = c.drive(window, validator=v is not None, peers=[p.net.hotkey for p in peers],
                    miners=[m.net.hotkey for m in honest] + ([] if behaviour in WRITES_AFTER_DEADLINE
                                                             else [cheat.net.hotkey]),
                    vanishing=[cheat.net.hotkey] if behaviour in DELETES_INPUTS else ())
    results = await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, grads)),
                                   *(m.run_window(window) for m in honest + [cheat]),
                                   *([v.validate_window(window)] if v else []), drive, *extra)
    o.peer_results = list(results[:running])
    o.miner_reports = list(results[running:running + MINERS])
    o.report = results[running + MINERS] if v else None
    o.timed_out = results[running + MINERS + (1 if v else 0)]
    if straggler:
        o.straggled = results[-1]
    assert not o.timed_out, f"setup: the driver gave up waiting for the {o.timed_out} work"
    return o


async def straggle(net, window: int, flat: torch.Tensor) -> dict:
    """A peer whose inputs land just after the upload deadline and whose record lands a block later, both within
    the clock allowance: they count. Returns when they landed, relative to the deadline."""
    run_id = net.spec.run_id
    deadline_block = net.phases(window).upload_deadline
    await net.wait_for_block(deadline_block)
    deadline = await net.block_timestamp(deadline_block)

    def body(seg):
        return attacks.input_object(net.signer, run_id, window, seg.index, flat[seg.start:seg.end].clone())

    _, rows = await write_inputs(net, window, body)
    inputs_at = time.time() - deadline
    await net.wait_for_block(deadline_block + 1)
    await attacks.put_raw(net, net.hotkey, window, attacks.record_key(run_id, window, net.hotkey),
                          attacks.upload_record(net.signer, run_id, window, rows))
    return {"inputs": inputs_at, "record": time.time() - deadline, "rows": rows}


# -- 1, 2: wrong values, validly signed ----------------------------------------------------------------------------


async def test_one_wrong_element_is_caught(cluster_factory, tmp_path, hostile) -> None:
    """The honest mean with one element per segment moved by +100, signed (its proof of possession is valid).
    Peers compare replicas (an output that disagrees with another is audited chunk by chunk), so none keeps it; the
    validator finds the element (status "wrong", "differs") on every segment it checks."""
    o = await run(cluster_factory, tmp_path, "one_element", eager=True)
    v = Verdict("one_element")
    expect_exact_peers(v, o)
    checks = o.cheat_checks()
    v.expect(bool(checks), "the cheat was not checked")
    caught = [ch for ch in checks if ch.status == "wrong" and ch.score == 0.0 and "differs" in ch.reason]
    v.expect(len(caught) == len(checks), f"{len(caught)}/{len(checks)} of the cheat's checks caught "
                                         f"[{o.checks_line()}]")
    expect_ranked_below(v, o)
    expect_honest_ok(v, o)
    v.check()
    worst, _ = o.worst_error()
    hostile("verification: one element", "a miner moved one element per segment by +100 and signed it",
            "peers compare replicas and audit the disagreeing chunk: none keeps it; the validator scores it 0 on "
            f"every segment (max |avg - mean| {worst:.1e})", checks[0].reason)


async def test_relative_noise_scores_zero(cluster_factory, tmp_path, hostile) -> None:
    """1e-4 relative noise on the honest mean: deterministic reduction leaves no room for any difference, so each
    checked segment of the cheat scores exactly 0 (today: correctness 1 - 1e-4/1e-3 = 0.9)."""
    o = await run(cluster_factory, tmp_path, "noise_1e-4")
    v = Verdict("noise_1e-4")
    checks = o.cheat_checks()
    v.expect(bool(checks), "the cheat was not checked")
    for ch in checks:
        v.expect(ch.score == 0.0 and "differs" in (ch.reason or ""),
                 f"s{ch.segment}: score {ch.score:.3f}, status {ch.status}, difference "
                 f"{ch.difference if ch.difference is None else f'{ch.difference:.2e}'}, reason {ch.reason!r}")
    expect_ranked_below(v, o)
    v.check()
    hostile("verification: noise 1e-4", "a miner added 1e-4 relative noise to the honest mean",
            "the validator scores each of its segments 0", checks[0].reason)


# -- 3: what downloaders get is not what checkers get ---------------------------------------------------------------


async def test_equivocating_endpoint_fools_no_peer(cluster_factory, embedded_s3, tmp_path, hostile) -> None:
    """The cheat's front serves whole-object GETs (a peer's download) a corrupted, validly signed output and
    ranged GETs (header reads, validators) the honest one stored. Peers must end exact, and count the corrupted
    output as wrong ("wrong_output")."""
    with HostileFront(embedded_s3.endpoint_url) as front:
        o = await run(cluster_factory, tmp_path, "equivocates", front=front, eager=True)
    v = Verdict("equivocates (peers)")
    v.expect(bool(o.cheat.aside), "setup: the cheat put no corrupted output aside")
    served = sum(1 for r in front.requests if r.method == "GET" and "/out/" in r.path and "range" not in r.headers)
    expect_exact_peers(v, o)
    wrong = [r.rejected["wrong_output"] for r in o.peer_results]
    v.expect(all(n >= 1 for n in wrong), f"peers' wrong_output counts {wrong} (whole GETs of outputs served "
                                         f"corrupted: {served})")
    v.check()
    hostile("verification: equivocating endpoint", "a miner's front gave downloads a corrupted signed output and "
            "ranged reads the honest one", "peers compare replicas and refuse it; averages exact", "wrong_output")


async def test_equivocating_endpoint_validator_learns_of_it(cluster_factory, embedded_s3, tmp_path,
                                                            hostile) -> None:
    """Same attack; the validator's own ranged reads see only the honest object, so it can rank the cheat below
    the honest miners only from what peers saw (signed evidence they publish)."""
    with HostileFront(embedded_s3.endpoint_url) as front:
        o = await run(cluster_factory, tmp_path, "equivocates", front=front, eager=True)
    v = Verdict("equivocates (validator)")
    expect_ranked_below(v, o)
    v.check()
    hostile("verification: equivocating endpoint, validator", "a miner's front gave downloads a corrupted signed "
            "output and ranged reads the honest one", "the validator learns of it from peers' evidence and ranks "
            "it below every honest miner", o.checks_line())


# -- 4: an input deleted as it lands --------------------------------------------------------------------------------


async def test_deleted_input_is_not_silently_dropped(cluster_factory, tmp_path, hostile) -> None:
    """The cheat deletes peer 0's inputs from its own bucket as soon as they land (before the upload deadline) and
    reduces the rest; the other replica of each segment keeps them. Peers prefer the replica whose output includes
    more valid inputs, so every average is the mean over all 4 peers; the validator scores the cheat below every
    honest miner ("left out")."""
    o = await run(cluster_factory, tmp_path, "deletes_input", eager=True, victims=1)
    deadline = await o.peers[0].net.block_timestamp(o.c.spec.windows.phases(o.window).upload_deadline)
    late = [round(t - deadline, 2) for _, t in o.cheat.deleted if t > deadline]
    assert o.cheat.deleted and not late, f"setup: inputs deleted {len(o.cheat.deleted)}, after the deadline {late}"
    v = Verdict("deletes_input")
    expect_exact_peers(v, o)
    expect_ranked_below(v, o)
    reasons = [ch.reason or "" for ch in o.cheat_checks()]
    v.expect(any("left out" in r for r in reasons), f"no check of the cheat says 'left out': {reasons}")
    v.check()
    worst, _ = o.worst_error()
    hostile("verification: deleted input", "a miner deleted one peer's inputs from its bucket as they landed and "
            "reduced the rest", f"peers take the replica with more valid inputs (max |avg - mean| {worst:.1e}); "
            "the validator ranks it below every honest miner", next(r for r in reasons if "left out" in r))


# -- 5: an output listed before it exists ---------------------------------------------------------------------------


async def test_output_listed_before_it_exists_scores_zero(cluster_factory, embedded_s3, tmp_path,
                                                          hostile) -> None:
    """The cheat's front lists an output for each of its segments early in the reduce phase (invented ETag, early
    Last-Modified) while none exists, holds every read of it, and passes the object the cheat writes once the
    sampling seed's block exists for the one listed. No output the validator could read and pin before the
    deadline: 0 for those segments. Peers are unaffected."""
    with HostileFront(embedded_s3.endpoint_url) as front:
        o = await run(cluster_factory, tmp_path, "lying_listing", front=front)
    reduce_deadline = await o.peers[0].net.block_timestamp(o.c.spec.windows.phases(o.window).reduce_deadline)
    written = {k: round(t - reduce_deadline, 2) for k, t in o.cheat.written_late.items()}
    held = len(o.cheat.written_late)
    assert held and all(t >= 0 for t in written.values()), f"setup: outputs written at {written} s from the deadline"
    v = Verdict("lying_listing")
    checks = o.cheat_checks()
    v.expect(bool(checks), "the cheat was not checked")
    v.expect(all(ch.score == 0.0 for ch in checks), f"cheat checks not all 0: [{o.checks_line()}]")
    expect_ranked_below(v, o)
    expect_exact_peers(v, o)
    v.check()
    hostile("verification: listed before written", "a miner's front listed its outputs early (invented ETag and "
            "time) and the miner wrote them once the sampling seed existed", "the validator scores those segments "
            "0; peers unaffected", checks[0].reason)


# -- 6: written before the settle time ------------------------------------------------------------------------------


async def test_writing_before_the_settle_time_earns_nothing(cluster_factory, tmp_path, hostile) -> None:
    """The cheat writes its (correct: no stragglers) output at the upload deadline, without waiting for the settle
    time as honest miners do. Latency counts from the settle time, so this must not score higher than them."""
    o = await run(cluster_factory, tmp_path, "early_writer")
    cheat, honest = o.scores()
    lat = {h[:8]: sorted(round(ch.latency, 2) for ch in o.report.checks if ch.miner == h and ch.latency is not None)
           for h in [o.cheat_key, *o.honest_keys]}
    v = Verdict("early_writer")
    v.expect(cheat <= min(honest) + 1e-9, f"cheat score {cheat:.4f} vs honest {', '.join(f'{s:.4f}' for s in honest)}"
                                          f" (latencies, cheat first: {lat})")
    v.check()
    hostile("verification: early writer", "a miner wrote at the upload deadline, before the settle time",
            "scores no higher than the honest miners (latency counts from the settle time)",
            f"{cheat:.3f} vs {min(honest):.3f}")


# -- 7: a straggler within the clock allowance ----------------------------------------------------------------------


async def test_omitted_straggler_is_not_lost(cluster_factory, tmp_path, hostile) -> None:
    """With a 1 s clock allowance, the last peer's inputs land just after the upload deadline and its record a block
    later: they count. The cheat leaves them out as late (and writes at once); the honest replica of each segment
    includes them. Every peer's average is the exact mean over all 4 peers, the straggler's included."""
    # 14 reduce blocks, not 10: with a 1 s allowance the settle time is 2.25 s into the reduce phase, and an honest
    # miner starts the segments beyond its concurrency only then (10 blocks of 0.3 s left it too little, at times).
    o = await run(cluster_factory, tmp_path, "omits_victims", validator=False, straggler=True,
                  windows=WindowConfig(20, 4, 14, clock_skew_seconds=1.0))
    landed = {k: round(t, 2) for k, t in o.straggled.items() if k != "rows"}
    skew = o.c.spec.windows.clock_skew_seconds
    assert 0 <= landed["inputs"] < skew and landed["record"] < skew, f"setup: the straggler landed at {landed}"
    v = Verdict("omits_straggler")
    honest_counts = [[x.inputs for x in r.outcomes] for r in o.miner_reports[:-1]]
    v.expect(all(n == PEERS for counts in honest_counts for n in counts),
             f"honest miners' input counts {honest_counts}, should all be {PEERS} (the straggler's included): "
             + " | ".join(r.line() for r in o.miner_reports[:-1]))
    expect_exact_peers(v, o)
    v.check()
    worst, _ = o.worst_error()
    hostile("verification: omitted straggler", "a miner left out an input that landed within the clock allowance, "
            "as late", f"peers take the replica that includes it (max |avg - mean| {worst:.1e})",
            f"landed {landed['inputs']:+.2f} s")
