"""What a reader requires of each kind of object, before it reads a byte: the one place that says so.

An :class:`~mapreduce.wire.codec.Expect` names the tensors (dtype, shape), who may have signed, the largest the object
may be (so a reader refuses an oversized object from its listed size, before downloading it) and the value bound.
Every role, the inspector and the test vectors build their expectations here; docs/PROTOCOL.md, *Objects*, states
the same rules.

| object | tensors | signer | cap |
| --- | --- | --- | --- |
| input (``in``) | the wire format's (``data``, and ``scale`` for int8, ``index`` for topk: mapreduce/wire/formats.py) | a peer of the window | exact size + header |
| output (``out``) | ``data``: the format's output dtype; ``proof``: U8 ``[input chunks, inputs, 8]`` | the miner | with one row per peer |
| broadcast copy (``bcast``) | ``data``: F32, the segment's length | the sender | exact size + header |
| upload record, broadcast record | none (JSON in the header) | the writer | the header cap |
| evidence | ``headers``: U8, signed headers back to back | the peer | ``MAX_SERVED`` headers |
| validator report | ``report``: U8, a JSON body | the validator | ``MAX_REPORT_BYTES`` |
"""
from __future__ import annotations

from typing import Callable

from ..plan import Segment
from ..spec import RunSpec
from . import hashtree
from .codec import Expect, expected_object_bytes

BROADCAST_DTYPE = "F32"  # broadcasts are sent as fp32, whatever the run's wire dtype: weights arrive exactly
# A validator's report: per-miner rows for hundreds of miners fit easily; a larger one is not a report.
MAX_REPORT_BYTES = 16 << 20
REPORT_TENSOR = "report"
# A peer's evidence: headers the miners signed, back to back in one tensor; one or two per refused output are
# enough to prove anything. The evidence's own header (the item list) has its own cap.
MAX_SERVED = 16
EVIDENCE_TENSOR = "headers"
EVIDENCE_HEADER_BYTES = 64 * 1024

Signers = Callable[[str], bool]


def input_expect(spec: RunSpec, segment: Segment, allowed: Signers) -> Expect:
    """A peer's input of one segment: the wire format's tensors, whose decoded values lie within the run's value
    bound (an int8 input's scales within the bound / 128)."""
    tensors = spec.wire.input_tensors(segment.numel)
    return Expect(tensors, allowed=allowed, max_bytes=expected_object_bytes(tensors, header_slack=spec.max_header_bytes),
                  max_header_bytes=spec.max_header_bytes, max_abs=spec.wire.scale_bound(spec.max_abs_value))


def input_chunks(spec: RunSpec, segment: Segment) -> int:
    """Hash-tree chunks of an input's ``data``: the rows of an output's proof of possession (one per chunk and
    input; an int8 input's ``scale`` and a topk input's ``index`` are not proven, their bytes ride in the last
    chunks)."""
    return hashtree.leaf_count(spec.wire.data_numel(segment.numel) * spec.wire.data_dtype.itemsize)


def output_expect(spec: RunSpec, segment: Segment, miner: str, max_inputs: int) -> Expect:
    """A miner's output: the reduced ``data`` and one ``proof`` row per data chunk and input (chunk-major), sized for
    at most ``max_inputs`` inputs (the window's peers). The mean of inputs within the bound is within it too."""
    chunks = input_chunks(spec, segment)
    tensors = {"data": (spec.wire.output_code, (segment.numel,)),
               "proof": ("U8", (chunks, None, hashtree.PROOF_BYTES))}
    largest = {"data": tensors["data"], "proof": ("U8", (chunks, max(1, max_inputs), hashtree.PROOF_BYTES))}
    return Expect(tensors, allowed=lambda h: h == miner,
                  max_bytes=expected_object_bytes(largest, header_slack=spec.max_header_bytes),
                  max_header_bytes=spec.max_header_bytes, max_abs=spec.max_abs_value)


def copy_expect(spec: RunSpec, segment: Segment, sender: str) -> Expect:
    """One copy of a broadcast segment: the sender's signature over one fp32 vector of the segment."""
    tensors = {"data": (BROADCAST_DTYPE, (segment.numel,))}
    return Expect(tensors, allowed=lambda h: h == sender,
                  max_bytes=expected_object_bytes(tensors, header_slack=spec.max_header_bytes),
                  max_header_bytes=spec.max_header_bytes)


def record_max_bytes(spec: RunSpec) -> int:
    """Records hold no tensors: the header (capped by the spec) is all there is."""
    return expected_object_bytes({}, header_slack=spec.max_header_bytes)


def record_expect(spec: RunSpec, writer: str) -> Expect:
    """An upload record or a broadcast record: no tensors, signed by its writer."""
    return Expect({}, allowed=lambda h: h == writer, max_bytes=record_max_bytes(spec),
                  max_header_bytes=spec.max_header_bytes)


def evidence_max_bytes(spec: RunSpec) -> int:
    return expected_object_bytes({EVIDENCE_TENSOR: ("U8", (MAX_SERVED * (8 + spec.max_header_bytes),))},
                                 header_slack=EVIDENCE_HEADER_BYTES)


def evidence_expect(spec: RunSpec, peer: str) -> Expect:
    """A peer's evidence: the signed headers it was shown, back to back, signed by the peer."""
    return Expect({EVIDENCE_TENSOR: ("U8", (None,))}, allowed=lambda h: h == peer,
                  max_bytes=evidence_max_bytes(spec), max_header_bytes=EVIDENCE_HEADER_BYTES)


def report_expect(validator: str) -> Expect:
    """A validator's report: a JSON body in one U8 tensor, signed by the validator."""
    return Expect({REPORT_TENSOR: ("U8", (None,))}, allowed=lambda h: h == validator, max_bytes=MAX_REPORT_BYTES)
