"""The client's timestamp parser (`storage.client._parse_timestamp`) gives the instant botocore's own gives, for
every form S3 and S3-compatible stores send (in UTC for the two it parses itself); what it does not recognise goes
to botocore's."""
from __future__ import annotations

from datetime import timezone

import pytest
from botocore.utils import parse_timestamp

from storage.client import _parse_timestamp


@pytest.mark.parametrize("value", [
    "Tue, 01 Dec 2026 03:27:12 GMT",  # Last-Modified, RFC 7231
    "Sat, 29 Feb 2020 23:59:59 GMT",
    "Thu, 01 Jan 1970 00:00:00 GMT",
    "2026-12-01T03:27:12.000Z",  # ListObjectsV2, ISO 8601
    "2026-12-01T03:27:12Z",
    "2026-12-01T03:27:12.123456Z",
    "2026-12-01T03:27:12+02:00",  # other forms: botocore's parser
    "Tue, 1 Dec 2026 03:27:12 GMT",
    "1764559632",
    1764559632,
    1764559632.5,
])
def test_same_instant_as_botocore_in_utc(value) -> None:
    ours = _parse_timestamp(value)
    assert ours.timestamp() == parse_timestamp(value).timestamp()
    if isinstance(value, str) and value.endswith(("GMT", "Z")):
        assert ours.utcoffset() == timezone.utc.utcoffset(None)


@pytest.mark.parametrize("value", ["Tue, 01 Foo 2026 03:27:12 GMT", "2026-13-01T03:27:12.000Z", "yesterday"])
def test_what_botocore_refuses_is_refused(value) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(value)
    with pytest.raises(ValueError):
        _parse_timestamp(value)
