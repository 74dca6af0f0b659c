"""Who takes part in a run and where their objects live, read from the chain.

Every participant commits one short string on chain (``Chain.commit``) naming its role and bucket::

    mr1|<role>|<bucket>|<endpoint>|<access_key_id>|<secret_access_key>

``role`` is ``m`` (miner), ``p`` (peer) or ``v`` (validator). ``endpoint`` empty means the reader's default
(AWS S3 in its region). The credentials are the access the *others* need: for a miner, write access for peers'
inputs and read access to its outputs; for a peer or validator, read access. Empty credentials mean the bucket is
public for that use. Commitments are public: publish scoped keys, never the account's own (docs/PROTOCOL.md).

The directory combines commitments with the metagraph: a commitment counts only for a registered hotkey, and a
hotkey outside the allowed set is not a participant at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from .chain.base import MAX_COMMITMENT_BYTES, Neuron
from .names import check_bucket, check_hotkey

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
            if "|" in part or not part.isascii() or any(ord(c) < 32 for c in part):
                raise CommitmentError("commitment fields must be ASCII without '|' or control characters")

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

    @classmethod
    def build(cls, neurons: Iterable[Neuron], commitments: dict[str, str],
              allowed: "Admission | None" = None) -> "Directory":
        by_hotkey = {}
        for n in neurons:
            try:
                check_hotkey(n.hotkey)
            except ValueError:
                continue
            if allowed is None or allowed.admits(n):
                by_hotkey[n.hotkey] = n
        locations = {}
        for hotkey, text in commitments.items():
            if hotkey not in by_hotkey:
                continue
            try:
                locations[hotkey] = BucketLocation.decode(text)
            except CommitmentError:
                continue  # another subnet's format or garbage: not a participant
        return cls(by_hotkey, locations)

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

    def location(self, hotkey: str) -> BucketLocation:
        return self.locations[hotkey]


@dataclass(frozen=True)
class Admission:
    """Who may take part: registered hotkeys, narrowed by an allow list and a deny list."""

    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()

    def admits(self, neuron: Neuron) -> bool:
        if neuron.hotkey in self.deny:
            return False
        return not self.allow or neuron.hotkey in self.allow

    @classmethod
    def parse(cls, allow: str | None, deny: str | None) -> "Admission":
        def split(text: str | None) -> frozenset[str]:
            return frozenset(check_hotkey(h.strip()) for h in (text or "").split(",") if h.strip())
        return cls(split(allow), split(deny))
