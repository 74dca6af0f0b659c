"""Byte storage on any S3-compatible endpoint (AWS S3, Cloudflare R2, MinIO, moto).

`ObjectStore` moves bytes: whole objects, byte ranges, listings and deletes, with bounded concurrency, multipart
uploads, parallel ranged downloads and one retry policy. It knows nothing about what the bytes mean. Any endpoint
may be hostile: answers are checked and bounded, and `check_endpoint` vets endpoint URLs from strangers.
`EmbeddedS3` runs moto's S3 server locally and `FaultProxy` injects S3-style failures in front of it. `MemoryS3` is
an S3 in this process's memory, and `MemoryStore` an `ObjectStore` whose transport it is (benchmarks at scale).
"""

from .client import MAX_LIST_KEYS, MAX_RESPONSE_BODY, ObjectInfo, ObjectStore
from .config import RetryConfig, S3Config, TransferConfig
from .endpoint import check_endpoint
from .errors import (
    AccessDenied,
    BucketNotFound,
    InvalidEndpoint,
    InvalidRange,
    ListingTooLong,
    MalformedResponse,
    NotFound,
    ObjectTooLarge,
    PreconditionFailed,
    RetriesExhausted,
    StorageError,
)
from .faultproxy import FaultPlan, FaultProxy
from .memory import MemoryS3, MemoryStore
from .server import EmbeddedS3
from .stats import OperationStats, StatsSnapshot, TransferStats

__all__ = [
    "S3Config",
    "TransferConfig",
    "RetryConfig",
    "ObjectStore",
    "ObjectInfo",
    "TransferStats",
    "StatsSnapshot",
    "OperationStats",
    "EmbeddedS3",
    "MemoryS3",
    "MemoryStore",
    "FaultProxy",
    "FaultPlan",
    "StorageError",
    "NotFound",
    "BucketNotFound",
    "PreconditionFailed",
    "ObjectTooLarge",
    "AccessDenied",
    "RetriesExhausted",
    "InvalidRange",
    "MalformedResponse",
    "ListingTooLong",
    "InvalidEndpoint",
    "check_endpoint",
    "MAX_LIST_KEYS",
    "MAX_RESPONSE_BODY",
]
