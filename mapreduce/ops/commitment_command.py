"""``python -m mapreduce commitment encode|decode``: the on-chain commitment string, made or read by hand.

``encode`` prints the string a process would commit for the given bucket, endpoint and published keys (the format
is :class:`mapreduce.directory.BucketLocation`'s, docs/PROTOCOL.md *Participants on chain*), alone on stdout, so
that it can be checked against the 128-byte limit before anything starts. ``decode`` prints one JSON object with
what a reader makes of a string: the endpoint it sends requests to (AWS: ``https://s3.<region>.amazonaws.com``,
spelled out), the region it signs for and whether it addresses the bucket path-style. Either prints the reason on
stderr and exits 2 when the string cannot be made or read.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..directory import ROLES, BucketLocation, CommitmentError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    enc = sub.add_parser("encode", help="print the commitment string for a bucket (exit 2 if it cannot be made or "
                                        "does not fit in 128 bytes)")
    enc.add_argument("--role", required=True, choices=sorted(ROLES.values()))
    enc.add_argument("--bucket", required=True)
    enc.add_argument("--endpoint", default="", metavar="URL",
                     help="the endpoint others use: empty or *.amazonaws.com for AWS S3, "
                          "https://<account>[.<jurisdiction>].r2.cloudflarestorage.com for R2, else another S3")
    enc.add_argument("--access-key-id", default="", help="the scoped key others use (empty: anonymous)")
    enc.add_argument("--secret-access-key", default="", help="its secret (published on chain)")
    enc.add_argument("--region", default="", help="AWS: the bucket's region (taken from an AWS endpoint if absent)")
    enc.add_argument("--path-style", action="store_true",
                     help="another S3 (MinIO): readers address the bucket path-style")
    dec = sub.add_parser("decode", help="print what readers make of a commitment string, as JSON")
    dec.add_argument("string", help="the commitment, e.g. mr2|m|a|my-bucket|us-east-1|||")


def main(args: argparse.Namespace) -> int:
    try:
        if args.action == "encode":
            loc = BucketLocation(args.role, args.bucket, args.endpoint, args.access_key_id, args.secret_access_key,
                                 region=args.region, path_style=args.path_style)
            print(loc.encode())
        else:
            print(json.dumps(describe(BucketLocation.decode(args.string))))
    except CommitmentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def describe(loc: BucketLocation) -> dict[str, object]:
    """What a reader uses to reach ``loc`` (an ``mr1`` location: endpoint as committed, "" and region "" meaning
    each reader's own default)."""
    return {"role": loc.role, "bucket": loc.bucket, "endpoint": loc.reader_endpoint,
            "access_key_id": loc.access_key_id, "secret_access_key": loc.secret_access_key,
            "region": loc.client_region or "", "path_style": loc.addressing_style == "path"}
