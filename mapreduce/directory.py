"""Who takes part in a run and where their objects live, read from the chain.

Every participant commits one short ASCII string on chain (``Chain.commit``, at most ``MAX_COMMITMENT_BYTES``)
naming its role and bucket and how to reach it. This module is the one place for that format (docs/PROTOCOL.md,
*Participants on chain*, describes it field by field)::

    mr2|<role>|<provider>|<bucket>|<field 1>|<field 2>|<access_key_id>|<secret_access_key>

``role`` is ``m`` (miner), ``p`` (peer) or ``v`` (validator). ``provider`` says how readers reach the bucket, so
that no reader falls back on its own default endpoint:

* ``a``, AWS S3: field 1 the region, field 2 empty. Readers use botocore's endpoint for that region, virtual-hosted.
* ``r``, Cloudflare R2: field 1 the 32-hex account id, field 2 the jurisdiction (empty, ``eu``, ``fedramp``...);
  readers use ``https://<account>[.<jurisdiction>].r2.cloudflarestorage.com``, region ``auto``. The account id and
  the credentials (32 and 64 hex digits) are packed: hex -> bytes -> unpadded base64url (22, 22 and 43 characters).
* ``s``, any other S3 (MinIO...): field 1 the endpoint URL, field 2 ``p`` for path-style addressing or empty.

The credentials are the access the *others* need: for a miner, write access for peers' inputs and read access to
its outputs; for a peer or validator, read access. Empty credentials mean the bucket is public for that use.
Commitments are public: publish scoped keys, never the account's own (docs/PROTOCOL.md).

The older ``mr1|<role>|<bucket>|<endpoint>|<access_key_id>|<secret_access_key>`` is still decoded (an empty
endpoint there means the reader's own default endpoint), never written.

The directory combines commitments with the metagraph: a commitment counts only for a registered hotkey, and a
hotkey outside the run's allowed set (the run spec's lists) is not a participant at all: it has no place in any
plan. This process's own lists (``--whitelist.hotkeys``/``--blacklist.hotkeys``) narrow further what *it* accepts,
but never the plan, which every participant must compute alike (see :class:`Admission`).
"""
from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping
from urllib.parse import urlsplit

from storage import InvalidEndpoint, check_endpoint

from .chain.base import MAX_COMMITMENT_BYTES, Neuron
from .errors import InvalidName, InvalidObject, NoBucketOnChain, NotAllowed, UnknownHotkey
from .wire.names import check_bucket, check_hotkey

if TYPE_CHECKING:
    from .spec import RunSpec

ROLES = {"m": "miner", "p": "peer", "v": "validator"}
# Provider code on chain -> BucketLocation.provider.
PROVIDERS = {"a": "aws", "r": "r2", "s": "s3"}
# The provider of a location decoded from an ``mr1`` commitment: its endpoint as committed, empty meaning the
# reader's own default endpoint, region and addressing. Decoded, never encoded.
LEGACY = "mr1"
_PREFIX, _LEGACY_PREFIX = "mr2", "mr1"
_FIELDS, _LEGACY_FIELDS = 8, 6
R2_DOMAIN = "r2.cloudflarestorage.com"
# What readers sign for at another S3 (MinIO, moto...): that commitment carries no region, and MinIO's default is
# this one. The same for every reader, unlike its own MR_S3_REGION.
OTHER_S3_REGION = "us-east-1"
PATH_STYLE_FLAG = "p"

_HEX = re.compile(r"[0-9a-f]*")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
# An AWS region, as botocore puts it in a host name: "us-east-1", "us-gov-west-1", "cn-north-1".
_AWS_REGION = re.compile(r"[a-z]{2}(?:-[a-z0-9]+)+")
# The region inside an AWS S3 endpoint's host: s3.eu-west-1.amazonaws.com, s3-eu-west-1..., s3.dualstack.<region>.
_AWS_HOST = re.compile(r"(?:[^.]+\.)*s3[.-](?:dualstack\.|fips\.)?(?P<region>[a-z]{2}(?:-[a-z0-9]+)+)"
                       r"\.amazonaws\.com(?:\.cn)?")
_JURISDICTION = re.compile(r"[a-z0-9]{0,16}")  # "" (default), "eu", "fedramp": one short DNS label
_R2_HOST = re.compile(r"(?P<account>[0-9a-f]{32})(?:\.(?P<jurisdiction>[a-z0-9]{1,16}))?\." + re.escape(R2_DOMAIN))
# R2's hex values and their packed lengths (16 bytes -> 22 base64url characters, 32 bytes -> 43).
_R2_ACCOUNT_HEX = _R2_KEY_HEX = 32
_R2_SECRET_HEX = 64


class CommitmentError(ValueError):
    """A commitment string that is not ours, or does not parse; or a location that cannot be committed."""


def _host(endpoint: str) -> str:
    """The lower-case host of a checked endpoint URL ("" when it has none)."""
    try:
        return (urlsplit(endpoint).hostname or "").lower()
    except ValueError:  # an unbalanced IPv6 bracket: check_endpoint says why
        return ""


def infer_provider(endpoint: str) -> str:
    """The provider an endpoint URL belongs to: ``"aws"`` for none or an ``amazonaws.com`` host, ``"r2"`` for a
    ``*.r2.cloudflarestorage.com`` host, ``"s3"`` (some other S3) for anything else."""
    host = _host(endpoint)
    if not endpoint or host == "amazonaws.com" or host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        return "aws"
    if host.endswith("." + R2_DOMAIN):
        return "r2"
    return "s3"


def _pack_hex(value: str, digits: int, what: str) -> str:
    """``digits`` lower-case hex digits -> unpadded base64url of their bytes."""
    if len(value) != digits or not _HEX.fullmatch(value):
        not_hex = "" if _HEX.fullmatch(value) else ", not all lower-case hex"
        raise CommitmentError(f"R2 {what} must be {digits} lower-case hex digits, as Cloudflare shows it "
                              f"(got {len(value)} characters{not_hex})")
    return base64.urlsafe_b64encode(bytes.fromhex(value)).rstrip(b"=").decode()


def _unpack_hex(text: str, digits: int, what: str) -> str:
    """The inverse of :func:`_pack_hex`; only its canonical output is accepted (one string per value)."""
    length = -(-digits * 4 // 6)  # base64 characters for digits/2 bytes, unpadded
    if len(text) != length or not _BASE64URL.fullmatch(text):
        raise CommitmentError(f"R2 {what} must be {length} base64url characters")
    value = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).hex()
    if _pack_hex(value, digits, what) != text:
        raise CommitmentError(f"R2 {what} is not canonical base64url (stray low bits)")
    return value


def r2_endpoint(account: str, jurisdiction: str = "") -> str:
    """The S3 endpoint of an R2 account, in a jurisdiction (``""``: the default one)."""
    return f"https://{account}.{jurisdiction + '.' if jurisdiction else ''}{R2_DOMAIN}"


@dataclass(frozen=True)
class BucketLocation:
    """Where a participant's bucket is, and with which (published, scoped) keys others reach it.

    ``provider`` is ``"aws"``, ``"r2"``, ``"s3"`` (any other S3) or :data:`LEGACY` (decoded from ``mr1``); left
    empty, it is inferred from ``endpoint`` (:func:`infer_provider`). Normalised on construction, so that a location
    equals its own decoded commitment: AWS keeps no endpoint (readers use botocore's, for ``region``; a region is
    taken from an ``amazonaws.com`` endpoint when none is given), R2 keeps its endpoint without a trailing ``/`` and
    region ``"auto"``. ``region`` is committed for AWS only, ``path_style`` for other S3 only.
    """

    role: str
    bucket: str
    endpoint: str = ""
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)
    provider: str = ""
    region: str = ""
    path_style: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES.values():
            raise CommitmentError(f"unknown role {self.role!r}")
        try:
            check_bucket(self.bucket)
        except InvalidName as e:  # one error type for a location that cannot be committed
            raise CommitmentError(str(e)) from None
        for part in (self.endpoint, self.access_key_id, self.secret_access_key, self.provider, self.region):
            # ASCII only: the SDK sizes on-chain Raw data by character count but sends UTF-8 bytes.
            if not isinstance(part, str) or "|" in part or not part.isascii() or any(ord(c) < 32 for c in part):
                raise CommitmentError("commitment fields must be ASCII without '|' or control characters")
        if not isinstance(self.path_style, bool):
            raise CommitmentError("path_style must be True or False")
        if self.endpoint:
            # Everyone will send requests there: a URL no client can use, or one with credentials, a path or a
            # query in it, makes the commitment invalid (its owner is then no participant), never a crash.
            try:
                check_endpoint(self.endpoint)
            except InvalidEndpoint as e:
                raise CommitmentError(f"endpoint: {e}") from None
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise CommitmentError("an access key id needs its secret, and a secret its key id")
        provider = self.provider or infer_provider(self.endpoint)
        object.__setattr__(self, "provider", provider)  # frozen: normalised once, here
        if provider == "aws":
            self._check_aws()
        elif provider == "r2":
            self._check_r2()
        elif provider == "s3":
            if not self.endpoint:
                raise CommitmentError("another S3 provider needs its endpoint URL")
            if self.region:
                raise CommitmentError(f"an S3 endpoint other than AWS commits no region (readers sign for "
                                      f"{OTHER_S3_REGION}); leave the region empty")
        elif provider == LEGACY:
            if self.region or self.path_style:
                raise CommitmentError("an mr1 location has no region or addressing style")
        else:
            raise CommitmentError(f"unknown provider {provider!r} (aws, r2 or s3)")

    def _check_aws(self) -> None:
        if self.endpoint:
            if infer_provider(self.endpoint) != "aws":
                raise CommitmentError(f"an AWS location has no endpoint of its own, not {self.endpoint!r}")
            found = _AWS_HOST.fullmatch(_host(self.endpoint))
            if not self.region:
                if found is None and _host(self.endpoint) != "s3.amazonaws.com":
                    raise CommitmentError(f"give the AWS region: none in the endpoint {self.endpoint!r}")
                object.__setattr__(self, "region", found["region"] if found else "us-east-1")
            object.__setattr__(self, "endpoint", "")  # readers use botocore's endpoint for the region
        if not self.region:
            raise CommitmentError("an AWS location needs its region (MR_PUBLIC_REGION, MR_S3_REGION, --region)")
        if len(self.region) > 32 or not _AWS_REGION.fullmatch(self.region):
            raise CommitmentError(f"not an AWS region: {self.region!r} (e.g. us-east-1)")
        if self.path_style:
            raise CommitmentError("AWS buckets are reached virtual-hosted: no path style")

    def _check_r2(self) -> None:
        found = _R2_HOST.fullmatch(_host(self.endpoint))
        if found is None or self.endpoint.rstrip("/") != r2_endpoint(found["account"], found["jurisdiction"] or ""):
            raise CommitmentError(f"an R2 endpoint is https://<32 lower-case hex account id>[.<jurisdiction>]."
                                  f"{R2_DOMAIN} (jurisdiction: up to 16 lower-case letters and digits), "
                                  f"not {self.endpoint!r}")
        object.__setattr__(self, "endpoint", self.endpoint.rstrip("/"))
        if self.region not in ("", "auto"):
            raise CommitmentError(f"R2's region is auto, not {self.region!r}")
        object.__setattr__(self, "region", "auto")
        if self.path_style:
            raise CommitmentError("R2 commits no addressing style (readers use path style)")
        if self.access_key_id:  # checked here, so that encode() cannot fail on them
            _pack_hex(self.access_key_id, _R2_KEY_HEX, "access key id")
            _pack_hex(self.secret_access_key, _R2_SECRET_HEX, "secret access key")

    @property
    def r2_account(self) -> tuple[str, str]:
        """An R2 location's account id and jurisdiction (``""``: the default one)."""
        found = _R2_HOST.fullmatch(_host(self.endpoint))
        if self.provider != "r2" or found is None:
            raise CommitmentError("not an R2 location")
        return found["account"], found["jurisdiction"] or ""

    @property
    def client_endpoint(self) -> str | None:
        """The endpoint URL a reader's client is given: None for AWS (botocore's own for the region); for an mr1
        location, its endpoint or None for the reader's own default."""
        return None if self.provider == "aws" else self.endpoint or None

    @property
    def client_region(self) -> str | None:
        """The region a reader signs for; None for an mr1 location (the reader's own)."""
        return {"aws": self.region, "r2": "auto", "s3": OTHER_S3_REGION}.get(self.provider)

    @property
    def addressing_style(self) -> str | None:
        """The reader's addressing style: AWS virtual-hosted, R2 path, other S3 path when flagged or else the
        client's choice (botocore's auto: path style for a custom endpoint); None for mr1 (the reader's own)."""
        return {"aws": "virtual", "r2": "path", "s3": "path" if self.path_style else "auto"}.get(self.provider)

    @property
    def reader_endpoint(self) -> str:
        """The URL readers send requests to, for people: AWS's regional endpoint, spelled out (botocore's default
        for the region; virtual-hosted requests go to ``<bucket>.`` that host); "" for an mr1 location without
        one (each reader's own default)."""
        if self.provider == "aws":
            suffix = ".cn" if self.region.startswith("cn-") else ""
            return f"https://s3.{self.region}.amazonaws.com{suffix}"
        return self.endpoint

    @classmethod
    def published(cls, role: str, bucket: str, own_endpoint: str | None,
                  environ: "Mapping[str, str] | None" = None, *, own_region: str | None = None,
                  own_addressing_style: str | None = None) -> "BucketLocation":
        """What a process publishes on chain for its bucket: ``MR_PUBLIC_ENDPOINT_URL`` (default: its own
        endpoint), ``MR_PUBLIC_REGION`` (default, for AWS: its own region), ``MR_PUBLIC_ADDRESSING_STYLE`` (default,
        for another S3: its own style; ``path`` sets the path-style flag) and the scoped keys others use,
        ``MR_PUBLIC_ACCESS_KEY_ID`` / ``MR_PUBLIC_SECRET_ACCESS_KEY`` (none: others read anonymously). Empty values
        count as unset, as for ``MR_S3_*``: an empty line copied from .env.example must not publish "AWS".
        Fallbacks apply only where the provider commits the value; a value set explicitly always goes in (and is
        refused, CommitmentError, where the provider has no such field)."""
        env = os.environ if environ is None else environ
        endpoint = env.get("MR_PUBLIC_ENDPOINT_URL") or own_endpoint or ""
        provider = infer_provider(endpoint)
        region = env.get("MR_PUBLIC_REGION") or ((own_region or "") if provider == "aws" else "")
        style = env.get("MR_PUBLIC_ADDRESSING_STYLE") or ((own_addressing_style or "") if provider == "s3" else "")
        if style.lower() not in ("", "auto", "path", "virtual"):
            raise CommitmentError(f"MR_PUBLIC_ADDRESSING_STYLE must be auto, path or virtual, not {style!r}")
        return cls(role=role, bucket=bucket, endpoint=endpoint,
                   access_key_id=env.get("MR_PUBLIC_ACCESS_KEY_ID", ""),
                   secret_access_key=env.get("MR_PUBLIC_SECRET_ACCESS_KEY", ""),
                   provider=provider, region=region, path_style=style.lower() == "path")

    def encode(self) -> str:
        """The ``mr2`` commitment; CommitmentError for an mr1 location or one longer than the chain stores."""
        code = {v: k for k, v in ROLES.items()}[self.role]
        key, secret = self.access_key_id, self.secret_access_key
        if self.provider == "aws":
            fields = ("a", self.region, "")
        elif self.provider == "r2":
            account, jurisdiction = self.r2_account
            fields = ("r", _pack_hex(account, _R2_ACCOUNT_HEX, "account id"), jurisdiction)
            if key:
                key = _pack_hex(key, _R2_KEY_HEX, "access key id")
                secret = _pack_hex(secret, _R2_SECRET_HEX, "secret access key")
        elif self.provider == "s3":
            fields = ("s", self.endpoint, PATH_STYLE_FLAG if self.path_style else "")
        else:
            raise CommitmentError("an mr1 location cannot be written as mr2: give its provider (and region)")
        provider, field1, field2 = fields
        text = "|".join((_PREFIX, code, provider, self.bucket, field1, field2, key, secret))
        if len(text.encode()) > MAX_COMMITMENT_BYTES:
            raise CommitmentError(
                f"commitment is {len(text.encode())} bytes, the chain stores at most {MAX_COMMITMENT_BYTES}: "
                "shorten the endpoint or bucket name, or use shorter scoped credentials"
            )
        return text

    @classmethod
    def decode(cls, text: str) -> "BucketLocation":
        """The location in an ``mr2`` or ``mr1`` commitment; CommitmentError for anything else."""
        parts = text.split("|") if isinstance(text, str) else []
        try:
            if len(parts) == _LEGACY_FIELDS and parts[0] == _LEGACY_PREFIX and parts[1] in ROLES:
                return cls(ROLES[parts[1]], *parts[2:], provider=LEGACY)
            if len(parts) != _FIELDS or parts[0] != _PREFIX or parts[1] not in ROLES:
                raise CommitmentError("not a mapreduce commitment")
            _, role, provider, bucket, field1, field2, key, secret = parts
            if provider not in PROVIDERS:
                raise CommitmentError(f"unknown provider code {provider[:8]!r} (a, r or s)")
            if provider == "a":
                if field2:
                    raise CommitmentError("an AWS commitment has an empty sixth field")
                return cls(ROLES[role], bucket, "", key, secret, provider="aws", region=field1)
            if provider == "r":
                if not _JURISDICTION.fullmatch(field2):
                    raise CommitmentError("an R2 jurisdiction is lower-case letters and digits")
                account = _unpack_hex(field1, _R2_ACCOUNT_HEX, "account id")
                if key or secret:
                    key = _unpack_hex(key, _R2_KEY_HEX, "access key id")
                    secret = _unpack_hex(secret, _R2_SECRET_HEX, "secret access key")
                return cls(ROLES[role], bucket, r2_endpoint(account, field2), key, secret, provider="r2")
            if field2 not in ("", PATH_STYLE_FLAG):
                raise CommitmentError(f"the path-style flag is {PATH_STYLE_FLAG!r} or empty")
            return cls(ROLES[role], bucket, field1, key, secret, provider="s3", path_style=field2 == PATH_STYLE_FLAG)
        except CommitmentError:
            raise
        except ValueError as e:  # InvalidName, binascii.Error and friends are ValueErrors
            raise CommitmentError(str(e)) from None


@dataclass(frozen=True)
class Directory:
    """A snapshot of the participants: registered hotkeys with a valid commitment, by role."""

    neurons: dict[str, Neuron]
    locations: dict[str, BucketLocation]
    # This process's own lists: they narrow what it accepts, never who is in the plan.
    local: "Admission" = field(default_factory=lambda: Admission())
    # Registered hotkeys the run's lists exclude -> why; kept so readers can say "not allowed", not "unknown".
    excluded: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, neurons: Iterable[Neuron], commitments: dict[str, str],
              allowed: "Admission | None" = None, local: "Admission | None" = None) -> "Directory":
        """``allowed``: the run's admission (the spec's lists), which decides who is a participant; ``local``:
        this process's own lists, which only narrow what :meth:`accepts` and :meth:`admits_peer` let through."""
        by_hotkey, excluded = {}, {}
        for n in neurons:
            try:
                check_hotkey(n.hotkey)
            except ValueError:
                continue
            why = allowed.why_excluded(n.hotkey) if allowed is not None else None
            if why is None:
                by_hotkey[n.hotkey] = n
            else:
                excluded[n.hotkey] = f"{why} of the run spec"
        locations = {}
        for hotkey, text in commitments.items():
            if hotkey not in by_hotkey:
                continue
            try:
                locations[hotkey] = BucketLocation.decode(text)
            except CommitmentError:
                continue  # another subnet's format or garbage: not a participant
        return cls(by_hotkey, locations, local or Admission(), excluded)

    def _role(self, role: str) -> list[str]:
        return sorted(h for h, loc in self.locations.items() if loc.role == role)

    @property
    def miners(self) -> list[str]:
        return self._role("miner")

    @property
    def peers(self) -> list[str]:
        return self._role("peer")

    @property
    def validators(self) -> list[str]:
        return self._role("validator")

    def is_registered(self, hotkey: str) -> bool:
        return hotkey in self.neurons

    def is_peer(self, hotkey: str) -> bool:
        loc = self.locations.get(hotkey)
        return loc is not None and loc.role == "peer"

    def uid(self, hotkey: str) -> int:
        return self.neurons[hotkey].uid

    def accepts(self, hotkey: str) -> bool:
        """Whether this process's own lists let ``hotkey`` through (the run's lists are applied already)."""
        return self.local.why_excluded(hotkey) is None

    def exclusion(self, hotkey: str, role: str) -> InvalidObject | None:
        """Why an object by ``hotkey`` in ``role`` (``"peer"``, ``"miner"``, ``"validator"``) does not count, or None.

        :class:`NotAllowed` for a registered hotkey that the run's or this process's lists exclude, naming which;
        :class:`UnknownHotkey` for one that is not registered or has not committed a bucket in that role.
        """
        if hotkey in self.excluded:
            return NotAllowed(f"{hotkey} is {self.excluded[hotkey]}")
        loc = self.locations.get(hotkey)
        if loc is None or loc.role != role:
            return UnknownHotkey(f"{hotkey} is not a registered {role}")
        why = self.local.why_excluded(hotkey)
        if why is not None:
            return NotAllowed(f"{hotkey} is {why} of this process (--whitelist/--blacklist)")
        return None

    def admits_peer(self, hotkey: str) -> bool:
        """For ``codec.Expect.allowed``: True for an accepted peer, False for an unknown hotkey, and raises
        :class:`NotAllowed` for an excluded one, so the rejection is counted under its own reason."""
        error = self.exclusion(hotkey, "peer")
        if isinstance(error, NotAllowed):
            raise error
        return error is None

    def location(self, hotkey: str) -> BucketLocation:
        """Where ``hotkey``'s bucket is; :class:`NoBucketOnChain` if it has none in this directory."""
        try:
            return self.locations[hotkey]
        except KeyError:
            raise NoBucketOnChain(f"hotkey {hotkey} has no bucket committed on chain") from None


@dataclass(frozen=True)
class Admission:
    """Who may take part: registered hotkeys, narrowed by an allow list and a deny list; and which validators'
    reports are trusted (a validator permit and at least ``min_validator_stake``).

    Two admissions meet in every process. The run spec's (:meth:`from_spec`) is shared by the whole run: it decides
    who is a participant, so it may shape the plan. The command line's (:meth:`parse`) is this process's own: it
    only narrows what the process accepts. Combined (:meth:`narrow`), a hotkey passes only if both let it through:
    the deny lists add up, the allow lists intersect (an empty allow list means "everyone"), the higher minimum
    stake applies. A local list can thus never re-admit a hotkey the run excludes.
    """

    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()
    min_validator_stake: float = 0.0

    def why_excluded(self, hotkey: str) -> str | None:
        """``"on the deny list"``, ``"not on the allow list"``, or None when ``hotkey`` is admitted."""
        if hotkey in self.deny:
            return "on the deny list"
        if self.allow and hotkey not in self.allow:
            return "not on the allow list"
        return None

    def admits(self, neuron: Neuron) -> bool:
        return self.why_excluded(neuron.hotkey) is None

    def distrusts(self, neuron: Neuron) -> str | None:
        """Why a validator's reports are not trusted (``"not_allowed"``, ``"no_permit"``, ``"low_stake"``), or None."""
        if not self.admits(neuron):
            return "not_allowed"
        if not neuron.validator_permit:
            return "no_permit"
        if neuron.stake < self.min_validator_stake:
            return "low_stake"
        return None

    def narrow(self, other: "Admission") -> "Admission":
        """What passes both ``self`` and ``other``; ValueError if two allow lists leave nobody."""
        allow = self.allow & other.allow if self.allow and other.allow else self.allow | other.allow
        if self.allow and other.allow and not allow:
            raise ValueError("the two allow lists have no hotkey in common: nobody could take part")
        return Admission(allow, self.deny | other.deny, max(self.min_validator_stake, other.min_validator_stake))

    @classmethod
    def from_spec(cls, spec: "RunSpec") -> "Admission":
        """The run's own lists, as every participant reads them from the shared run spec."""
        return cls(frozenset(spec.allow_hotkeys), frozenset(spec.deny_hotkeys), spec.min_validator_stake)

    @classmethod
    def parse(cls, allow: str | None, deny: str | None, min_validator_stake: float = 0.0) -> "Admission":
        """From comma-separated hotkeys, as ``--whitelist.hotkeys`` / ``--blacklist.hotkeys`` take them."""
        def split(text: str | None) -> frozenset[str]:
            return frozenset(check_hotkey(h.strip()) for h in (text or "").split(",") if h.strip())
        if not min_validator_stake >= 0:
            raise ValueError("the minimum validator stake must be >= 0")
        return cls(split(allow), split(deny), float(min_validator_stake))
