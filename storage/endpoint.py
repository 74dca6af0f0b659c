"""Which endpoint URLs we agree to talk to.

Endpoint URLs arrive from strangers: a participant commits its own on chain and everyone else connects to it. A URL
botocore half-accepts fails later in odd places (a port over 65535 or an ``ftp://`` scheme only at the first
request, a long IPv6 zone id as a UnicodeError deep inside the HTTP stack), and userinfo in a URL would put a
password in our logs. `check_endpoint` accepts one plain form and says precisely what is wrong with anything else.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from .errors import InvalidEndpoint

__all__ = ["check_endpoint", "MAX_ENDPOINT_LENGTH"]

MAX_ENDPOINT_LENGTH = 256

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
_PARTS = re.compile(r"(?P<authority>[^/?#]*)(?P<path>/[^?#]*)?(?P<query>\?[^#]*)?(?P<fragment>#.*)?", re.S)


def check_endpoint(url: str) -> str:
    """``url`` unchanged if it is a plain S3 endpoint URL; `InvalidEndpoint`, with the reason, otherwise.

    Accepted: scheme ``http`` or ``https``; a host name (ASCII labels of 1-63 letters, digits and inner hyphens,
    at most 253 characters, ``xn--`` labels valid punycode, not all-numeric at the end) or an IPv4 / bracketed IPv6
    literal without zone id; an optional port 1-65535; an empty path or ``/``; no userinfo, query or fragment;
    ASCII only, at most 256 characters. Pure: no DNS, no network.
    """
    return _check(url, allow_path=False)


def _check(url: object, *, allow_path: bool) -> str:
    """`check_endpoint`, optionally allowing a base path (botocore supports one on configured endpoints)."""

    def bad(reason: str) -> InvalidEndpoint:
        return InvalidEndpoint(url, reason)

    if not isinstance(url, str):
        raise bad(f"must be a string, not {type(url).__name__}")
    if len(url) > MAX_ENDPOINT_LENGTH:
        raise bad(f"longer than {MAX_ENDPOINT_LENGTH} characters ({len(url)})")
    if not url.isascii():
        raise bad("must be ASCII (write an international host name in punycode, xn--...)")
    if any(c <= " " or c in "\x7f\\" for c in url):
        raise bad("contains whitespace, a control character or a backslash")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise bad("must start with http:// or https://")
    if scheme.lower() not in ("http", "https"):
        raise bad(f"scheme must be http or https, not {scheme[:10]!r}")
    parts = _PARTS.fullmatch(rest)
    assert parts is not None  # every string matches
    authority, path = parts["authority"], parts["path"] or ""
    if parts["query"] is not None:
        raise bad("must not have a query (?...)")
    if parts["fragment"] is not None:
        raise bad("must not have a fragment (#...)")
    if path not in ("", "/") and not allow_path:
        raise bad("must not have a path (only an empty one or /)")
    if "@" in authority:
        raise bad("must not carry userinfo (user:password@)")
    host, port = _split_authority(authority, bad)
    if port is not None:
        if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
            raise bad(f"port must be a number from 1 to 65535, not {port[:10]!r}")
    _check_host(host, bad)
    return url


def _split_authority(authority: str, bad: Callable[[str], InvalidEndpoint]) -> tuple[str, str | None]:
    """(host, port text or None) of ``host[:port]`` / ``[v6][:port]``; IPv6 literals are checked here."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise bad("unclosed [ in an IPv6 literal")
        literal, after = authority[1:close], authority[close + 1 :]
        if "%" in literal:
            raise bad("IPv6 zone ids are not allowed")
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise bad(f"[{literal[:45]}] is not an IPv6 address") from None
        if after and not after.startswith(":"):
            raise bad("unexpected text after the IPv6 literal")
        return literal, (after[1:] if after else None)
    if "[" in authority or "]" in authority:
        raise bad("brackets are only allowed around an IPv6 literal")
    host, colon, port = authority.partition(":")
    if ":" in port:
        raise bad("more than one ':' outside an IPv6 literal")
    return host, (port if colon else None)


def _check_host(host: str, bad: Callable[[str], InvalidEndpoint]) -> None:
    if not host:
        raise bad("no host")
    if ":" in host:
        return  # an IPv6 literal, already checked
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise bad(f"{host[:40]!r} is not an IPv4 address") from None
        return
    if len(host) > 253:
        raise bad(f"host name longer than 253 characters ({len(host)})")
    labels = host.split(".")
    for label in labels:
        if not label:
            raise bad("empty label in the host name (.. or a leading or trailing dot)")
        if len(label) > 63:
            raise bad(f"host name label longer than 63 characters ({len(label)})")
        if not _LABEL.fullmatch(label):
            raise bad(f"host name label {label[:63]!r} has characters other than letters, digits and inner hyphens")
        if label.lower().startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                raise bad(f"host name label {label!r} is not valid punycode") from None
    if labels[-1].isdigit():
        raise bad("the last label of a host name cannot be all digits")
    try:
        host.encode("idna")
    except UnicodeError:
        raise bad("host name is not IDNA-encodable") from None
