"""Patches to moto's S3 server, applied by `EmbeddedS3` in its child process (and in this process in thread mode).

This module imports nothing but the standard library and moto: `storage.server` runs its source as the child's
script, before and without any import of ours. Every patch is idempotent (a marker on the patched function) and
keeps moto's answers byte for byte; tests/storage/test_embedded_server.py checks them over HTTP.
"""

from __future__ import annotations


def patch_moto(speedups: bool = True, request_log: bool = True) -> None:
    """Apply the fixes, and unless ``speedups`` is false, the speed-ups too; ``request_log=False`` (with speedups)
    also drops the server's per-request log line (werkzeug's), for a server whose log goes nowhere. Idempotent.

    ``speedups=False`` exists to measure what they save (a patch, once applied in a process, stays).
    """
    _lock_etag()
    if speedups:
        _read_only_the_range()
        _store_once()
        _remember_backends()
        _keep_alive()
        if not request_log:
            _no_request_log()


def _lock_etag() -> None:
    """Fix a race in moto: it hashes an object for its ETag lazily, on the first request that needs it, seeking and
    reading the object's spooled file without the key's lock. A GET of the same object (which reads that file under
    the lock) or a second concurrent listing moves the shared file position mid-hash, and a wrong ETag is cached:
    seen as objects "overwritten" (their listed ETag changes) and as If-Match reads failing, whenever clients list
    a prefix while a large object in it is being written. Hash under the key's lock instead.
    """
    from moto.s3 import models

    etag = models.FakeKey.etag
    if getattr(etag.fget, "_locked", False):
        return

    def locked(self):  # noqa: ANN001, ANN202
        with self.lock:  # the lock `value` takes; etag never runs under it, so this cannot deadlock
            return etag.fget(self)

    locked._locked = True
    models.FakeKey.etag = property(locked)


class _RangeBody:
    """A stored object's bytes, read on demand: ``len()`` is the object's size and a slice reads only that part of
    the key's file, under the key's lock (as `FakeKey.value` reads the whole file). A key's file is written once, when
    the key is made (an overwrite makes a new key), so the bytes read are those the headers (ETag, size) describe.
    An overwrite does close the old key's file at once (`FakeKey.dispose`), so a GET that found the old key just
    before fails with "seek of closed file", a 500, as moto's own `value` read does in the same race."""

    __slots__ = ("key",)

    def __init__(self, key) -> None:  # noqa: ANN001
        self.key = key

    def __len__(self) -> int:
        return self.key.size

    def __getitem__(self, item):  # noqa: ANN001, ANN204
        if isinstance(item, slice):
            start, stop, step = item.indices(self.key.size)
            if step == 1:
                with self.key.lock:
                    self.key._value_buffer.seek(start)
                    return self.key._value_buffer.read(max(0, stop - start))
        return self.key.value[item]

    def __bytes__(self) -> bytes:
        return self.key.value


class _RangeKey:
    """A `FakeKey` whose ``value`` is a `_RangeBody`; every other attribute is the key's own."""

    __slots__ = ("_key",)

    def __init__(self, key) -> None:  # noqa: ANN001
        self._key = key

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._key, name)

    @property
    def value(self) -> _RangeBody:
        return _RangeBody(self._key)


def _read_only_the_range() -> None:
    """Make a ranged GET read only its range. moto answers ``GET`` with ``Range: bytes=a-b`` by reading the whole
    object (`FakeKey.value`, a copy of its spooled file) and then slicing it (`S3Response._handle_range_header`):
    a 16 KiB range of a 32 MiB object read 32 MiB, and a window round of the averaging protocol, which reads many
    small ranges of large objects, made moto read gigabytes and spend most of its CPU copying them.

    `S3Response.get_object` now gets a `_RangeKey` (from its own `_get_key`, so If-Match, If-None-Match and the
    other conditions run as before) when the request has a Range header, and returns a `_RangeBody` instead of
    the bytes; moto's `_handle_range_header` then computes the range exactly as before (its ``len()`` is the
    size, its slice reads the range), so the status (206, 416, or 200 for the forms it ignores), Content-Range
    and Content-Length are moto's own. Whatever leaves `key_response` still holding a `_RangeBody` (a Range header
    moto ignores, ``partNumber=1``, which moto answers with the whole object) becomes the whole object's bytes.
    """
    from moto.s3.responses import S3Response

    if getattr(S3Response.get_object, "_ranged", False):
        return
    get_object, key_response = S3Response.get_object, S3Response.key_response

    def ranged_get_object(self):  # noqa: ANN001, ANN202
        if not self.headers.get("range"):
            return get_object(self)
        get_key = self._get_key

        def range_key(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            key, not_modified = get_key(*args, **kwargs)
            return _RangeKey(key), not_modified

        self._get_key = range_key  # this instance serves this one request (S3Response.key_dispatch makes one each)
        try:
            return get_object(self)
        finally:
            del self._get_key

    def whole_unless_ranged(self, request, full_url, headers):  # noqa: ANN001, ANN202
        status, response_headers, body = key_response(self, request, full_url, headers)
        if isinstance(body, _RangeBody):  # a range moto ignores ("bytes=0-1,5-6", "bytes=x-y", ...): all of it
            body = bytes(body)
        return status, response_headers, body

    ranged_get_object._ranged = True
    S3Response.get_object = ranged_get_object
    S3Response.key_response = whole_unless_ranged


def _remember_backends() -> None:
    """Remember which moto backend serves a host name. moto's server finds the backend of every request anew, under
    one lock that all requests share (`DomainDispatcherApplication.get_application`): for an S3 request it lists
    moto's package folder and stats each of its ~180 entries (`backends.list_of_moto_modules`), then tries the URL
    patterns of every service in turn; some 7 ms of CPU per request, however small, and no two requests at once.
    The answer only depends on the host name (``s3.us-east-1.amazonaws.com``, from the request's credential scope)
    and on moto's installed files, so it is computed once per host. Hosts that find no backend are not remembered
    (moto prints a hint for them each time), and at most 1024 hosts are (regions are whatever clients send).
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    find = DomainDispatcherApplication.get_backend_for_host
    if getattr(find, "_remembered", False):
        return
    known: dict = {}

    def remembered(self, host):  # noqa: ANN001, ANN202 - runs under the dispatcher's lock
        backend = known.get(host)
        if backend is None:
            backend = find(self, host)
            if backend and len(known) < 1024:
                known[host] = backend
        return backend

    remembered._remembered = True
    DomainDispatcherApplication.get_backend_for_host = remembered


def _no_request_log() -> None:
    """Drop werkzeug's access-log line (``127.0.0.1 - - [...] "GET /b/k HTTP/1.1" 206 -``): formatted, coloured and
    written for every request even when the server's output goes to /dev/null. Errors are still logged."""
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    if getattr(MotoRequestHandler.log_request, "_silent", False):
        return

    def log_request(self, code="-", size="-"):  # noqa: ANN001, ANN202
        return None

    log_request._silent = True
    MotoRequestHandler.log_request = log_request


def _store_once() -> None:
    """Store an object's bytes once, and hash them where they are. moto keeps each object in a
    ``SpooledTemporaryFile`` that moves to a temporary file past ~5 MiB, and its `FakeKey.value` setter writes the
    whole body into the in-memory buffer first, which then copies it into the file on overflowing; the ETag, an MD5
    that every PUT and UploadPart answer carries, is then computed by reading it all back from that file. Now a
    body that will not fit goes straight to the file, and the MD5 is taken of the bytes in hand (when the key has
    no ETag yet: a completed multipart upload brings its own). Same file, same ETag, one copy and one read less.
    """
    import hashlib

    from moto.s3 import models

    value = models.FakeKey.value
    if getattr(value.fset, "_once", False):
        return

    def store(self, new_value):  # noqa: ANN001, ANN202 - runs while the key is made, before anyone else sees it
        if isinstance(new_value, str):
            new_value = new_value.encode("utf-8")  # moto's DEFAULT_TEXT_ENCODING
        buffer = self._value_buffer
        buffer.seek(0)
        buffer.truncate()
        if len(new_value) > getattr(buffer, "_max_size", 0) > 0 and not getattr(buffer, "_rolled", True):
            buffer.rollover()  # an empty buffer: only makes the file
        buffer.write(new_value)
        self.contentsize = len(new_value)
        if self._etag is None:
            self._etag = hashlib.md5(new_value, usedforsecurity=False).hexdigest()

    store._once = True
    models.FakeKey.value = value.setter(store)


class _Body:
    """A request body as the application reads it: never past its Content-Length (the next request's bytes stay on
    the socket), with what is left to read known, so the server can tell whether the connection can carry another
    request."""

    def __init__(self, raw, length: int) -> None:  # noqa: ANN001
        self.raw, self.left = raw, length

    def read(self, size: int | None = -1) -> bytes:
        want = self.left if size is None or size < 0 else min(size, self.left)
        data = self.raw.read(want) if want else b""
        self.left -= len(data)
        return data

    def readinto(self, buffer) -> int:  # noqa: ANN001
        view = memoryview(buffer).cast("B")[:self.left]
        n = self.raw.readinto(view) if len(view) else 0
        self.left -= n or 0
        return n or 0

    def readline(self, size: int | None = -1) -> bytes:
        want = self.left if size is None or size < 0 else min(size, self.left)
        line = self.raw.readline(want) if want else b""
        self.left -= len(line)
        return line

    def __iter__(self):  # noqa: ANN204
        return iter(self.readline, b"")


class _DrainSelectors:
    """What werkzeug's request handler sees as the `selectors` module. After each response it drains whatever the
    client sent beyond what the application read (up to 10 ms of silence) before closing; on a kept connection that
    would swallow the client's next request, so a kept request's drain finds nothing."""

    def __init__(self) -> None:
        import selectors
        import threading

        self._real = selectors
        self.kept = threading.local()  # one request at a time per connection thread

    def DefaultSelector(self):  # noqa: N802, ANN201 - the name werkzeug calls
        return _NoDrain() if getattr(self.kept, "open", False) else self._real.DefaultSelector()

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._real, name)


class _NoDrain:
    def register(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        return None

    def select(self, timeout: float | None = None) -> list:
        return []

    def close(self) -> None:
        return None


def _keep_alive() -> None:
    """Keep each client connection open for its next request (HTTP/1.1 keep-alive), as every real S3 endpoint does.
    werkzeug answers every request with ``Connection: close``, because Python's `http.server` cannot find the next
    request line when an application left part of a body unread; so each request cost a TCP connection and a new
    server thread, and its client a connection set-up. Now a connection stays open when the request's body was read
    to its end (a body is read through `_Body`, which stops at Content-Length); a request whose body was left
    unread, or that came chunked, closes the connection as before.
    """
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug import serving

    if getattr(MotoRequestHandler.send_header, "_keep_alive", False):
        return
    drain = _DrainSelectors()
    serving.selectors = drain
    make_environ, send_header = MotoRequestHandler.make_environ, MotoRequestHandler.send_header

    def counted_environ(self):  # noqa: ANN001, ANN202
        environ = make_environ(self)
        drain.kept.open = False
        self._body = None
        if not environ.get("wsgi.input_terminated"):  # not chunked: the length is known
            try:
                self._body = _Body(environ["wsgi.input"], int(environ.get("CONTENT_LENGTH") or 0))
            except ValueError:  # a malformed length: werkzeug's own handling, and the connection closes
                return environ
            environ["wsgi.input"] = self._body
        return environ

    def keep_open(self, keyword: str, value: str) -> None:  # noqa: ANN001
        body = getattr(self, "_body", None)
        if keyword.lower() == "connection" and value.lower() == "close" and body is not None and body.left == 0:
            drain.kept.open = True  # and close_connection stays as the request asked (HTTP/1.1: open)
            return
        send_header(self, keyword, value)

    keep_open._keep_alive = True
    # A kept connection carries small writes (headers, then body) back to back: without TCP_NODELAY, Nagle's
    # algorithm holds the second until the client's delayed ACK (up to 40 ms on Linux).
    MotoRequestHandler.disable_nagle_algorithm = True
    MotoRequestHandler.make_environ = counted_environ
    MotoRequestHandler.send_header = keep_open
