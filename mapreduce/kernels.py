"""torch's CPU math kernels, initialised before this package runs torch in threads of its own.

torch computes float functions such as ``sqrt``, ``exp``, ``log`` and ``tanh`` with Intel MKL's vector math library
(VML), in chunks spread over its intra-op threads (2048 elements or more: on 2 threads an 8192-element tensor goes
in two halves). VML initialises itself on its first call in the process, and that initialisation is not thread-safe
(inferred from its behaviour; torch's source is not at hand here): when the first calls run in two threads at once,
whole chunks of one result (elements 4096-8191 of an 8192-element tensor, say) come out of a low-precision path,
with relative errors up to ~3e-4 where the usual is ~1e-7. ``python -m bench.kernels`` measures it: on this
project's 2-core machine (torch 2.13.0), 2 of 150 fresh processes whose first ``sqrt`` ran in 9 threads at once got
such a result, and none of 150 after this module's warm-up (BENCHMARKS.md, "torch's math kernels, raced").

A role runs torch in worker threads (``asyncio.to_thread``: decoding, encoding, reducing) next to the program that
uses it, whose optimizer's first step calls ``sqrt`` (Adam): that race made one rank of the broadcast example end
its first step up to 3.1e-4 (relative) away from the others, in half of one weight matrix. So a :class:`Network`
(every role has one) initialises VML once, in the thread that creates it, before any of its work starts. The first
call is on a tensor below the 2048-element grain, so it runs in this one thread and cannot race itself.
"""
from __future__ import annotations

import threading

import torch

# Float functions torch computes with VML. bench.kernels measures this whole list; one function may be enough (the
# initialisation looked process-wide while the fix was written), and the rest cost microseconds and cover a torch
# that initialises per function.
WARMED = ("sqrt", "rsqrt", "exp", "expm1", "log", "log1p", "log2", "log10", "sin", "cos", "tan", "tanh", "sinh",
          "cosh", "asin", "acos", "atan", "erf", "erfc", "erfinv", "sigmoid", "lgamma", "reciprocal")
SERIAL_ELEMENTS = 1024  # below at::internal's 2048-element grain for these kernels: the call runs in one thread

_lock = threading.Lock()
_done = False


def warm_math_kernels() -> bool:
    """Call each of :data:`WARMED` once in this thread, in float32 and float64, on a tensor small enough to run in
    this thread alone. Idempotent; returns whether this call did the work (False: it was already done)."""
    global _done
    with _lock:
        if _done:
            return False
        for dtype in (torch.float32, torch.float64):
            x = torch.linspace(0.1, 0.9, SERIAL_ELEMENTS, dtype=dtype)
            for name in WARMED:
                getattr(torch, name)(x)
        _done = True
        return True
