"""Who takes part in a run and where their objects live, read from the chain.

Every participant commits one short string on chain (``Chain.commit``) naming its role and bucket::

    mr1|<role>|<bucket>|<endpoint>|<access_key_id>|<secret_access_key>

``role`` is ``m`` (miner), ``p`` (peer) or ``v`` (validator). ``endpoint`` empty means the reader's default
(AWS S3 in its region). The credentials are the access the *others* need: for a miner, write access for peers'
inputs and read access to its outputs; for a peer or validator, read access. Empty credentials mean the bucket is
public for that use. Commitments are public: publish scoped keys, never the account's own (docs/PROTOCOL.md).

The directory combines commitments with the metagraph: a commitment counts only for a registered hotkey, and a
hotkey outside the run's allowed set (the run spec's lists) is not a participant at all: it has no place in any
plan. This process's own lists (``--whitelist.hotkeys``/``--blacklist.hotkeys``) narrow further what *it* accepts,
but never the plan, which every participant must compute alike (see :class:`Admission`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Mapping

from storage import InvalidEndpoint, check_endpoint

from .chain.base import MAX_COMMITMENT_BYTES, Neuron
from .errors import InvalidObject, NoBucketOnChain, NotAllowed, UnknownHotkey
from .wire.names import check_bucket, check_hotkey

if TYPE_CHECKING:
    from .spec import RunSpec

ROLES = {"m": "miner", "p": "peer", "v": "validator"}
_PREFIX = "mr1"


class CommitmentError(ValueError):
    """A commitment string that is not ours, or does not parse."""


@dataclass(frozen=True)
class BucketLocation:
    role: str
    bucket: str
    endpoint: str = ""
    access_key_id: str = ""
    secret_access_key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.role not in ROLES.values():
            raise CommitmentError(f"unknown role {self.role!r}")
        check_bucket(self.bucket)
        for part in (self.endpoint, self.access_key_id, self.secret_access_key):
            # ASCII only: the SDK sizes on-chain Raw data by character count but sends UTF-8 bytes.
            if not isinstance(part, str) or "|" in part or not part.isascii() or any(ord(c) < 32 for c in part):
                raise CommitmentError("commitment fields must be ASCII without '|' or control characters")
        if self.endpoint:
            # Everyone will send requests there: a URL no client can use, or one with credentials, a path or a
            # query in it, makes the commitment invalid (its owner is then no participant), never a crash.
            try:
                check_endpoint(self.endpoint)
            except InvalidEndpoint as e:
                raise CommitmentError(f"endpoint: {e}") from None
        if bool(self.access_key_id) != bool(self.secret_access_key):
            raise CommitmentError("an access key id needs its secret, and a secret its key id")

    @classmethod
    def published(cls, role: str, bucket: str, own_endpoint: str | None,
                  environ: "Mapping[str, str] | None" = None) -> "BucketLocation":
        """What a process publishes on chain for its bucket: ``MR_PUBLIC_ENDPOINT_URL`` (default: its own
        endpoint) and the scoped keys others use, ``MR_PUBLIC_ACCESS_KEY_ID`` / ``MR_PUBLIC_SECRET_ACCESS_KEY``
        (none: others read anonymously). Empty values count as unset, as for ``MR_S3_*``: an empty line copied
        from .env.example must not publish "AWS"."""
        env = os.environ if environ is None else environ
        return cls(role=role, bucket=bucket, endpoint=env.get("MR_PUBLIC_ENDPOINT_URL") or own_endpoint or "",
                   access_key_id=env.get("MR_PUBLIC_ACCESS_KEY_ID", ""),
                   secret_access_key=env.get("MR_PUBLIC_SECRET_ACCESS_KEY", ""))

    def encode(self) -> str:
        code = {v: k for k, v in ROLES.items()}[self.role]
        text = "|".join((_PREFIX, code, self.bucket, self.endpoint, self.access_key_id, self.secret_access_key))
        if len(text.encode()) > MAX_COMMITMENT_BYTES:
            raise CommitmentError(
                f"commitment is {len(text.encode())} bytes, the chain stores at most {MAX_COMMITMENT_BYTES}: "
                "shorten the endpoint or bucket name, or use shorter scoped credentials"
            )
        return text

    @classmethod
    def decode(cls, text: str) -> "BucketLocation":
        parts = text.split("|")
        if len(parts) != 6 or parts[0] != _PREFIX or parts[1] not in ROLES:
            raise CommitmentError("not a mapreduce commitment")
        try:
            return cls(ROLES[parts[1]], *parts[2:])
        except ValueError as e:  # InvalidName is a ValueError
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
