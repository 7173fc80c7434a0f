"""Every NCLOUD_* tunable, read once from the environment (stdlib only)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name}={raw!r} is not an integer") from exc


def _at_least_1(name: str, default: int) -> int:
    """A limit that 0 or less would turn off: refused, so that a typo cannot lift it."""
    value = _int(name, default)
    if value < 1:
        raise ValueError(f"{name}={value} must be at least 1")
    return value


@dataclass(frozen=True)
class Settings:
    # Where the server keeps its state: the SQL store, default storage, logs. Default ~/.ncloud.
    home: Path
    # SQLAlchemy URL of the metadata store. Default: SQLite in NCLOUD_HOME/ncloud.db.
    db_url: str
    # fsspec URL under which datasets, volumes and models are stored. Default: NCLOUD_HOME/storage.
    storage: str
    # Node-local cache of dataset shards. Default: NCLOUD_HOME/cache.
    cache_dir: Path
    # The API URL the CLI talks to. Default: http://127.0.0.1:8000 (or ~/.ncloudrc).
    host: str | None
    # The access token the CLI sends (overrides ~/.ncloudrc).
    token: str | None
    # The tenant the CLI acts in (overrides ~/.ncloudrc).
    tenant: str | None
    # Largest JSON request body the API accepts, in bytes. Default 1 MiB.
    max_body_bytes: int
    # Largest single uploaded file, in bytes. Default 256 MiB.
    max_file_bytes: int
    # 1 shows tracebacks in the CLI. Default 0.
    debug: bool
    # Failed authentications a minute from one client address, or for one token id, before
    # more are refused with 429 (per API or deployment replica). Default 20.
    auth_failures_per_minute: int
    # CPU seconds a spec's check (its import, the model built, one forward) may use before it
    # is refused with 422. Default 30.
    check_cpu_s: int
    # Path of the CLI's config file. Default ~/.ncloudrc.
    rc_path: Path
    # S3 endpoint for NCLOUD_STORAGE=s3://... and linked datasets (moto, MinIO). Default: AWS.
    s3_endpoint_url: str | None
    # 1 runs tenant code without a sandbox: for a one-person laptop only. Default 0.
    single_tenant: bool
    warm_workers: bool
    # Host folder holding each sandbox's own folder (inputs, outputs, volumes).
    # Default NCLOUD_HOME/sandboxes.
    sandbox_dir: Path
    # The Ray autoscaler's config (its node types say how far the cluster may grow).
    # Default: ~/ray_bootstrap_config.yaml, which Ray's cluster launcher writes on the head.
    autoscaler_config: Path


@functools.cache
def settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    home = Path(os.environ.get("NCLOUD_HOME") or Path.home() / ".ncloud").expanduser()
    return Settings(
        home=home,
        db_url=os.environ.get("NCLOUD_DB_URL") or f"sqlite:///{home / 'ncloud.db'}",
        storage=os.environ.get("NCLOUD_STORAGE") or str(home / "storage"),
        cache_dir=Path(os.environ.get("NCLOUD_CACHE_DIR") or home / "cache").expanduser(),
        host=os.environ.get("NCLOUD_HOST") or None,
        token=os.environ.get("NCLOUD_TOKEN") or None,
        tenant=os.environ.get("NCLOUD_TENANT") or None,
        max_body_bytes=_int("NCLOUD_MAX_BODY_BYTES", 1 << 20),
        max_file_bytes=_int("NCLOUD_MAX_FILE_BYTES", 256 << 20),
        debug=os.environ.get("NCLOUD_DEBUG", "0") not in ("", "0", "false"),
        auth_failures_per_minute=_int("NCLOUD_AUTH_FAILURES_PER_MINUTE", 20),
        check_cpu_s=_at_least_1("NCLOUD_CHECK_CPU_SECONDS", 30),
        rc_path=Path(os.environ.get("NCLOUD_RC") or Path.home() / ".ncloudrc").expanduser(),
        s3_endpoint_url=os.environ.get("NCLOUD_S3_ENDPOINT_URL") or None,
        single_tenant=os.environ.get("NCLOUD_SINGLE_TENANT", "0") not in ("", "0", "false"),
        warm_workers=os.environ.get("NCLOUD_WARM_WORKERS", "1") not in ("", "0", "false"),
        sandbox_dir=Path(os.environ.get("NCLOUD_SANDBOX_DIR") or home / "sandboxes").expanduser(),
        autoscaler_config=Path(
            os.environ.get("NCLOUD_AUTOSCALER_CONFIG") or Path.home() / "ray_bootstrap_config.yaml"
        ).expanduser(),
    )
