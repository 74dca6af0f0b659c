"""Byte storage on any S3-compatible endpoint (AWS S3, Cloudflare R2, MinIO, moto).

`ObjectStore` moves bytes: whole objects, byte ranges, listings and deletes, with bounded concurrency, multipart
uploads, parallel ranged downloads and one retry policy. It knows nothing about what the bytes mean.
`EmbeddedS3` runs moto's S3 server locally and `FaultProxy` injects S3-style failures in front of it.
"""

from .client import ObjectInfo, ObjectStore
from .config import RetryConfig, S3Config, TransferConfig
from .errors import (
    AccessDenied,
    BucketNotFound,
    InvalidRange,
    NotFound,
    ObjectTooLarge,
    PreconditionFailed,
    RetriesExhausted,
    StorageError,
)
from .faultproxy import FaultPlan, FaultProxy
from .server import EmbeddedS3
from .stats import StatsSnapshot, TransferStats

__all__ = [
    "S3Config",
    "TransferConfig",
    "RetryConfig",
    "ObjectStore",
    "ObjectInfo",
    "TransferStats",
    "StatsSnapshot",
    "EmbeddedS3",
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
]
