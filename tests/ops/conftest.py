"""Fixtures of the ops tests: the suite's in-process cluster (a local chain, the embedded S3 server, real keys)."""
from tests.support.cluster import cluster_factory  # noqa: F401  (a fixture, used by name)
