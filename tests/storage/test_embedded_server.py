"""EmbeddedS3's patches to moto (storage/_moto_patches.py), over real HTTP.

Every answer test runs on two servers, ``patched`` (EmbeddedS3 as used everywhere) and ``moto`` (speedups=False:
moto's own code, the lock fix aside), so the patched answers are checked against the expected bytes and against
moto's. The ``*_in_effect`` tests tell the two apart by the bytes the server process reads from its files.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.config import Config

from storage import EmbeddedS3
from storage import _moto_patches

MiB = 1024 * 1024
BUCKET = "embedded-server-tests"
AUTH = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0"

# moto keeps objects up to ~5 MiB in memory and larger ones in a temporary file: cover both.
SMALL = np.random.default_rng(1).bytes(100_003)
LARGE = np.random.default_rng(2).bytes(7 * MiB + 3)


def _client(s3: EmbeddedS3):  # noqa: ANN202
    return boto3.client(
        "s3", endpoint_url=s3.endpoint_url, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )


@pytest.fixture(scope="module")
def unpatched() -> Iterator[EmbeddedS3]:
    with EmbeddedS3(speedups=False) as s3:
        _client(s3).create_bucket(Bucket=BUCKET)
        yield s3


@pytest.fixture(scope="module", params=["patched", "moto"])
def server(request: pytest.FixtureRequest, embedded_s3: EmbeddedS3) -> EmbeddedS3:
    s3 = embedded_s3 if request.param == "patched" else request.getfixturevalue("unpatched")
    client = _client(s3)
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    for key, data in (("small", SMALL), ("large", LARGE), ("empty", b"")):
        client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return s3


def request(s3: EmbeddedS3, method: str, key: str, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", s3.port, timeout=30)
    try:
        conn.request(method, f"/{BUCKET}/{key}", body=body, headers={"Authorization": AUTH, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def ranged(s3: EmbeddedS3, key: str, spec: str, **headers: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    return request(s3, "GET", key, {"Range": f"bytes={spec}", **headers})


def expected(n: int, spec: str) -> tuple[int, int]:
    """[first, last] of a satisfiable single range, by RFC 9110."""
    a, b = spec.split("-")
    if not a:
        return max(0, n - int(b)), n - 1
    return int(a), n - 1 if not b else min(int(b), n - 1)


SPECS = ["0-0", "0-99", "12345-67890", "99990-", "-10", "-1", "-99999999", "0-", "5-99999999"]


@pytest.mark.parametrize("key", ["small", "large"])
def test_ranged_get_returns_exactly_the_range(server: EmbeddedS3, key: str) -> None:
    data = {"small": SMALL, "large": LARGE}[key]
    n = len(data)
    specs = [*SPECS, f"{n - 1}-{n - 1}", f"{n - 2}-{n + 5}", f"{n // 2}-{n // 2 + 16383}", f"-{n}", f"-{n - 1}"]
    etag = f'"{hashlib.md5(data).hexdigest()}"'
    for spec in specs:
        first, last = expected(n, spec)
        status, headers, body = ranged(server, key, spec)
        answer = (status, headers["Content-Range"], body)
        assert answer == (206, f"bytes {first}-{last}/{n}", data[first:last + 1]), spec
        assert int(headers["Content-Length"]) == last - first + 1 and headers["ETag"] == etag, spec


@pytest.mark.parametrize("spec", ["5-4", "0-1,5-6", "x-y", "-", ""])
def test_a_range_s3_ignores_returns_the_whole_object(server: EmbeddedS3, spec: str) -> None:
    for key, data in (("small", SMALL), ("large", LARGE)):
        status, headers, body = ranged(server, key, spec)
        assert (status, body, int(headers["Content-Length"])) == (200, data, len(data))
        assert "Content-Range" not in headers


@pytest.mark.parametrize("key", ["small", "large", "empty"])
def test_an_unsatisfiable_range_is_416(server: EmbeddedS3, key: str) -> None:
    n = {"small": len(SMALL), "large": len(LARGE), "empty": 0}[key]
    for spec in (f"{n}-", f"{n}-{n + 10}", f"{n + 100}-{n + 200}", "-0"):
        status, _, body = ranged(server, key, spec)
        assert status == 416 and b"<Code>InvalidRange</Code>" in body, spec


def test_ranges_of_a_multipart_object(server: EmbeddedS3) -> None:
    client = _client(server)
    parts = [np.random.default_rng(10 + i).bytes(size) for i, size in enumerate((5 * MiB, 5 * MiB, MiB + 7))]
    data = b"".join(parts)
    upload = client.create_multipart_upload(Bucket=BUCKET, Key="multipart")
    etags = [client.upload_part(Bucket=BUCKET, Key="multipart", UploadId=upload["UploadId"], PartNumber=i,
                                Body=p)["ETag"] for i, p in enumerate(parts, 1)]
    assert etags == [f'"{hashlib.md5(p).hexdigest()}"' for p in parts]
    client.complete_multipart_upload(
        Bucket=BUCKET, Key="multipart", UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, 1)]})
    n, boundary = len(data), 5 * MiB
    for spec in ["0-99", f"{boundary - 10}-{boundary + 9}", f"{2 * boundary - 1}-{2 * boundary}", "-20",
                 f"{boundary}-", f"{boundary - 1}-{2 * boundary + 5}"]:
        first, last = expected(n, spec)
        status, headers, body = ranged(server, "multipart", spec)
        assert (status, headers["Content-Range"], body) == (206, f"bytes {first}-{last}/{n}", data[first:last + 1])
        assert headers["ETag"].endswith('-3"')
    assert ranged(server, "multipart", f"{n}-")[0] == 416
    status, _, body = ranged(server, "multipart?partNumber=1", "0-9")  # moto ignores partNumber here
    assert (status, body) == (206, data[:10])


def test_part_number_1_with_a_range_is_the_whole_object(server: EmbeddedS3) -> None:
    # moto answers partNumber=1 of a single-part object with all of it as 206, without looking at the Range.
    status, headers, body = ranged(server, "large?partNumber=1", "0-9")
    assert (status, headers["Content-Range"], body) == (206, f"bytes 0-{len(LARGE) - 1}/{len(LARGE)}", LARGE)


def test_conditions_on_a_ranged_get(server: EmbeddedS3) -> None:
    etag = f'"{hashlib.md5(LARGE).hexdigest()}"'
    status, _, body = ranged(server, "large", "10-19", **{"If-Match": etag})
    assert (status, body) == (206, LARGE[10:20])
    assert ranged(server, "large", "10-19", **{"If-Match": '"0123456789abcdef0123456789abcdef"'})[0] == 412
    status, _, body = ranged(server, "large", "10-19", **{"If-None-Match": etag})
    assert status == 304 and body == b""
    status, _, body = ranged(server, "large", "10-19", **{"If-None-Match": '"0123456789abcdef0123456789abcdef"'})
    assert (status, body) == (206, LARGE[10:20])


def test_ranged_gets_during_overwrites_never_mix_versions(server: EmbeddedS3) -> None:
    """Readers of one key at random offsets while it is overwritten with another version, over and over: every
    answer is a slice of one version, and the ETag sent with it is that version's.

    Some answers are 500s, with moto's code as with ours: an overwrite closes the old version's file at once
    (`_VersionedKeyStore.setlist` calls `FakeKey.dispose`), and a GET that found the old version just before
    fails with "seek of closed file". Clients retry a 500; a wrong 206 would go unnoticed, so none may come."""
    versions = [np.random.default_rng(20 + i).bytes(6 * MiB + i) for i in range(2)]
    etags = {f'"{hashlib.md5(v).hexdigest()}"': v for v in versions}
    _client(server).put_object(Bucket=BUCKET, Key="contested", Body=versions[0])
    stop = threading.Event()
    answers = {"good": 0, "500": 0}
    wrong: list[str] = []

    def write() -> None:
        client = _client(server)
        for i in range(16):
            client.put_object(Bucket=BUCKET, Key="contested", Body=versions[(i + 1) % 2])
        stop.set()

    def read(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set() or answers["good"] < 100:
            start = rng.randrange(6 * MiB - 70_000)
            status, headers, body = ranged(server, "contested", f"{start}-{start + 65_535}")
            version = etags.get(headers["ETag"])
            if status == 500:
                answers["500"] += 1
            elif status == 206 and version is not None and body == version[start:start + 65_536]:
                answers["good"] += 1
            else:
                wrong.append(f"{status} {headers['ETag']} at {start}")
            if sum(answers.values()) > 2000:
                break

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not wrong, wrong[:5]
    assert answers["good"] >= 100 and answers["500"] < answers["good"], answers


def test_put_etag_is_the_md5_of_the_body(server: EmbeddedS3) -> None:
    client = _client(server)
    for key, data in (("put-empty", b""), ("put-small", SMALL), ("put-large", LARGE),
                      ("put-at-threshold", LARGE[: 5 * MiB - 1024]), ("put-over", LARGE[: 5 * MiB - 1023])):
        md5 = f'"{hashlib.md5(data).hexdigest()}"'
        assert client.put_object(Bucket=BUCKET, Key=key, Body=data)["ETag"] == md5
        got = client.get_object(Bucket=BUCKET, Key=key)
        assert (got["ETag"], got["Body"].read()) == (md5, data)
        assert client.head_object(Bucket=BUCKET, Key=key)["ETag"] == md5
    listed = {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="put-")["Contents"]}
    assert listed["put-large"] == f'"{hashlib.md5(LARGE).hexdigest()}"'
    copied = client.copy_object(Bucket=BUCKET, Key="put-copy", CopySource={"Bucket": BUCKET, "Key": "put-large"})
    assert copied["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(LARGE).hexdigest()}"'


# -- the patches are in effect: what the server process reads from its files -------------------------------------


def _bytes_read(s3: EmbeddedS3) -> int:
    """Bytes the server process has read with read(2) (files; sockets are read with recv)."""
    for line in Path(f"/proc/{s3._proc.pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


needs_proc_io = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists("/proc/self/io"),
                                   reason="counts bytes read through /proc/<pid>/io")


@pytest.fixture(scope="module")
def quiet_patched() -> Iterator[EmbeddedS3]:
    """A server of its own, so that no other test's requests are counted."""
    with EmbeddedS3() as s3:
        _client(s3).create_bucket(Bucket=BUCKET)
        yield s3


@pytest.fixture(params=["patched", "moto"])
def own_server(request: pytest.FixtureRequest) -> tuple[str, EmbeddedS3]:
    return request.param, request.getfixturevalue("quiet_patched" if request.param == "patched" else "unpatched")


@needs_proc_io
def test_ranged_get_reads_only_the_range_in_effect(own_server: tuple[str, EmbeddedS3]) -> None:
    which, s3 = own_server
    data = np.random.default_rng(5).bytes(24 * MiB)
    _client(s3).put_object(Bucket=BUCKET, Key="big-for-ranges", Body=data)  # in a temporary file: read(2)
    before = _bytes_read(s3)
    for i in range(5):
        assert ranged(s3, "big-for-ranges", f"{i * MiB}-{i * MiB + 1023}")[2] == data[i * MiB:i * MiB + 1024]
    read = _bytes_read(s3) - before
    if which == "patched":
        assert read < MiB, f"{read} bytes read for 5 ranges of 1 KiB"
    else:  # moto reads the whole object for each: the count sees it
        assert read >= 5 * len(data)


@needs_proc_io
def test_put_does_not_read_the_object_back_in_effect(own_server: tuple[str, EmbeddedS3]) -> None:
    which, s3 = own_server
    data = np.random.default_rng(6).bytes(16 * MiB)
    before = _bytes_read(s3)
    etag = _client(s3).put_object(Bucket=BUCKET, Key="big-put", Body=data)["ETag"]
    read = _bytes_read(s3) - before
    assert etag == f'"{hashlib.md5(data).hexdigest()}"'
    if which == "patched":
        assert read < MiB, f"{read} bytes read to store 16 MiB"
    else:  # moto hashes the object by reading its temporary file back
        assert read >= len(data)


def test_a_connection_carries_many_requests(server: EmbeddedS3) -> None:
    """Real S3 keeps connections: the patched server keeps one open across GETs, ranged GETs, a PUT with a body, a
    HEAD and a listing (each answer right); moto as it ships closes it after every answer."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    calls = [("GET", f"/{BUCKET}/small", {}, None), ("GET", f"/{BUCKET}/large", {"Range": "bytes=5-9"}, None),
             ("PUT", f"/{BUCKET}/kept", {}, b"kept body"), ("HEAD", f"/{BUCKET}/kept", {}, None),
             ("GET", f"/{BUCKET}/kept", {}, None), ("GET", f"/{BUCKET}?list-type=2&prefix=kep", {}, None)]
    kept = []
    try:
        for method, path, headers, body in calls:
            conn.request(method, path, body=body, headers={"Authorization": AUTH, **headers})
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status in (200, 206), (method, path, resp.status, data[:200])
            kept.append(conn.sock is not None)  # http.client drops the socket after "Connection: close"
            if path.endswith("/small"):
                assert data == SMALL
            elif headers:
                assert data == LARGE[5:10]
            elif method == "GET" and path.endswith("/kept"):
                assert data == b"kept body"
            elif "list-type" in path:
                assert b"<Key>kept</Key>" in data
    finally:
        conn.close()
    assert kept == [server.speedups] * len(calls)


@pytest.mark.parametrize("unread", [b"", b"12345"])
def test_pipelined_requests_after_a_body_are_each_answered(server: EmbeddedS3, unread: bytes) -> None:
    """Two requests sent back to back on one socket, the first with a body its handler may leave unread: the
    server answers both correctly, or closes after the first; it never reads the body's bytes or the second
    request as anything else, and never swallows the second (werkzeug drains a socket after each answer)."""
    import socket

    length = f"Content-Length: {len(unread)}\r\n" if unread else ""
    first = (f"GET /{BUCKET}/small HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {AUTH}\r\n{length}\r\n").encode()
    second = (f"GET /{BUCKET}/large HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {AUTH}\r\n"
              "Range: bytes=0-15\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(first + unread + second)
        reader = sock.makefile("rb")
        answers = []
        for _ in range(2):
            status = reader.readline()
            if not status:
                break  # closed after the first answer: the client sends the second again, elsewhere
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            answers.append((status.split()[1], reader.read(int(headers["content-length"])), headers))
            if headers.get("connection", "").lower() == "close":
                break
    assert answers and answers[0][0] == b"200" and answers[0][1] == SMALL
    if len(answers) == 2:
        assert answers[1][0] == b"206" and answers[1][1] == LARGE[:16]
    if server.speedups and not unread:
        assert len(answers) == 2  # nothing left unread: the connection was kept


def test_a_body_left_unread_closes_the_connection() -> None:
    """moto reads every body it is sent, so an application that leaves one unread is made here: the handler the
    server uses (patched) must answer with ``Connection: close`` rather than read the unread bytes as the next
    request line."""
    import socket

    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    _moto_patches.patch_moto()

    def ignores_the_body(environ, start_response):  # noqa: ANN001, ANN202
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = make_server("127.0.0.1", 0, ignores_the_body, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=10) as sock:
            head = b"GET / HTTP/1.1\r\nHost: x\r\n"
            sock.sendall(head + b"Content-Length: 5\r\n\r\n12345" + head + b"\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    finally:
        server.shutdown()
        server.server_close()
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer and answer.endswith(b"ok")
    assert answer.count(b"HTTP/1.1") == 1  # the connection closed: no second answer, and no 400 for "12345GET"


def test_patches_are_idempotent_and_marked() -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication
    from moto.s3 import models
    from moto.s3.responses import S3Response

    _moto_patches.patch_moto()
    patched = (models.FakeKey.etag, models.FakeKey.value, S3Response.get_object, S3Response.key_response,
               DomainDispatcherApplication.get_backend_for_host)
    _moto_patches.patch_moto()
    assert (models.FakeKey.etag, models.FakeKey.value, S3Response.get_object, S3Response.key_response,
            DomainDispatcherApplication.get_backend_for_host) == patched
    assert models.FakeKey.etag.fget._locked and models.FakeKey.value.fset._once and S3Response.get_object._ranged
    assert DomainDispatcherApplication.get_backend_for_host._remembered
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    send_header = MotoRequestHandler.send_header
    _moto_patches.patch_moto()
    assert MotoRequestHandler.send_header is send_header and send_header._keep_alive


def test_backend_lookup_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import backends
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    _moto_patches.patch_moto()
    listings = []
    real = backends.list_of_moto_modules
    monkeypatch.setattr(backends, "list_of_moto_modules", lambda: listings.append(1) or real())
    app = DomainDispatcherApplication(create_backend_app)
    host = f"s3.region-{random.randrange(10**9)}.amazonaws.com"  # not yet remembered by an earlier test
    assert [app.get_backend_for_host(host) for _ in range(3)] == ["s3"] * 3
    assert len(listings) == 1
    assert app.get_backend_for_host("nothing.example") is None


def test_log_file_still_gets_the_request_log(tmp_path: Path) -> None:
    log = tmp_path / "moto.log"
    with EmbeddedS3(log_file=log) as s3:
        _client(s3).list_buckets()
    assert '"GET / HTTP/1.1" 200' in log.read_text()


def test_speedups_off_only_in_a_subprocess() -> None:
    with pytest.raises(ValueError, match="speedups"):
        EmbeddedS3("thread", speedups=False)
