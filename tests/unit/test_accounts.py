"""Tenants, users and tokens in a real SQLite store (no Ray)."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, select

from cluster.core import accounts, tokens
from cluster.core.store import Store
from ncloud.errors import Conflict, InvalidInput, NotFound, Unauthenticated


def test_tenant_crud_and_duplicates(store: Store) -> None:
    t = accounts.create_tenant(store, "vision", 2, 0, 4 << 30)
    assert t.placement_group == "ncloud-tenant-vision-g1"
    with pytest.raises(Conflict, match="exists"):
        accounts.create_tenant(store, "vision", 1, 0, 0)
    resized = accounts.resize_tenant(store, "vision", 1, 0, 0)
    assert (resized.cpus, resized.generation) == (1, 2)
    assert [x.name for x in accounts.list_tenants(store)] == ["vision"]
    accounts.delete_tenant(store, "vision", force=False, owned=())
    with pytest.raises(NotFound):
        accounts.get_tenant(store, "vision")


def test_bad_tenant_input_writes_nothing(store: Store) -> None:
    for name, cpus in (("bad name", 1), ("ok", 0), ("ok", -2)):
        with pytest.raises(InvalidInput):
            accounts.create_tenant(store, name, cpus, 0, 0)
    assert accounts.list_tenants(store) == []


def test_rm_refuses_while_the_tenant_owns_objects(store: Store) -> None:
    t = accounts.create_tenant(store, "vision", 1, 0, 0)
    scratch = MetaData()
    Table("tenants", scratch, Column("id", Integer, primary_key=True))
    things = Table(
        "things",
        scratch,
        Column("id", Integer, primary_key=True),
        Column("tenant_id", Integer, ForeignKey("tenants.id")),
    )
    with store.write() as conn:
        things.create(conn)
        conn.execute(things.insert().values(tenant_id=t.id))
    with pytest.raises(Conflict, match="still has 1 things"):
        accounts.delete_tenant(store, "vision", force=False, owned=[things])
    accounts.delete_tenant(store, "vision", force=True, owned=[things])
    with store.read() as conn:
        assert conn.execute(select(things)).all() == []


def test_users_tokens_are_hashed_and_revocable(store: Store) -> None:
    accounts.create_tenant(store, "vision", 1, 0, 0)
    user, token = accounts.create_user(store, "Ada@Example.com", ["vision"])
    assert user.email == "ada@example.com" and user.tenants == ("vision",)
    assert token.startswith("nc_") and len(token.split("_", 2)[2]) >= 43  # 32 random bytes
    with store.read() as conn:
        stored = conn.execute(select(accounts.tokens.c.secret_hash)).scalars().all()
    assert all(token.split("_", 2)[2] not in h for h in stored)  # only hashes are stored
    assert tokens.authenticate(store, token).email == "ada@example.com"
    second = tokens.create_token(store, user, "laptop")
    token_id = second.split("_")[1]
    tokens.revoke_token(store, user, token_id)
    with pytest.raises(Unauthenticated, match="revoked"):
        tokens.authenticate(store, second)
    assert tokens.authenticate(store, token).email == "ada@example.com"
    with pytest.raises(NotFound):
        tokens.revoke_token(store, user, token_id)


@pytest.mark.parametrize("bad", ["", "garbage", "nc_", "nc_deadbeef_wrong", "Bearer x"])
def test_wrong_tokens_are_refused(store: Store, bad: str) -> None:
    accounts.create_user(store, "root@example.com", [], is_admin=True)
    with pytest.raises(Unauthenticated):
        tokens.authenticate(store, bad)


def test_right_id_wrong_secret_is_refused(store: Store) -> None:
    _, token = accounts.create_user(store, "root@example.com", [], is_admin=True)
    with pytest.raises(Unauthenticated, match="invalid"):
        tokens.authenticate(store, token[:-4] + "AAAA")


def test_users_need_a_tenant_and_unique_emails(store: Store) -> None:
    with pytest.raises(InvalidInput, match="--tenant"):
        accounts.create_user(store, "a@example.com", [])
    with pytest.raises(NotFound, match="no tenant"):
        accounts.create_user(store, "a@example.com", ["missing"])
    accounts.create_tenant(store, "t1", 1, 0, 0)
    accounts.create_tenant(store, "t2", 1, 0, 0)
    accounts.create_user(store, "a@example.com", ["t1"])
    with pytest.raises(Conflict):
        accounts.create_user(store, "A@example.com", ["t1"])
    changed = accounts.modify_user(store, "a@example.com", ["t2"], ["t1"], None)
    assert changed.tenants == ("t2",)
    assert [u.email for u in accounts.list_users(store, "t2")] == ["a@example.com"]
    accounts.delete_user(store, "a@example.com")
    assert accounts.list_users(store) == []


def test_first_admin_is_created_once(store: Store) -> None:
    token = accounts.ensure_admin(store)
    assert token is not None and tokens.authenticate(store, token).is_admin
    assert accounts.ensure_admin(store) is None


def test_a_removed_tenants_id_is_never_given_again(store: Store) -> None:
    """On SQLite too: a new tenant (or model, dataset, run, batch) must not take the id of
    a removed one, whose storage, Serve application and route were named after it."""
    accounts.create_tenant(store, "first", 1, 0, 0)
    removed = accounts.create_tenant(store, "second", 1, 0, 0)
    accounts.delete_tenant(store, "second", force=False, owned=())
    again = accounts.create_tenant(store, "second", 1, 0, 0)
    assert again.id > removed.id


def test_every_table_named_by_id_never_reuses_one() -> None:
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateTable

    from cluster.control import schema  # noqa: F401  (imports every table)
    from cluster.core.store import metadata

    for name in ("tenants", "models", "runs", "datasets", "volumes", "batch_predictions"):
        ddl = str(CreateTable(metadata.tables[name]).compile(dialect=sqlite.dialect()))
        assert "AUTOINCREMENT" in ddl, name
