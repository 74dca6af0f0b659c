"""`HostileFront`: an S3 endpoint run by someone who wants our clients to hang, bloat or crash.

Every endpoint in this system may belong to a hostile party, so `storage/` must stay bounded and typed whatever a
server answers. This front relays requests to a real upstream (moto) and rewrites the answers on the way back,
behaviour by behaviour, as a test switches them on. It reuses `storage.FaultProxy`'s machinery (a daemon thread
with its own event loop, request parsing, context managers, ``endpoint_url``) and replaces only how a request is
served: the upstream's answer is buffered whole (test objects are small), rewritten, then sent, always with
``Connection: close`` so a lie about a body's length cannot poison a pooled connection.

Each behaviour applies to requests whose path (``/bucket/key``, unquoted) contains ``where`` ("" = every request);
the listing rewrites (`listing_size`, `last_modified`, `missing_fields`) apply to the listed entries whose
``/bucket/key`` contains it. `clear` switches every behaviour off. ``requests`` records what reached the front.

Two behaviours make the front *consistent* liars rather than broken ones, as a miner that wants to pass checks
would run it: `equivocate` shows downloaders (whole-object GETs) other bytes than checkers (ranged GETs and
HEADs), and `phantom` lists an object, with an ETag and a time of its choosing, before the object exists, then
passes the object written later off as the one listed.
"""

from __future__ import annotations

import asyncio
import email.utils
import html
import itertools
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from storage.faultproxy import _HOP_BY_HOP, FaultProxy, _header

__all__ = ["HostileFront", "Seen"]

_CONTENTS = re.compile(r"<Contents>(.*?)</Contents>", re.S)
_GARBAGE = b"<?xml version='1.0'?><ListBucketResult><Contents><Key>\x00<<&&;</Ke"


@dataclass(frozen=True)
class Seen:
    """One request as it reached the front; ``headers`` has lower-case names."""

    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass(frozen=True)
class _Phantom:
    bucket: str
    key: str
    etag: str
    last_modified: float
    size: int
    hold: float


# Conditional headers a `phantom` answers for itself: the ETag it lists is its own invention, unknown upstream.
_CONDITIONAL = frozenset({"if-match", "if-none-match", "if-modified-since", "if-unmodified-since"})


@dataclass(frozen=True)
class _Rule:
    kind: str
    where: str
    value: Any = None


def _iso(ts: float | str) -> str:
    """A listing's timestamp (str values are sent as they are, to send garbage)."""
    if isinstance(ts, str):
        return ts
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _http_date(ts: float | str) -> str:
    if isinstance(ts, str):
        return ts
    return email.utils.format_datetime(datetime.fromtimestamp(ts, timezone.utc), usegmt=True)


def _set_field(entry: str, name: str, value: str) -> str:
    return re.sub(rf"<{name}>.*?</{name}>", lambda _: f"<{name}>{html.escape(value)}</{name}>", entry, flags=re.S)


def _drop_field(entry: str, name: str) -> str:
    return re.sub(rf"<{name}>.*?</{name}>", "", entry, flags=re.S)


def _without(headers: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() != name]


def _dechunk(body: bytes) -> bytes:
    out, pos = [], 0
    while True:
        end = body.index(b"\r\n", pos)
        size = int(body[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2 : end + 2 + size])
        pos = end + 4 + size


class HostileFront(FaultProxy):
    """A lying S3 front for ``upstream_url``; use as ``with HostileFront(url) as front:`` (or ``async with``)."""

    def __init__(self, upstream_url: str) -> None:
        super().__init__(upstream_url)
        self.requests: list[Seen] = []
        self._rules: list[_Rule] = []
        self._rules_lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._junk = itertools.count(1)

    def __repr__(self) -> str:
        return f"HostileFront({self.upstream_url!r}, {len(self._rules)} behaviour(s), port={self.port})"

    # -- behaviours ------------------------------------------------------------------------------------------------

    def _add(self, kind: str, where: str, value: Any = None) -> None:
        with self._rules_lock:
            self._rules.append(_Rule(kind, where, value))

    def clear(self) -> None:
        """Switch every behaviour off (``requests`` is kept)."""
        with self._rules_lock:
            self._rules.clear()

    def endless_listing(
        self, *, where: str = "", repeat_token: bool = False, junk_keys: int = 0, junk_prefix: str | None = None
    ) -> None:
        """ListObjectsV2 answered IsTruncated=true forever, with a fresh continuation token each page (or the same
        one), each page carrying ``junk_keys`` new keys under the requested prefix (or under ``junk_prefix``)."""
        self._add("endless_listing", where, (repeat_token, junk_keys, junk_prefix))

    def lie_content_length(self, *, where: str = "", length: int | str = 10**12) -> None:
        """Object GETs (ranged or not) answered with ``Content-Length: length``: over the real body when longer
        (which then ends early), the body cut to it when shorter."""
        self._add("lie_content_length", where, length)

    def listing_size(self, n: int | str, *, where: str = "") -> None:
        """The listed Size of matching keys replaced by ``n`` (an int, or any text)."""
        self._add("listing_size", where, n)

    def last_modified(self, ts: float | str, *, where: str = "") -> None:
        """Last-Modified of matching keys, in listings and in HEAD/GET headers, replaced by unix time ``ts`` (a
        lying clock), or by ``ts`` itself when it is a str (garbage)."""
        self._add("last_modified", where, ts)

    def stall(self, seconds: float, *, where: str = "") -> None:
        """Wait ``seconds`` before sending anything of the answer."""
        self._add("stall", where, seconds)

    def trickle(self, bytes_per_second: float, *, where: str = "") -> None:
        """Send the answer's body at ``bytes_per_second`` (headers at once)."""
        self._add("trickle", where, bytes_per_second)

    def malformed_xml(self, *, where: str = "", size: int = 64) -> None:
        """Answer 200 with ``size`` bytes of garbage as an XML body (the upstream is still asked first)."""
        self._add("malformed_xml", where, size)

    def refuse_listing(self, *, where: str = "") -> None:
        """ListObjectsV2 answered 403 AccessDenied (a bucket its owner made unlistable); other requests pass."""
        self._add("refuse_listing", where)

    def missing_fields(self, *, where: str = "") -> None:
        """Listed entries without Size and ETag; object answers (HEAD, GET, PUT, UploadPart) without an ETag."""
        self._add("missing_fields", where)

    def equivocate(self, body: bytes, *, where: str) -> None:
        """Whole-object GETs (no Range header: what a downloader does) of matching objects answered with ``body``
        in place of the stored object; ranged GETs and HEADs (what a checker reading a few KiB does) get the stored
        object. Only when the object exists upstream (a 2xx answer); its headers, ETag included, are kept, so a
        conditional GET on the listed ETag gets ``body`` too."""
        self._add("equivocate", where, bytes(body))

    def phantom(self, bucket: str, key: str, *, etag: str, last_modified: float, size: int,
                hold: float = 0.0) -> None:
        """``key`` listed before it exists: listings of ``bucket`` whose prefix covers it show an entry with this
        ``etag`` (hex, unquoted), ``last_modified`` (unix time) and ``size`` while the upstream has no such object.
        Once the object is written upstream, every listing entry and HEAD/GET answer for it carries ``etag`` and
        ``last_modified`` instead of the real ones (its real size is kept), and the conditional headers of requests
        for it (If-Match...) are dropped on the way up: the object written late passes for the one listed early.
        ``hold`` > 0: a HEAD/GET for the key while it is absent upstream waits for it (asking again every 50 ms)
        for up to ``hold`` seconds, instead of answering 404 at once."""
        self._add("phantom", f"/{bucket}/{key}", _Phantom(bucket, key, etag, float(last_modified), int(size),
                                                         float(hold)))

    # -- serving ---------------------------------------------------------------------------------------------------

    async def _serve(self, req: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        parts = urlsplit(req.target)
        path, query = unquote(parts.path), parse_qs(parts.query, keep_blank_values=True)
        self.requests.append(Seen(req.method, path, parts.query, {k.lower(): v for k, v in req.headers}))
        with self._rules_lock:
            rules = list(self._rules)
        kinds = {r.kind: r.value for r in rules if r.where in path}
        listing = req.method == "GET" and query.get("list-type") == ["2"]
        is_object = path.strip("/").count("/") >= 1 and not listing

        if listing and "refuse_listing" in kinds:
            body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
                    b"<Message>Access Denied</Message></Error>")
            status, headers = "HTTP/1.1 403 Forbidden", [("Content-Type", "application/xml")]
        elif listing and "endless_listing" in kinds:
            body = self._endless_page(path.strip("/"), query, *kinds["endless_listing"])
            status, headers = "HTTP/1.1 200 OK", [("Content-Type", "application/xml")]
        else:
            phantom = kinds.get("phantom") if is_object and req.method in ("GET", "HEAD") else None
            drop = _CONDITIONAL if phantom else frozenset()
            status, headers, body = await self._fetch(req, drop)
            if phantom is not None and phantom.hold > 0:
                loop = asyncio.get_running_loop()
                give_up = loop.time() + phantom.hold
                while status.split(" ")[1] == "404" and loop.time() < give_up:
                    await asyncio.sleep(0.05)
                    status, headers, body = await self._fetch(req, drop)
        ok = status.split(" ")[1].startswith("2")

        if listing and ok:
            body = self._rewrite_listing(path.strip("/"), body, query, rules)
        if is_object and ok and req.method in ("GET", "HEAD") and "last_modified" in kinds:
            headers = _without(headers, "last-modified") + [("Last-Modified", _http_date(kinds["last_modified"]))]
        if is_object and ok and "missing_fields" in kinds:
            headers = _without(headers, "etag")
        if is_object and ok and req.method in ("GET", "HEAD") and "phantom" in kinds:
            phantom = kinds["phantom"]
            headers = (_without(_without(headers, "etag"), "last-modified")
                       + [("ETag", f'"{phantom.etag}"'), ("Last-Modified", _http_date(phantom.last_modified))])
        if (is_object and ok and req.method == "GET" and "equivocate" in kinds
                and not _header(req.headers, "range")):
            body = kinds["equivocate"]
        if "malformed_xml" in kinds:
            size = kinds["malformed_xml"]
            status, body = "HTTP/1.1 200 OK", (_GARBAGE * (size // len(_GARBAGE) + 1))[:size]
            headers = _without(headers, "content-type") + [("Content-Type", "application/xml")]

        length: int | str = len(body)
        if req.method == "HEAD":
            length = _header(headers, "content-length") or 0
        elif is_object and ok and "lie_content_length" in kinds:
            length = kinds["lie_content_length"]
            if isinstance(length, int) and 0 <= length < len(body):
                body = body[:length]  # a short lie is framed consistently: only Content-Range disagrees
        skip = {"content-length", "transfer-encoding", "connection"}
        head = status + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers if k.lower() not in skip)
        head += f"Content-Length: {length}\r\nConnection: close\r\n\r\n"

        if "stall" in kinds:
            await asyncio.sleep(kinds["stall"])
        writer.write(head.encode("latin-1"))
        if req.method != "HEAD":
            rate = kinds.get("trickle")
            step = max(1, len(body) if rate is None else int(rate / 20))
            for i in range(0, len(body), step):
                writer.write(body[i : i + step])
                await writer.drain()
                if rate is not None:
                    await asyncio.sleep(step / rate)
        await writer.drain()
        return False

    async def _fetch(self, req: Any, drop: frozenset[str] = frozenset()) -> tuple[str, list[tuple[str, str]], bytes]:
        """The upstream's whole answer: status line, headers, de-chunked body. ``drop``: request headers (lower-case
        names) not sent up."""
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        try:
            headers = [(k, v) for k, v in req.headers if k.lower() not in _HOP_BY_HOP and k.lower() not in drop]
            head = f"{req.method} {req.target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
            up_writer.write((head + "Connection: close\r\n\r\n").encode("latin-1") + req.body)
            await up_writer.drain()
            raw = await up_reader.read()
        finally:
            up_writer.transport.abort()
        raw_head, _, body = raw.partition(b"\r\n\r\n")
        status, *lines = raw_head.decode("latin-1").split("\r\n")
        resp_headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines)]
        if "chunked" in _header(resp_headers, "transfer-encoding").lower():
            body = _dechunk(body)
        return status, resp_headers, body

    def _endless_page(
        self, bucket: str, query: dict[str, list[str]], repeat_token: bool, junk_keys: int, junk_prefix: str | None
    ) -> bytes:
        prefix = query.get("prefix", [""])[0]
        encoded = query.get("encoding-type") == ["url"]
        token = "the-same-token" if repeat_token else f"token-{next(self._tokens)}"
        entries = []
        for _ in range(junk_keys):
            key = f"{prefix if junk_prefix is None else junk_prefix}junk-{next(self._junk):09d}"
            entries.append(
                f"<Contents><Key>{html.escape(quote(key) if encoded else key)}</Key>"
                f"<LastModified>2020-01-01T00:00:00.000Z</LastModified><ETag>&quot;{'0' * 32}&quot;</ETag>"
                "<Size>1</Size><StorageClass>STANDARD</StorageClass></Contents>"
            )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><IsTruncated>true</IsTruncated>'
            f"{''.join(entries)}<Name>{html.escape(bucket)}</Name><Prefix>{html.escape(prefix)}</Prefix>"
            f"<MaxKeys>1000</MaxKeys>{'<EncodingType>url</EncodingType>' if encoded else ''}"
            f"<KeyCount>{junk_keys}</KeyCount><NextContinuationToken>{token}</NextContinuationToken>"
            "</ListBucketResult>"
        ).encode()

    def _rewrite_listing(self, bucket: str, body: bytes, query: dict[str, list[str]], rules: list[_Rule]) -> bytes:
        encoded = query.get("encoding-type") == ["url"]

        def entry(match: re.Match[str]) -> str:
            text = match.group(1)
            found = re.search(r"<Key>(.*?)</Key>", text, re.S)
            key = html.unescape(found.group(1)) if found else ""
            path = f"/{bucket}/{unquote(key) if encoded else key}"
            for rule in rules:
                if rule.where not in path:
                    continue
                if rule.kind == "listing_size":
                    text = _set_field(text, "Size", str(rule.value))
                elif rule.kind == "last_modified":
                    text = _set_field(text, "LastModified", _iso(rule.value))
                elif rule.kind == "missing_fields":
                    text = _drop_field(_drop_field(text, "Size"), "ETag")
                elif rule.kind == "phantom" and path == rule.where:
                    text = _set_field(text, "ETag", f'"{rule.value.etag}"')
                    text = _set_field(text, "LastModified", _iso(rule.value.last_modified))
            return f"<Contents>{text}</Contents>"

        xml = _CONTENTS.sub(entry, body.decode())
        for rule in rules:
            if rule.kind == "phantom" and rule.value.bucket == bucket:
                xml = self._insert_phantom(xml, rule.value, query, encoded)
        return xml.encode()

    @staticmethod
    def _insert_phantom(xml: str, phantom: _Phantom, query: dict[str, list[str]], encoded: bool) -> str:
        """``xml`` (a listing page) with an entry for ``phantom`` in key order, if the page covers its key and does
        not list it already (then it exists upstream and was rewritten above)."""
        prefix = query.get("prefix", [""])[0]
        after = query.get("start-after", [""])[0]
        if not phantom.key.startswith(prefix) or (after and phantom.key <= after):
            return xml
        found = [(m, html.unescape(k.group(1))) for m in _CONTENTS.finditer(xml)
                 if (k := re.search(r"<Key>(.*?)</Key>", m.group(1), re.S))]
        listed = [(m, unquote(k) if encoded else k) for m, k in found]
        if any(k == phantom.key for _, k in listed):
            return xml
        truncated = "<IsTruncated>true</IsTruncated>" in xml
        if listed and truncated and phantom.key > listed[-1][1]:
            return xml  # on a later page
        if listed and query.get("continuation-token") and phantom.key < listed[0][1]:
            return xml  # on an earlier page
        shown = quote(phantom.key) if encoded else phantom.key
        new = (f"<Contents><Key>{html.escape(shown)}</Key><LastModified>{_iso(phantom.last_modified)}"
               f"</LastModified><ETag>&quot;{phantom.etag}&quot;</ETag><Size>{phantom.size}</Size>"
               "<StorageClass>STANDARD</StorageClass></Contents>")
        later = [m for m, k in listed if k > phantom.key]
        if later:
            at = later[0].start()
        elif listed:
            at = listed[-1][0].end()
        else:
            at = xml.rindex("</ListBucketResult>")
        xml = xml[:at] + new + xml[at:]
        return re.sub(r"<KeyCount>(\d+)</KeyCount>", lambda m: f"<KeyCount>{int(m.group(1)) + 1}</KeyCount>", xml,
                      count=1)
