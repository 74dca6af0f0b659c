"""Class 3: one's own bucket with one's own keys; another's with the keys it published, or none.

Commitments are public, so the keys in them are public: a validator publishes a read-only key, a miner one that
can write new objects. A process must write its own bucket with its account's keys (``MR_S3_*``), never with the
keys it published, and must never send its account's keys, or a signature made with them, to an endpoint
someone else chose: when a participant published no keys, requests to it are anonymous.

The first test runs on moto with IAM authentication switched on (a real permission check: the published keys
really are read-only, or write-and-read only); the second puts a recording front before a miner that published no
keys and looks at every request that reached it.
"""
from __future__ import annotations

import asyncio
import json

import boto3
import botocore.exceptions
import pytest

from mapreduce.chain.local import LocalChain
from mapreduce.directory import BucketLocation
from mapreduce.miner import Miner
from mapreduce.network import Network, StorePool
from mapreduce.peer import Peer, PeerConfig
from mapreduce.wire.records import UploadRecord, decode_report
from mapreduce.scoring import ScoringConfig
from mapreduce.wire.signing import Signer
from mapreduce.validator import Validator, ValidatorConfig
from mapreduce.wire import keys
from storage import EmbeddedS3, S3Config
from tests.support.cluster import PUBLIC_KEYS, make_spec, peer_gradients
from tests.support.hostile_front import HostileFront

BLOCK = 0.3
READ = ["s3:GetObject", "s3:ListBucket"]  # HEAD is GetObject on AWS


def _iam_users(endpoint: str) -> dict[str, tuple[str, str]]:
    """An account key that may do anything, a read-only key and a write-and-read key (moto's IAM)."""
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x",
                       aws_secret_access_key="x")
    users = {}
    for user, actions in (("account", ["s3:*"]), ("read-only", READ), ("write-read", READ + ["s3:PutObject"])):
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        users[user] = (key["AccessKeyId"], key["SecretAccessKey"])
    return users


@pytest.fixture(scope="module")
def authenticating_s3():
    # moto authenticates every request after the first N; its start-up probes use some of them, so N is generous
    # and the rest are used up by anonymous requests until one is refused: from then on, every request is checked.
    with EmbeddedS3(env={"INITIAL_NO_AUTH_ACTION_COUNT": "40"}) as s3:
        users = _iam_users(s3.endpoint_url)
        anonymous = boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1",
                                 aws_access_key_id="nobody", aws_secret_access_key="nobody")
        for _ in range(41):
            try:
                anonymous.list_buckets()
            except botocore.exceptions.ClientError:
                break
        else:
            raise AssertionError("moto never started checking credentials")
        yield s3, users


async def test_each_role_writes_its_own_bucket_with_its_own_keys(authenticating_s3, tmp_path, hostile) -> None:
    s3, users = authenticating_s3
    spec = make_spec("own-keys", numel=20_000, segments=2, redundancy=1)
    chain = LocalChain.create(tmp_path / "chain.sqlite", netuid=1, block_time=BLOCK)
    account = S3Config(endpoint_url=s3.endpoint_url, access_key_id=users["account"][0],
                       secret_access_key=users["account"][1], addressing_style="path")
    pool = StorePool(account)
    roles = {"peer": ("read-only", "p"), "miner": ("write-read", "m"), "validator": ("read-only", "v")}
    nets, buckets = {}, {}
    try:
        for role, (published, short) in roles.items():
            signer = Signer.from_uri(f"//own-keys/{role}")
            chain.register(signer.hotkey, stake=100.0, validator_permit=role == "validator")
            nets[role] = Network(spec, chain, signer, pool, chain_poll=0.02)
            buckets[role] = f"own-keys-{short}"
            await (await pool.own_store()).create_bucket(buckets[role])
            await nets[role].commit(BucketLocation(role, buckets[role], s3.endpoint_url, *users[published]))
        peer = Peer(nets["peer"], buckets["peer"], PeerConfig(fetch_timeout=3.0))
        miner = Miner(nets["miner"], buckets["miner"])
        validator = Validator(nets["validator"], buckets["validator"], tmp_path / "v.json",
                              ValidatorConfig(scoring=ScoringConfig(weights_every=1)))
        window = spec.windows.first_window_anchored_after(chain.current_block())
        result, mreport, vreport = await asyncio.gather(
            peer.allreduce(peer_gradients(spec, 1)[0], window=window), miner.run_window(window),
            validator.validate_window(window))
        store = await pool.own_store()
        report = decode_report(await store.get(buckets["validator"], str(keys.report_key(spec.run_id, window,
                               nets["validator"].hotkey))), spec.run_id, window, nets["validator"].hotkey)
        record = UploadRecord.decode(await store.get(buckets["peer"], str(keys.record_key(
            spec.run_id, window, nets["peer"].hotkey))), spec, window, nets["peer"].hotkey)
    finally:
        await pool.close()
    assert [o.status for o in mreport.outcomes] == ["written", "written"], mreport.line()
    assert all(s.source == "replica" for s in result.segments)
    assert report["window"] == window and vreport.scores
    assert set(record.uploads) == {0, 1}
    hostile("own keys", "each role published read-only (or write-and-read) keys; a server that checks them",
            "each writes its own bucket with its account's keys: the validator's report, the peer's record and "
            "the miner's outputs are there", "")


async def test_no_account_signature_reaches_another_partys_endpoint(cluster_factory, embedded_s3, tmp_path,
                                                                    hostile) -> None:
    c = await cluster_factory(peers=2, miners=2, redundancy=2, block_time=BLOCK, numel=20_000, segments=2)
    with HostileFront(embedded_s3.endpoint_url) as front:  # records every request; changes nothing
        peers = [Peer(await c.join("peers", i), c.bucket_of("peers", i), PeerConfig(fetch_timeout=3.0))
                 for i in range(2)]
        honest = Miner(await c.join("miners", 0), c.bucket_of("miners", 0))
        net = c.network(c.signers["miners"][1])
        bucket = c.bucket_of("miners", 1)
        await (await net.pool.own_store()).create_bucket(bucket)
        await net.commit(BucketLocation("miner", bucket, front.endpoint_url))  # no keys published
        quiet = Miner(net, bucket)
        validator = Validator(await c.join("validators", 0), c.bucket_of("validators", 0), tmp_path / "v.json",
                              ValidatorConfig(list_timeout=2.0, check_timeout=4.0))
        window = await c.next_window()
        await asyncio.gather(*(p.allreduce(g, window=window) for p, g in zip(peers, peer_gradients(c.spec, 2))),
                             honest.run_window(window), quiet.run_window(window), validator.validate_window(window))
        seen = list(front.requests)
    account_key = c.pool.default.access_key_id
    assert seen, "the other parties never reached the miner's endpoint"
    signed = [r for r in seen if "authorization" in r.headers or account_key in r.query
              or any(account_key in v for v in r.headers.values())]
    assert not signed, f"{len(signed)} of {len(seen)} requests carried our account's key, e.g. {signed[0]}"
    hostile("no account signature abroad", "a miner published no keys and recorded every request to its endpoint",
            f"all {len(seen)} requests from peers and the validator were anonymous: no Authorization header, "
            "no account key id", "")
    assert PUBLIC_KEYS  # the other participants published keys, used as such
