"""Linked datasets on a real S3 endpoint (moto in server mode on 127.0.0.1)."""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.digits import make_digits
from jobs.datasets.loader import ShardLoader
from ncloud.errors import InvalidInput
from ncloud.settings import settings
from tests.integration.conftest import Server


@pytest.fixture(scope="module")
def bucket(server: Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    """s3://linked/digits/ holding the valid split: a manifest and its PNGs."""
    local = tmp_path_factory.mktemp("digits-s3")
    make_digits(local, size=16)
    fs = server.s3.fs()
    fs.mkdir("linked")
    fs.put(str(local / "valid"), "linked/digits/valid", recursive=True)
    fs.put(str(local / "valid.tsv"), "linked/digits/valid.tsv")
    return "s3://linked/digits"


@pytest.fixture
def linker(server: Server, tenant: Callable[..., Any]) -> Iterator[dict[str, str]]:
    tenant("linkers", cpus=1)
    user = server.client().users.add("lin@example.com", ["linkers"])
    yield {"tenant": "linkers", "token": user["token"]}
    server.client().users.remove("lin@example.com")


@pytest.fixture
def s3_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This test process reads S3 the way a training worker would: through the endpoint."""
    from cluster.core import storage

    monkeypatch.setenv("NCLOUD_S3_ENDPOINT_URL", server.s3.moto.url)
    for key, value in server.s3.fs().storage_options.items():
        if key in ("key", "secret"):
            monkeypatch.setenv(
                "AWS_ACCESS_KEY_ID" if key == "key" else "AWS_SECRET_ACCESS_KEY", value
            )
    settings.cache_clear()
    storage.configure_fsspec()
    yield
    settings.cache_clear()


def test_link_registers_without_copying(
    server: Server, linker: dict[str, str], bucket: str
) -> None:
    out = server.cli(
        "dataset",
        "link",
        f"{bucket}/valid.tsv",
        "--name",
        "linked-digits",
        "-o",
        "json",
        token=linker["token"],
        tenant=linker["tenant"],
    )
    found = json.loads(out.stdout)
    assert found["status"] == "Linked" and found["rows"] == 357 and found["source"] == "link"
    stored = server.home / "storage" / "tenants" / "linkers" / "datasets" / str(found["id"])
    assert not stored.exists()  # nothing copied
    client = server.client(token=linker["token"], tenant=linker["tenant"])
    client.datasets.remove(found["id"])


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("s3://no-such-bucket/m.tsv", "cannot read|not found"),
        ("s3://linked/digits/missing.tsv", "not found"),
        ("http://example.com/m.tsv", "not allowed"),
        ("file:///etc/passwd", "not allowed"),
        ("s3://linked/x::memory://y", "not allowed"),
    ],
)
def test_bad_links_are_refused(
    server: Server, linker: dict[str, str], bucket: str, url: str, match: str
) -> None:
    client = server.client(token=linker["token"], tenant=linker["tenant"])
    with pytest.raises(InvalidInput, match=match):
        client.datasets.link("bad-link", url)
    assert all(d["name"] != "bad-link" for d in client.datasets.list())


def _fill(manifest_url: str, cache_dir: str, endpoint: str, out: Any) -> None:
    import os

    os.environ["NCLOUD_S3_ENDPOINT_URL"] = endpoint
    from cluster.core import storage
    from jobs.datasets import linked

    settings.cache_clear()
    storage.configure_fsspec()
    out.put(linked.ensure_cached(manifest_url, Path(cache_dir)))


def test_first_use_ingests_into_the_node_cache_once(
    s3_env: None, server: Server, bucket: str, tmp_path: Path
) -> None:
    cache = tmp_path / "node-cache"
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    readers = [
        ctx.Process(
            target=_fill, args=(f"{bucket}/valid.tsv", str(cache), server.s3.moto.url, results)
        )
        for _ in range(2)
    ]
    for r in readers:
        r.start()
    for r in readers:
        r.join(timeout=240)
    urls = {results.get(timeout=5) for _ in readers}
    assert len(urls) == 1  # both readers on this node share one cached copy
    ds_url = urls.pop()
    index_file = Path(ds_url) / "index.json"
    first_mtime = index_file.stat().st_mtime_ns
    from jobs.datasets import linked

    assert linked.ensure_cached(f"{bucket}/valid.tsv", cache) == ds_url  # a cache hit
    assert index_file.stat().st_mtime_ns == first_mtime
    batches = list(ShardLoader(ds_url, batch_size=64))
    assert sum(len(y) for _, y in batches) == 357
