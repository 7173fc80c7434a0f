"""What client and server must spell the same way: the API prefix, headers (stdlib only)."""

from __future__ import annotations

API_PREFIX = "/api/v1"
TENANT_HEADER = "X-Ncloud-Tenant"
DEPLOYMENT_PREFIX = "/models"  # a deployment answers at /models/<id>/predict, outside the API
# Many small files travel as one uncompressed tar (POST .../files): at most this many files,
# and this many bytes or NCLOUD_MAX_FILE_BYTES, whichever is more (each file is held to it).
ARCHIVE_TYPE = "application/x-tar"
MAX_ARCHIVE_FILES = 10_000
MAX_ARCHIVE_BYTES = 64 << 20


def archive_limit(max_file_bytes: int) -> int:
    """The most an archive of files may hold in all (each file is held to max_file_bytes)."""
    return max(max_file_bytes, MAX_ARCHIVE_BYTES)


def host_of(url: str) -> str:
    """The host part of an API URL: what users type in `configure --host`."""
    return url.rstrip("/").removesuffix(API_PREFIX)
