"""EmbeddedS3 and FaultProxy themselves, spoken to with plain HTTP (http.client, raw sockets) and boto3."""

from __future__ import annotations

import hashlib
import http.client
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import urlsplit

import boto3
import numpy as np
import pytest
from botocore.config import Config

from storage import EmbeddedS3, FaultPlan, FaultProxy, ObjectStore
from storage.transfer import multipart_etag

MiB = 1024 * 1024


def boto3_client(endpoint_url: str):  # noqa: ANN201
    return boto3.client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


# moto routes a request to its S3 backend by the credential scope; it does not check the signature.
AUTH = "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0"
OCTETS = {"Content-Type": "application/octet-stream", "Authorization": AUTH}


class S3Connection(http.client.HTTPConnection):
    """Plain http.client, plus the header moto needs to know the request is for S3."""

    def request(self, method, url, body=None, headers=None, **kwargs):  # noqa: ANN001, ANN201
        super().request(method, url, body, {**OCTETS, **(headers or {})}, **kwargs)


def connect(url: str) -> S3Connection:
    parts = urlsplit(url)
    return S3Connection(parts.hostname, parts.port, timeout=10)


@pytest.fixture(scope="module")
def raw_bucket(embedded_s3: EmbeddedS3) -> str:
    boto3_client(embedded_s3.endpoint_url).create_bucket(Bucket="raw-http-bucket")
    return "raw-http-bucket"


@pytest.fixture
def proxy(embedded_s3: EmbeddedS3) -> Iterator[FaultProxy]:
    with FaultProxy(embedded_s3.endpoint_url) as p:
        yield p


def test_embedded_s3_config(embedded_s3: EmbeddedS3) -> None:
    cfg = embedded_s3.config()
    assert cfg.endpoint_url == embedded_s3.endpoint_url and cfg.endpoint_url.startswith("http://127.0.0.1:")
    assert cfg.addressing_style == "path" and cfg.access_key_id and cfg.secret_access_key
    assert embedded_s3.running and embedded_s3.mode == "subprocess"


@pytest.mark.parametrize("mode", ["thread", "subprocess"])
async def test_embedded_s3_modes_start_serve_and_stop(mode: str) -> None:
    async with EmbeddedS3(mode) as s3:  # type: ignore[arg-type]
        assert s3.running
        async with ObjectStore(s3.config()) as store:
            await store.create_bucket("mode-check")
            await store.put("mode-check", "k", b"v")
            assert await store.get("mode-check", "k") == b"v"
        s3.reset()
        assert boto3_client(s3.endpoint_url).list_buckets()["Buckets"] == []
        port = s3.port
    assert not s3.running
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_multipart_etag_matches_the_servers(embedded_s3: EmbeddedS3, raw_bucket: str) -> None:
    # The write-once recovery of multipart uploads recomputes the ETag from the part ETags; it must agree.
    client = boto3_client(embedded_s3.endpoint_url)
    data = np.random.default_rng(9).bytes(11 * MiB)
    chunks = [data[i : i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    upload = client.create_multipart_upload(Bucket=raw_bucket, Key="mp")
    etags = [
        client.upload_part(Bucket=raw_bucket, Key="mp", UploadId=upload["UploadId"], PartNumber=n, Body=c)["ETag"]
        for n, c in enumerate(chunks, 1)
    ]
    done = client.complete_multipart_upload(
        Bucket=raw_bucket, Key="mp", UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    from_data = multipart_etag([hashlib.md5(c).hexdigest() for c in chunks])
    assert done["ETag"].strip('"') == multipart_etag(etags) == from_data


def test_proxy_relays_requests_on_a_kept_alive_connection(proxy: FaultProxy, raw_bucket: str) -> None:
    conn = connect(proxy.endpoint_url)
    body = np.random.default_rng(0).bytes(3 * MiB)
    conn.request("PUT", f"/{raw_bucket}/relay", body=body)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("ETag").strip('"') == hashlib.md5(body).hexdigest()
    resp.read()
    conn.request("GET", f"/{raw_bucket}/relay")  # same connection
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == body
    conn.request("HEAD", f"/{raw_bucket}/relay")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length")) == len(body) and resp.read() == b""
    conn.close()
    assert proxy.counts["forwarded"] == 3 and proxy.method_counts == {"PUT": 1, "GET": 1, "HEAD": 1}


def test_proxy_handles_chunked_bodies_and_expect_continue(proxy: FaultProxy, raw_bucket: str) -> None:
    conn = connect(proxy.endpoint_url)
    conn.request("PUT", f"/{raw_bucket}/chunked", body=iter([b"abc", b"defg", b"h"]), encode_chunked=True)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200
    conn.close()

    host, port = urlsplit(proxy.endpoint_url).hostname, urlsplit(proxy.endpoint_url).port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"PUT /{raw_bucket}/expect HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 5\r\n"
                     f"Content-Type: application/octet-stream\r\nAuthorization: {AUTH}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")

    conn = connect(proxy.endpoint_url)
    for key, expected in (("chunked", b"abcdefgh"), ("expect", b"hello")):
        conn.request("GET", f"/{raw_bucket}/{key}")
        assert conn.getresponse().read() == expected
    conn.close()


def test_proxy_503_is_a_real_s3_error(proxy: FaultProxy, raw_bucket: str) -> None:
    proxy.plan = FaultPlan(error_rate=1.0, max_faults=2)
    conn = connect(proxy.endpoint_url)
    statuses = []
    for _ in range(3):
        conn.request("GET", f"/{raw_bucket}/missing")
        resp = conn.getresponse()
        statuses.append(resp.status)
        body = resp.read()
        if resp.status == 503:
            error = ET.fromstring(body)
            assert error.tag == "Error" and error.findtext("Code") == "SlowDown" and error.findtext("RequestId")
    conn.close()
    assert statuses == [503, 503, 404]  # two faults as budgeted, then the real answer (no such key)
    assert proxy.counts["error"] == 2 and proxy.counts["forwarded"] == 1


def test_proxy_plan_changes_at_runtime_and_filters(proxy: FaultProxy, raw_bucket: str) -> None:
    conn = connect(proxy.endpoint_url)

    def status(method: str = "GET") -> int:
        conn.request(method, f"/{raw_bucket}/nothing")
        resp = conn.getresponse()
        resp.read()
        return resp.status

    assert status() == 404
    proxy.plan = FaultPlan(error_rate=1.0, methods={"HEAD"})
    assert (status("GET"), status("HEAD")) == (404, 503)
    proxy.plan = FaultPlan(error_rate=1.0, target_contains="special")
    assert status() == 404
    proxy.plan = FaultPlan()
    assert status("HEAD") == 404
    conn.close()


def test_proxy_decisions_are_reproducible(embedded_s3: EmbeddedS3, raw_bucket: str) -> None:
    def run(seed: int) -> list[int]:
        plan = FaultPlan(error_rate=0.5, seed=seed)
        with FaultProxy(embedded_s3.endpoint_url, plan) as p:
            conn = connect(p.endpoint_url)
            out = []
            for _ in range(30):
                conn.request("HEAD", f"/{raw_bucket}/nothing")
                resp = conn.getresponse()
                resp.read()
                out.append(resp.status)
            conn.close()
            assert p.counts["error"] == out.count(503)
            return out

    first = run(11)
    assert run(11) == first and 5 < first.count(503) < 25
    assert run(12) != first


def test_proxy_resets(proxy: FaultProxy, raw_bucket: str) -> None:
    proxy.plan = FaultPlan(reset_rate=1.0, reset_mid_share=0.0, max_faults=1)
    conn = connect(proxy.endpoint_url)
    with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
        conn.request("PUT", f"/{raw_bucket}/never", body=b"x")
        conn.getresponse().read()
    conn.close()
    proxy.plan = FaultPlan(reset_rate=1.0, reset_mid_share=1.0, max_faults=1)
    conn = connect(proxy.endpoint_url)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        conn.request("PUT", f"/{raw_bucket}/landed", body=b"y")
        conn.getresponse().read()
    conn.close()
    counts = proxy.counts
    assert (counts["reset_before"], counts["reset_mid"], counts["forwarded"]) == (1, 1, 1)
    client = boto3_client(proxy.endpoint_url)
    assert client.get_object(Bucket=raw_bucket, Key="landed")["Body"].read() == b"y"  # mid-response: it landed
    with pytest.raises(client.exceptions.NoSuchKey):
        client.get_object(Bucket=raw_bucket, Key="never")


def test_proxy_survives_garbage_and_abandoned_connections(proxy: FaultProxy, raw_bucket: str) -> None:
    host, port = urlsplit(proxy.endpoint_url).hostname, urlsplit(proxy.endpoint_url).port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"this is not http\r\n\r\n")
        assert sock.recv(100) == b""  # dropped
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"PUT /x/y HTTP/1.1\r\nContent-Length: 1000\r\n\r\npartial")  # then hang up mid-body
    with socket.create_connection((host, port), timeout=5):
        pass  # connect and leave
    conn = connect(proxy.endpoint_url)
    conn.request("HEAD", f"/{raw_bucket}/nothing")
    assert conn.getresponse().status == 404
    conn.close()


def test_proxy_upstream_down_gives_502_and_stop_is_clean(raw_bucket: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    threads_before = threading.active_count()
    proxy = FaultProxy(f"http://127.0.0.1:{dead_port}").start()
    conn = connect(proxy.endpoint_url)
    conn.request("GET", "/b/k")
    resp = conn.getresponse()
    assert resp.status == 502 and b"<Code>BadGateway</Code>" in resp.read()
    conn.close()
    assert proxy.counts["upstream_error"] == 1
    proxy.stop()
    proxy.stop()  # idempotent
    time.sleep(0.1)
    assert threading.active_count() <= threads_before
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
