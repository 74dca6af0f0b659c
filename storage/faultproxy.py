"""`FaultProxy`: a small HTTP/1.1 proxy that injects the failures S3 clients meet in production.

It sits in front of an upstream endpoint (moto, usually) on 127.0.0.1 and, for a seeded-random share of the
requests it relays, answers ``503 SlowDown`` with a real S3 XML error body, resets the connection (before
forwarding, or after the upstream handled the request, part-way through the response), or stalls for a while. It runs
its own event loop in a daemon thread, so synchronous tests, async tests and other processes can all use it.

Deliberately simple: one request at a time per client connection (headers, then a Content-Length or chunked body),
each forwarded over a fresh upstream connection with ``Connection: close``. ``Expect: 100-continue`` is answered by
the proxy itself. Bodies are buffered on the way up and streamed on the way down.

Counters (`FaultProxy.counts`) say what was injected: ``requests``, ``forwarded``, ``error``, ``reset_before``,
``reset_mid``, ``stall`` and ``upstream_error`` (the upstream could not be reached; answered 502);
`FaultProxy.method_counts` counts requests per HTTP method.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import threading
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["FaultPlan", "FaultProxy"]

log = logging.getLogger("storage.faultproxy")

_MAX_HEAD = 256 * 1024
_CHUNK = 256 * 1024
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect"})
_KINDS = ("error", "reset_before", "reset_mid", "stall")


@dataclass(frozen=True)
class FaultPlan:
    """Which faults to inject, and how often.

    For each eligible request one of: ``error_rate`` answer 503 SlowDown without forwarding; ``reset_rate`` reset
    the connection, a ``reset_mid_share`` of those after the upstream handled the request (the request "landed" but
    its answer is lost), the rest before forwarding; ``stall_rate`` wait ``stall_seconds`` before forwarding (or,
    with ``stall_after_upstream``, after the upstream answered and before relaying it). A request stalled before
    forwarding is still forwarded afterwards, even if the client gave up: late arrivals happen in real life too.

    ``methods`` restricts faults to those HTTP methods and ``target_contains`` to request targets (path and query)
    containing that text, e.g. ``"uploadId="`` for the requests of multipart uploads after the first;
    ``max_faults`` stops injecting after that many (1 = once). ``seed`` makes the sequence of decisions
    reproducible (None = random).
    """

    error_rate: float = 0.0
    reset_rate: float = 0.0
    stall_rate: float = 0.0
    stall_seconds: float = 5.0
    seed: int | None = 0
    reset_mid_share: float = 0.5
    stall_after_upstream: bool = False
    max_faults: int | None = None
    methods: frozenset[str] | None = None
    target_contains: str | None = None

    def __post_init__(self) -> None:
        rates = (self.error_rate, self.reset_rate, self.stall_rate, self.reset_mid_share)
        if any(not 0.0 <= r <= 1.0 for r in rates):
            raise ValueError("rates and reset_mid_share must be within [0, 1]")
        if self.error_rate + self.reset_rate + self.stall_rate > 1.0 + 1e-9:
            raise ValueError("error_rate + reset_rate + stall_rate must not exceed 1")
        if self.stall_seconds < 0:
            raise ValueError("stall_seconds must not be negative")
        if self.methods is not None:
            object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))


class _BadRequest(Exception):
    pass


@dataclass
class _Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    keep_alive: bool


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a crashed or overloaded server would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def _header(headers: list[tuple[str, str]], name: str) -> str:
    for key, value in reversed(headers):
        if key.lower() == name:
            return value
    return ""


def _s3_error(status: int, reason: str, code: str, message: str, keep_alive: bool) -> bytes:
    request_id = uuid.uuid4().hex[:16].upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>faultproxy</HostId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
        f"x-amz-request-id: {request_id}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, returned as the raw bytes on the wire (it is relayed unchanged)."""
    parts = []
    while True:
        line = await reader.readuntil(b"\r\n")
        parts.append(line)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _BadRequest("bad chunk size") from exc
        if size == 0:
            while True:  # optional trailers, then an empty line
                line = await reader.readuntil(b"\r\n")
                parts.append(line)
                if line == b"\r\n":
                    return b"".join(parts)
        parts.append(await reader.readexactly(size + 2))


class FaultProxy:
    """Fault-injecting HTTP proxy in front of ``upstream_url``; a context manager (``with`` / ``async with``).

    ``plan`` may be replaced at any time (``proxy.plan = FaultPlan(...)``), which also restarts its random
    sequence and its ``max_faults`` budget.
    """

    def __init__(
        self,
        upstream_url: str,
        plan: FaultPlan | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        idle_timeout: float = 300.0,
        upstream_timeout: float = 300.0,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream_url!r}")
        self.upstream_url = upstream_url
        self._upstream = (parts.hostname, parts.port or 80)
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._plan = plan or FaultPlan()
        self._rng = random.Random(self._plan.seed)
        self._faults_under_plan = 0
        self._counts = dict.fromkeys(("requests", "forwarded", *_KINDS, "upstream_error"), 0)
        self._methods: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"FaultProxy({self.upstream_url!r}, {self._plan!r}, port={self.port})"

    @property
    def endpoint_url(self) -> str:
        if self._thread is None:
            raise RuntimeError("FaultProxy is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def plan(self) -> FaultPlan:
        return self._plan

    @plan.setter
    def plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self._plan = plan
            self._rng = random.Random(plan.seed)
            self._faults_under_plan = 0

    @property
    def counts(self) -> dict[str, int]:
        """A snapshot of the counters."""
        with self._lock:
            return dict(self._counts)

    @property
    def faults(self) -> int:
        """Faults injected so far, all kinds together."""
        with self._lock:
            return sum(self._counts[k] for k in _KINDS)

    def reset_counts(self) -> None:
        """Zero every counter (fault budgets of the current plan are not affected)."""
        with self._lock:
            for name in self._counts:
                self._counts[name] = 0
            self._methods.clear()

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    @property
    def method_counts(self) -> dict[str, int]:
        """Requests received per HTTP method."""
        with self._lock:
            return dict(self._methods)

    def _decide(self, method: str, target: str) -> str | None:
        with self._lock:
            self._counts["requests"] += 1
            self._methods[method] = self._methods.get(method, 0) + 1
            plan = self._plan
            if plan.methods is not None and method not in plan.methods:
                return None
            if plan.target_contains is not None and plan.target_contains not in target:
                return None
            if plan.max_faults is not None and self._faults_under_plan >= plan.max_faults:
                return None
            draw = self._rng.random()
            kind: str | None = None
            if draw < plan.error_rate:
                kind = "error"
            elif draw < plan.error_rate + plan.reset_rate:
                kind = "reset_mid" if self._rng.random() < plan.reset_mid_share else "reset_before"
            elif draw < plan.error_rate + plan.reset_rate + plan.stall_rate:
                kind = "stall"
            if kind is not None:
                self._faults_under_plan += 1
                self._counts[kind] += 1
            return kind

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Start listening (in a background thread). Idempotent."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name="FaultProxy", daemon=True)
        self._thread.start()
        if not ready.wait(10.0) or failure:
            self._thread.join(timeout=5.0)
            self._thread = None
            raise RuntimeError(f"FaultProxy could not start: {failure[0] if failure else 'timeout'}")
        return self

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._on_connection, self.host, self.port, limit=_MAX_HEAD, backlog=1024)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def stop(self) -> None:
        """Stop listening, drop open connections and join the thread. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        thread.join(timeout=10.0)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FaultProxy:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # -- serving ---------------------------------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request = await asyncio.wait_for(self._read_request(reader, writer), self.idle_timeout)
                if request is None or not await self._serve(request, reader, writer):
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, _BadRequest, OSError):
            pass  # client went away, sent garbage or idled out: just drop the connection
        except asyncio.CancelledError:
            pass  # shutting down
        except Exception:  # noqa: BLE001 - one broken connection must not take the proxy down
            log.exception("FaultProxy connection handler failed")
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None  # clean close between requests
            raise
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, version = (lines[0].split(" ", 2) + ["", ""])[:3]
        if not version.startswith("HTTP/1.") or not method.isalpha() or not target:
            raise _BadRequest(lines[0][:100])
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest("bad header line")
            headers.append((name.strip(), value.strip()))
        if _header(headers, "expect").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        if "chunked" in _header(headers, "transfer-encoding").lower():
            body = await _read_chunked(reader)
        elif length := _header(headers, "content-length"):
            body = await reader.readexactly(int(length))
        else:
            body = b""
        connection = _header(headers, "connection").lower()
        keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        return _Request(method.upper(), target, headers, body, keep_alive)

    async def _serve(self, req: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; return whether the client connection stays usable."""
        kind = self._decide(req.method, req.target)
        plan = self._plan
        if kind == "error":
            writer.write(_s3_error(503, "Slow Down", "SlowDown", "Please reduce your request rate.", req.keep_alive))
            await writer.drain()
            return req.keep_alive
        if kind == "reset_before":
            _reset(writer)
            return False
        if kind == "stall" and not plan.stall_after_upstream:
            await asyncio.sleep(plan.stall_seconds)

        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self._upstream, limit=_MAX_HEAD), timeout=10.0
            )
        except (OSError, TimeoutError):
            self._count("upstream_error")
            writer.write(_s3_error(502, "Bad Gateway", "BadGateway", "Upstream unreachable.", req.keep_alive))
            await writer.drain()
            return req.keep_alive
        try:
            return await self._relay(req, kind, plan, writer, up_reader, up_writer)
        finally:
            up_writer.transport.abort()

    async def _relay(
        self,
        req: _Request,
        kind: str | None,
        plan: FaultPlan,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        headers = [(k, v) for k, v in req.headers if k.lower() not in _HOP_BY_HOP]
        head = f"{req.method} {req.target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        up_writer.write((head + "Connection: close\r\n\r\n").encode("latin-1"))
        up_writer.write(req.body)
        await up_writer.drain()

        while True:  # skip interim 1xx answers
            raw_head = await asyncio.wait_for(up_reader.readuntil(b"\r\n\r\n"), self.upstream_timeout)
            status_line, *header_lines = raw_head[:-4].decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            if not 100 <= status < 200:
                break
        self._count("forwarded")
        resp_headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in header_lines)]
        if req.method == "HEAD" or status in (204, 304):
            body_length: int | None = 0
        elif "chunked" in _header(resp_headers, "transfer-encoding").lower():
            body_length = None  # relayed raw until the upstream closes; chunking frames it for the client
        elif length := _header(resp_headers, "content-length"):
            body_length = int(length)
        else:
            body_length = -1  # delimited by close: the client connection must close too
        keep_alive = req.keep_alive and body_length != -1
        out_head = (
            status_line
            + "\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in resp_headers if k.lower() not in _HOP_BY_HOP)
            + f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
        ).encode("latin-1")

        if kind == "stall" and plan.stall_after_upstream:
            await asyncio.sleep(plan.stall_seconds)
        if kind == "reset_mid":
            # Some of the answer, then RST: the request landed but the client cannot know how it went.
            if body_length:
                writer.write(out_head)
                if body_length > 0:
                    writer.write(await up_reader.read(max(1, min(body_length // 2, _CHUNK))))
            else:
                writer.write(out_head[: len(out_head) // 2])
            await writer.drain()
            await asyncio.sleep(0.02)
            _reset(writer)
            return False

        writer.write(out_head)
        if body_length != 0:
            remaining = body_length if body_length is not None and body_length > 0 else None  # None: until EOF
            while remaining is None or remaining > 0:
                want = _CHUNK if remaining is None else min(_CHUNK, remaining)
                chunk = await asyncio.wait_for(up_reader.read(want), self.upstream_timeout)
                if not chunk:
                    if remaining is not None:
                        _reset(writer)  # upstream cut the body short; make sure the client notices
                        return False
                    break
                writer.write(chunk)
                await writer.drain()
                if remaining is not None:
                    remaining -= len(chunk)
        await writer.drain()
        return keep_alive
