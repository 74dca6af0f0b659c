"""Who may take part: the run spec's allow and deny lists, a process's own, and the validators it trusts.

Objects from a hotkey outside the allowed set are excluded with a counted reason, ``not_allowed``, like any other
bad input: miners drop such peers' inputs, peers skip such miners' copies and senders, validators skip such miners,
and reports of validators below the minimum stake (or without a permit, or excluded) are not trusted.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from mapreduce.wire import keys
from mapreduce.broadcast import Broadcaster
from mapreduce.chain.base import Neuron
from mapreduce.directory import Admission, Directory
from mapreduce.errors import BroadcastFailed, NoBucketOnChain, NotAllowed, UnknownHotkey
from mapreduce.flat import flatten
from mapreduce.miner import Miner
from mapreduce.network import Network
from mapreduce.peer import Peer
from mapreduce.scoring import ScoringConfig
from mapreduce.wire.signing import Signer
from mapreduce.spec import RunSpec, TensorSpec
from mapreduce.wire.records import encode_report
from mapreduce.trust import order_replicas, standing_line, trusted_scores
from mapreduce.validator import Validator, ValidatorConfig
from mapreduce.windows import WindowConfig

ROOT = Path(__file__).resolve().parents[2]
HK = [Signer.from_uri(f"//lists/{i}").hotkey for i in range(6)]


def test_spec_lists_round_trip_and_are_checked(tmp_path) -> None:
    spec = RunSpec("r", (TensorSpec("a", (8,)),), 2, allow_hotkeys=[HK[0], HK[1]], deny_hotkeys=[HK[2]],
                   min_validator_stake=10.0)
    spec.save(tmp_path / "spec.json")
    assert RunSpec.load(tmp_path / "spec.json") == spec and spec.allow_hotkeys == (HK[0], HK[1])
    old = json.loads(spec.to_json())
    for k in ("allow_hotkeys", "deny_hotkeys", "min_validator_stake"):
        del old[k]
    assert RunSpec.from_json(json.dumps(old)).allow_hotkeys == ()  # specs written before the lists still load
    for bad in ({"allow_hotkeys": ["../x"]}, {"deny_hotkeys": HK[0]},
                {"allow_hotkeys": [HK[0]], "deny_hotkeys": [HK[0]]},
                {"min_validator_stake": -1.0}, {"min_validator_stake": float("nan")}):
        with pytest.raises(ValueError):
            RunSpec("r", (TensorSpec("a", (8,)),), 2, **bad)


def test_a_process_narrows_the_run_and_never_widens_it() -> None:
    run = Admission(frozenset(HK[:4]), frozenset([HK[3]]), 10.0)
    local = Admission.parse(f"{HK[1]}, {HK[2]},{HK[4]}", HK[2], 5.0)
    both = run.narrow(local)
    assert both.allow == {HK[1], HK[2]} and both.deny == {HK[2], HK[3]} and both.min_validator_stake == 10.0
    assert [both.why_excluded(h) for h in HK[:5]] == ["not on the allow list", None, "on the deny list",
                                                      "on the deny list", "not on the allow list"]
    assert Admission().narrow(local).allow == local.allow  # an empty allow list means everyone
    with pytest.raises(ValueError, match="no hotkey in common"):
        Admission(frozenset([HK[0]])).narrow(Admission(frozenset([HK[1]])))
    with pytest.raises(ValueError):
        Admission.parse("not-a-hotkey", None)

    # The directory: the run's lists decide who is a participant (and so the plan); ours only what we accept.
    neurons = [Neuron(i, h, 0.0, False) for i, h in enumerate(HK[:5])]
    commits = {h: f"mr1|{'m' if i < 2 else 'p'}|bucket-{i}|||" for i, h in enumerate(HK[:5])}
    d = Directory.build(neurons, commits, Admission(deny=frozenset([HK[4]])), Admission(deny=frozenset([HK[0], HK[3]])))
    assert d.miners == sorted(HK[:2])  # our own deny of miner HK[0] does not take it out of the plan
    assert not d.accepts(HK[0]) and d.accepts(HK[1])
    assert d.exclusion(HK[2], "peer") is None
    assert isinstance(d.exclusion(HK[3], "peer"), NotAllowed) and "of this process" in str(d.exclusion(HK[3], "peer"))
    assert isinstance(d.exclusion(HK[4], "peer"), NotAllowed) and "of the run spec" in str(d.exclusion(HK[4], "peer"))
    assert isinstance(d.exclusion(HK[5], "peer"), UnknownHotkey)
    assert isinstance(d.exclusion(HK[0], "peer"), UnknownHotkey)  # a miner is not a peer
    with pytest.raises(NotAllowed):
        d.admits_peer(HK[3])
    assert d.admits_peer(HK[2]) and not d.admits_peer(HK[5])
    # A hotkey with no bucket is a typed fact with its own reason, not a KeyError that hides real bugs.
    assert d.location(HK[1]).bucket == "bucket-1"
    with pytest.raises(NoBucketOnChain) as e:
        d.location(HK[5])
    assert e.value.reason == "no_bucket" and not isinstance(e.value, KeyError)


def test_command_line_takes_the_lists_and_refuses_disjoint_ones(tmp_path) -> None:
    spec = RunSpec("r", (TensorSpec("a", (8,)),), 2, allow_hotkeys=[HK[0]])
    spec.save(tmp_path / "spec.json")
    out = subprocess.run([sys.executable, "miner.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert "--validators.min_stake" in out.stdout and "--whitelist.hotkeys" in out.stdout
    out = subprocess.run([sys.executable, "miner.py", "--bucket", "some-bucket", "--spec", str(tmp_path / "spec.json"),
                          "--whitelist.hotkeys", HK[1], "--wallet.path", str(tmp_path / "no-wallets")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "no hotkey in common" in out.stderr and "Traceback" not in out.stderr


async def test_miners_and_validators_exclude_hotkeys_outside_the_lists(cluster_factory, tmp_path) -> None:
    c = await cluster_factory(peers=3, miners=2, validators=1, numel=40_000, segments=4, stepped=True)
    peer_keys = [s.hotkey for s in c.signers["peers"]]
    miner_keys = [s.hotkey for s in c.signers["miners"]]
    unaware = c.spec
    c.spec = dataclasses.replace(c.spec, deny_hotkeys=(peer_keys[2],))  # the run excludes peer 2
    peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i)) for i in range(3)]
    # ... which uploads anyway, as if it had not read the run's list (the plan is the same: only peers differ)
    peers[2] = Peer(Network(unaware, c.chain, c.signers["peers"][2], c.pool, chain_poll=0.02), c.bucket_of("peers", 2))
    for i in range(2):
        await c.join("miners", i)
    await c.join("validators", 0)

    def net(role: str, i: int, allow: str | None = None, deny: str | None = None) -> Network:
        return Network(c.spec, c.chain, c.signers[role][i], c.pool, admission=Admission.parse(allow, deny),
                       chain_poll=0.02)
    # miner 0 also refuses peer 1 on its own; the validator does not weigh miner 1
    miners = [Miner(net("miners", 0, deny=peer_keys[1]), c.bucket_of("miners", 0)),
              Miner(net("miners", 1), c.bucket_of("miners", 1))]
    validator = Validator(net("validators", 0, deny=miner_keys[1]), c.bucket_of("validators", 0),
                          tmp_path / "v.json", ValidatorConfig(scoring=ScoringConfig(weights_every=1)))
    grads = [flatten(c.spec, {"w": torch.randn(4_000, 10)}) for _ in range(3)]
    window = await c.next_window()
    results = await asyncio.gather(*(p.upload(window, g) for p, g in zip(peers, grads)),
                                   *(m.run_window(window) for m in miners), validator.validate_window(window),
                                   c.drive(window, validator=True))
    assert not results.pop(), "the driver gave up waiting for the window's work"
    m0, m1, report = results[3], results[4], results[5]

    segments = c.spec.segments  # redundancy 2 over 2 miners: each miner holds every segment
    assert m0.rejected["not_allowed"] == 2 * segments and [o.inputs for o in m0.outcomes] == [1] * segments
    assert m1.rejected["not_allowed"] == segments and [o.inputs for o in m1.outcomes] == [2] * segments
    # The validator skips miner 1 (counted once) and does not expect peer 2's input (counted per input of peer 2
    # it lists in miner 0's bucket: one per segment); it does expect peer 1's, which miner 0 chose to leave out: a
    # local list has a local cost.
    assert set(report.scores) == {miner_keys[0]}
    assert report.rejected["not_allowed"] == 1 + segments
    assert all((ch.status, ch.expected, ch.included_expected) == ("ok", 2, 1) for ch in report.checks)
    vuid = next(n.uid for n in c.chain.neurons() if n.hotkey == validator.net.hotkey)
    m0uid = next(n.uid for n in c.chain.neurons() if n.hotkey == miner_keys[0])
    assert report.weights_set and set(c.chain.weights()[vuid]) == {m0uid}


async def test_peers_exclude_miners_and_senders_outside_the_lists(cluster_factory) -> None:
    c = await cluster_factory(peers=4, miners=2, validators=0, block_time=0.2, numel=80_000, segments=4,
                              windows=WindowConfig(30, 20, 5))
    for i in range(4):
        await c.join("peers", i)
    for i in range(2):
        await c.join("miners", i)
    p = [s.hotkey for s in c.signers["peers"]]
    m = [s.hotkey for s in c.signers["miners"]]

    def caster(i: int, deny: str | None = None, spec: RunSpec | None = None) -> Broadcaster:
        return Broadcaster(Network(spec or c.spec, c.chain, c.signers["peers"][i], c.pool,
                                   admission=Admission.parse(None, deny), chain_poll=0.02), c.bucket_of("peers", i))
    sender, picky_sender = caster(0), caster(1, deny=m[0])
    weights = {"w": torch.randn(8_000, 10)}
    window = await c.next_window()  # these networks did not commit: a window whose directory lists the joins above
    receipt, picky_receipt = await asyncio.gather(sender.broadcast(weights, window=window),
                                                  picky_sender.broadcast(weights, window=window))
    assert all(v == [m[1]] for v in picky_receipt.stored_at.values())  # it gave miner 0 no copy
    assert all(v == [m[0]] for v in picky_receipt.failed.values())

    # A receiver that refuses miner 0 takes every segment from miner 1, counting each skip.
    picky = caster(2, deny=m[0])
    got = await picky.receive(window, p[0])
    assert torch.equal(got.tensors["w"], weights["w"]) and {s.miner for s in got.sources} == {m[1]}
    skipped = sum(order_replicas(receipt.stored_at[i], {}, p[2], i)[0] == m[0] for i in range(c.spec.segments))
    assert skipped >= 1 and got.rejected == Counter(not_allowed=skipped)

    # Senders outside the lists, ours or the run's: refused before anything is read.
    with pytest.raises(BroadcastFailed, match="on the deny list of this process") as e:
        await caster(3, deny=p[0]).receive(window, p[0])
    assert e.value.rejected == {"not_allowed": 1}
    with pytest.raises(BroadcastFailed, match="on the deny list of the run spec") as e:
        await caster(3, spec=dataclasses.replace(c.spec, deny_hotkeys=(p[1],))).receive(window, p[1])
    assert e.value.rejected == {"not_allowed": 1}


async def test_only_reports_of_trusted_validators_count(cluster_factory) -> None:
    c = await cluster_factory(peers=2, miners=2, validators=0, block_time=0.2, numel=40_000, segments=4,
                              windows=WindowConfig(20, 12, 4))
    c.spec = dataclasses.replace(c.spec, min_validator_stake=10.0)
    nets = [await c.join("peers", i) for i in range(2)]
    miner_nets = [await c.join("miners", i) for i in range(2)]
    m = [s.hotkey for s in c.signers["miners"]]
    # (stake, permit, ema written in its report or None for no report, or "garbage")
    validators = {"trusted": (100.0, True, {m[0]: 0.9, m[1]: 0.1}),
                  "trusted-big": (300.0, True, {m[0]: 0.5, m[1]: 0.3}),
                  "low-stake": (5.0, True, {m[0]: 0.0, m[1]: 1.0}),
                  "no-permit": (1000.0, False, {m[0]: 0.0, m[1]: 1.0}),
                  "denied-by-reader": (1000.0, True, {m[0]: 0.0, m[1]: 1.0}),
                  "silent": (500.0, True, None),
                  "garbage": (500.0, True, "garbage")}
    c.signers["validators"] = [Signer.from_uri(f"//{c.spec.run_id}/v/{name}") for name in validators]
    vnets = []
    for i, (stake, permit, _) in enumerate(validators.values()):
        c.chain.register(c.signers["validators"][i].hotkey, stake=stake, validator_permit=permit)
        vnets.append(await c.join("validators", i))
    window = await c.next_window()  # one whose directory lists them all
    for i, (vnet, (stake, permit, ema)) in enumerate(zip(vnets, validators.values())):
        hotkey = c.signers["validators"][i].hotkey
        if ema is not None:  # signed by the validator (a report that is not is refused: tests/hostile)
            signer = c.signers["validators"][i]
            report = {"validator": hotkey, "window": window - 1, "ema": ema, "scores": {}}  # "garbage": not a map
            body = bytes(encode_report(c.spec.run_id, window - 1, signer, report).data)
            bucket = await vnet.bucket(window, hotkey)
            await bucket.store.put(bucket.name, str(keys.report_key(c.spec.run_id, window - 1, hotkey)), body)
    denied = c.signers["validators"][list(validators).index("denied-by-reader")].hotkey
    reader = Network(c.spec, c.chain, c.signers["peers"][1], c.pool, admission=Admission.parse(None, denied),
                     chain_poll=0.02)
    await reader.wait_for_block(c.spec.windows.phases(window).start_block)

    seen = await trusted_scores(reader, window)
    assert seen.excluded == Counter(low_stake=1, no_permit=1, not_allowed=1, missing=1, malformed_report=1)
    assert sorted(seen.validators.values()) == [100.0, 300.0]
    assert seen.scores == pytest.approx({m[0]: (100 * 0.9 + 300 * 0.5) / 400, m[1]: (100 * 0.1 + 300 * 0.3) / 400})
    # A reader asking for more stake than the spec trusts fewer validators.
    strict = Network(c.spec, c.chain, c.signers["peers"][1], c.pool,
                     admission=Admission.parse(None, denied, min_validator_stake=200.0), chain_poll=0.02)
    assert set((await trusted_scores(strict, window)).validators.values()) == {300.0}
    # A miner's standing line: the reader-denied validator counts for the miner, which has no lists of its own.
    line = await standing_line(miner_nets[0], window)
    assert f"standing {(100 * 0.9 + 300 * 0.5 + 1000 * 0.0) / 1400:.3f} from 3 trusted validator(s)" in line
    assert "low_stake=1" in line and "no_permit=1" in line

    # Receivers rank replicas with it: miner 1 (0.25 < half of 0.6) is tried only after miner 0.
    sender = Broadcaster(nets[0], c.bucket_of("peers", 0))
    weights = {"w": torch.randn(4_000, 10)}
    _, got = await asyncio.gather(sender.broadcast(weights, window=window),
                                  Broadcaster(reader, c.bucket_of("peers", 1)).receive(window, sender.hotkey))
    assert torch.equal(got.tensors["w"], weights["w"]) and {s.miner for s in got.sources} == {m[0]}
