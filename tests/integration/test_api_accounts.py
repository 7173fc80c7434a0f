"""Tenants, users and tokens over real HTTP against the real local cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ncloud.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    QuotaExceeded,
    Unauthenticated,
)
from tests.integration.conftest import CPUS, Server


def _pg(server: Server, name: str) -> dict[str, Any] | None:
    from ray.util.state import list_placement_groups

    groups = list_placement_groups(address=server.dashboard_url, detail=True)
    live = [g for g in groups if g.name == name and g.state == "CREATED"]
    return live[0].__dict__ if live else None


def test_tenant_reservation_is_a_placement_group_of_its_size(server: Server, tenant) -> None:  # type: ignore[no-untyped-def]
    made = tenant("vision", cpus=1, memory="512MiB")
    assert made["state"] == "CREATED" and made["reserved"]["cpus"] == 1
    group = _pg(server, made["placement_group"])
    assert group is not None
    bundles = [b["unit_resources"] for b in group["bundles"]]
    assert bundles == [{"CPU": 1.0, "memory": float(512 << 20)}]
    shown = server.client().tenants.show("vision")
    assert shown["reservation"]["state"] == "CREATED"


def test_reservation_larger_than_the_cluster_is_refused_at_once(server: Server, tenant) -> None:  # type: ignore[no-untyped-def]
    tenant("half", cpus=1)
    with pytest.raises(
        QuotaExceeded, match=f"cluster has {CPUS - 1} CPUs unreserved; tenant asks for 4"
    ):
        server.client().tenants.add("greedy", 4)
    names = [t["name"] for t in server.client().tenants.list()]
    assert "greedy" not in names


def test_modify_resizes_and_rm_frees(server: Server, tenant) -> None:  # type: ignore[no-untyped-def]
    made = tenant("elastic", cpus=1)
    resized = server.client().tenants.modify("elastic", cpus=2)
    assert resized["reserved"]["cpus"] == 2
    assert _pg(server, made["placement_group"]) is None
    group = _pg(server, resized["placement_group"])
    assert group is not None and len(group["bundles"]) == 2
    with pytest.raises(QuotaExceeded):
        server.client().tenants.modify("elastic", cpus=CPUS + 1)
    assert _pg(server, resized["placement_group"]) is not None  # the old size stays
    server.client().tenants.remove("elastic")
    assert _pg(server, resized["placement_group"]) is None


@pytest.mark.parametrize("name", ["", "x" * 65, "has space", "a/b", "ctl\x01x"])
def test_bad_tenant_names_are_422_naming_the_rule(server: Server, name: str) -> None:
    with pytest.raises(InvalidInput, match="1-64 characters"):
        server.client().tenants.add(name, 1)


@pytest.mark.parametrize(
    ("cpus", "memory", "match"),
    [
        (-1, 0, "negative"),
        (0, 0, "at least 1"),
        ("many", 0, "valid number"),
        (1, "lots", "not a size"),
        (1, -5, "negative"),
    ],
)
def test_bad_resources_are_422(server: Server, cpus: Any, memory: Any, match: str) -> None:
    response = httpx.post(
        f"{server.api_url}/api/v1/tenants",
        headers={"Authorization": f"Bearer {server.admin_token}"},
        json={"name": "numbers", "cpus": cpus, "memory": memory},
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"
    assert match in response.json()["message"]


def test_malformed_json_is_422_and_big_body_is_413(server: Server) -> None:
    headers = {"Authorization": f"Bearer {server.admin_token}", "Content-Type": "application/json"}
    bad = httpx.post(f"{server.api_url}/api/v1/tenants", headers=headers, content=b'{"name": ')
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_input"
    big = httpx.post(
        f"{server.api_url}/api/v1/tenants",
        headers=headers,
        content=b'{"name": "' + b"x" * (2 << 20) + b'"}',
    )
    assert big.status_code == 413 and big.json()["code"] == "payload_too_large"


def test_duplicates_are_409(server: Server, tenant: Callable[..., Any]) -> None:
    tenant("dup")
    with pytest.raises(Conflict, match="exists"):
        server.client().tenants.add("dup", 1)
    server.client().users.add("dup@example.com", ["dup"])
    with pytest.raises(Conflict, match="exists"):
        server.client().users.add("dup@example.com", ["dup"])
    server.client().users.remove("dup@example.com")


def test_tokens_401_and_403(server: Server, tenant: Callable[..., Any]) -> None:
    tenant("alpha")
    tenant("beta")
    ada = server.client().users.add("ada@example.com", ["alpha"])
    try:
        url = f"{server.api_url}/api/v1/info"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Basic abc"}).status_code == 401
        as_ada = server.client(token=ada["token"])
        assert as_ada.info()["tenant"] == "alpha"
        with pytest.raises(Forbidden, match="admin"):
            as_ada.tenants.add("mine", 1)
        with pytest.raises(Forbidden, match="admin"):
            as_ada.users.list()
        with pytest.raises(Forbidden, match="not a member of tenant 'beta'"):
            server.client(token=ada["token"], tenant="beta").resources.list()
        with pytest.raises(NotFound):
            as_ada.tenants.show("beta")
        assert (
            server.client(token=ada["token"], tenant="alpha").resources.list()["tenant"] == "alpha"
        )
        second = as_ada.tokens.create("laptop")
        assert server.client(token=second["token"]).info()["user"]["email"] == "ada@example.com"
        assert {t["name"] for t in as_ada.tokens.list()} == {"default", "laptop"}
        as_ada.tokens.revoke(second["id"])
        with pytest.raises(Unauthenticated, match="revoked"):
            server.client(token=second["token"]).info()
    finally:
        server.client().users.remove("ada@example.com")
    with pytest.raises(Unauthenticated):
        server.client(token=ada["token"]).info()


def _from(address: str) -> httpx.Client:
    """A client whose connections come from `address` (any of 127.0.0.0/8 reaches 127.0.0.1)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def test_failed_authentication_is_throttled_per_address_and_per_token_id(
    server: Server, tenant: Callable[..., Any]
) -> None:
    limit = int(server.env["NCLOUD_AUTH_FAILURES_PER_MINUTE"])
    tenant("guarded")
    bob = server.client().users.add("bob@example.com", ["guarded"])
    url = f"{server.api_url}/api/v1/info"
    try:
        with _from("127.0.0.9") as flood:
            good = {"Authorization": f"Bearer {bob['token']}"}
            assert flood.get(url, headers=good).status_code == 200  # seen here: remembered
            codes = [
                flood.get(url, headers={"Authorization": f"Bearer nc_guess{i}_wrong"})
                for i in range(limit + 3)
            ]
            assert [r.status_code for r in codes] == [401] * limit + [429] * 3
            refused = codes[-1]
            assert refused.json()["code"] == "too_many_requests"
            assert 1 <= int(refused.headers["Retry-After"]) <= 60, refused.headers
            assert flood.get(url, headers=good).status_code == 200  # a valid token: not slowed
            fresh = server.client(token=bob["token"]).tokens.create("new")
            new = {"Authorization": f"Bearer {fresh['token']}"}
            assert flood.get(url, headers=new).status_code == 429  # never seen from here: waits
        assert httpx.get(url, headers=new).status_code == 200  # other addresses are not throttled

        # One token id guessed from many addresses: that id is throttled wherever it comes from.
        target = f"Bearer nc_{fresh['id']}_guess"
        for i in range(limit):
            with _from(f"127.0.2.{i + 1}") as one:
                assert one.get(url, headers={"Authorization": target}).status_code == 401
        with _from("127.0.3.1") as other:
            assert other.get(url, headers={"Authorization": target}).status_code == 429
    finally:
        server.client().users.remove("bob@example.com")


def test_what_the_fuzzer_found_is_a_clear_4xx(server: Server) -> None:
    """schemathesis found these as 500s or as answers outside {code, message}."""
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    base = f"{server.api_url}/api/v1"
    huge = httpx.get(f"{base}/models/{2**70}", headers=headers)  # past a 64-bit id: overflowed
    assert huge.status_code == 422 and huge.json()["code"] == "invalid_input", huge.text
    logs = httpx.get(f"{base}/models/1/logs?after=-5", headers=headers)
    assert logs.status_code == 422 and "after" in logs.json()["message"], logs.text
    garbled = httpx.post(
        f"{base}/tenants", headers={**headers, "Content-Type": "application/json"},
        content=b"\xff\x15{",
    )  # fmt: skip
    assert garbled.status_code == 422 and garbled.json()["code"] == "invalid_input"
    nowhere = httpx.get(f"{base}/no/such/route", headers=headers)
    assert nowhere.status_code == 404 and nowhere.json()["code"] == "not_found"
    spec = httpx.get(f"{base}/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            declared = set(operation["responses"])
            assert {"401", "404", "422", "429"} <= declared, (method, path, declared)


def test_openapi_is_served(server: Server) -> None:
    spec = httpx.get(f"{server.api_url}/api/v1/openapi.json").json()
    assert "/tenants" in spec["paths"] or "/api/v1/tenants" in spec["paths"]


def test_the_audit_log_says_who_changed_what_and_only_admins_read_it(
    server: Server, tenant: Callable[..., Any]
) -> None:
    tenant("audited")
    carol = server.client().users.add("carol@example.com", ["audited"])
    admin = server.client()
    try:
        as_carol = server.client(token=carol["token"])
        as_carol.tokens.create("laptop")
        volume = as_carol.volumes.create("notes")
        as_carol.volumes.remove(int(volume["id"]))
        with pytest.raises(NotFound):
            as_carol.volumes.remove(999_999)
        with pytest.raises(Unauthenticated):  # not a row: the throttle counts these
            server.client(token="nc_1_wrong").volumes.create("never")

        # An admin makes a token for a user who lost theirs; it is carol's, shown once.
        made = admin.tokens.create("recovered", user="Carol@example.com")
        assert made["user"] == "carol@example.com"
        assert server.client(token=made["token"]).info()["user"]["email"] == "carol@example.com"
        with pytest.raises(NotFound, match=r"nobody@example\.com"):
            admin.tokens.create("x", user="nobody@example.com")
        with pytest.raises(Forbidden, match="admin"):
            as_carol.tokens.create("theirs", user=server.client().info()["user"]["email"])

        rows = admin.audit.list(user="carol@example.com")
        seen = [(r["action"], r["object"], r["status"], r["outcome"]) for r in rows]
        assert seen == [
            ("POST /tokens", None, 201, "ok"),
            ("POST /volumes", None, 201, "ok"),
            ("DELETE /volumes/{volume_id}", f"volume_id={volume['id']}", 200, "ok"),
            ("DELETE /volumes/{volume_id}", "volume_id=999999", 404, "not_found"),
            ("POST /tokens", None, 403, "forbidden"),
        ], seen
        assert {r["tenant"] for r in rows} == {"audited"}
        assert rows[3]["detail"] and "999999" in rows[3]["detail"]
        assert all(r["address"] == "127.0.0.1" for r in rows)
        mine = admin.audit.list(user=admin.info()["user"]["email"], since=rows[0]["at"])
        assert ("POST /tokens", 201) in [(r["action"], r["status"]) for r in mine]
        assert ("POST /tokens", 404) in [(r["action"], r["status"]) for r in mine]
        assert admin.audit.list(user="carol@example.com", since="2999-01-01") == []
        assert [r["action"] for r in admin.audit.list(tenant="audited", limit=1)] == [
            "POST /tokens"
        ]

        # Bad input: a clear 4xx; a non-admin: 403, from the API and from the CLI.
        with pytest.raises(InvalidInput, match="ISO date"):
            admin.audit.list(since="last tuesday")
        with pytest.raises(Forbidden, match="admin"):
            as_carol.audit.list()
        denied = server.cli("audit", "ls", token=carol["token"], check=False)
        assert denied.returncode == 1 and "admin" in denied.stderr, denied.stderr
        assert len(denied.stderr.strip().splitlines()) == 1, denied.stderr
        shown = server.cli("audit", "ls", "--user", "carol@example.com", "-o", "json")
        assert '"DELETE /volumes/{volume_id}"' in shown.stdout
    finally:
        admin.users.remove("carol@example.com")
