"""Tenants, users, memberships and access tokens: the tables and the code that writes them
(a token's own life, after the first one a user gets here, is cluster.core.tokens')."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from cluster.core.reservations import Resources, bundles_for
from cluster.core.store import Store, metadata, utcnow
from ncloud.errors import Conflict, InvalidInput, NotFound
from ncloud.validation import check_email, check_name, check_resources

tenants = Table(
    "tenants",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("cpus", Float, nullable=False),
    Column("gpus", Float, nullable=False),
    Column("memory", BigInteger, nullable=False),
    # Bumped on every resize so that the new placement group gets a fresh name.
    Column("generation", Integer, nullable=False, default=1),
    Column("created_at", DateTime, nullable=False),
    # Ids are never reused on SQLite either (PostgreSQL's sequences never do): a removed
    # tenant's id, or its model's, must not name a newer one's storage, app or route.
    sqlite_autoincrement=True,
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(255), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("created_at", DateTime, nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("last_used_at", DateTime),
    Column("revoked_at", DateTime),
)


@dataclass(frozen=True)
class Tenant:
    id: int
    name: str
    cpus: float
    gpus: float
    memory: int
    generation: int
    created_at: dt.datetime

    @property
    def placement_group(self) -> str:
        return f"ncloud-tenant-{self.name}-g{self.generation}"

    @property
    def reserved(self) -> Resources:
        return Resources(self.cpus, self.gpus, self.memory)

    @property
    def bundles(self) -> list[dict[str, float]]:
        """The bundle shapes of its reservation (training workers and replicas take whole ones)."""
        return bundles_for(self.reserved)


@dataclass(frozen=True)
class User:
    id: int
    email: str
    is_admin: bool
    created_at: dt.datetime
    tenants: tuple[str, ...] = field(default=())


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _tenant(row: object) -> Tenant:
    m = row._mapping  # type: ignore[attr-defined]
    return Tenant(
        m["id"], m["name"], m["cpus"], m["gpus"], m["memory"], m["generation"], m["created_at"]
    )


# -- tenants ---------------------------------------------------------------------------------


def create_tenant(store: Store, name: str, cpus: float, gpus: float, memory: int) -> Tenant:
    check_name(name, "tenant name")
    check_resources(cpus, gpus, memory)
    try:
        with store.write() as conn:
            conn.execute(
                insert(tenants).values(
                    name=name,
                    cpus=cpus,
                    gpus=gpus,
                    memory=memory,
                    generation=1,
                    created_at=utcnow(),
                )
            )
    except IntegrityError as exc:
        raise Conflict(f"tenant {name!r} exists already") from exc
    return get_tenant(store, name)


def get_tenant(store: Store, name: str) -> Tenant:
    with store.read() as conn:
        row = conn.execute(select(tenants).where(tenants.c.name == name)).first()
    if row is None:
        raise NotFound(f"no tenant {name!r}")
    return _tenant(row)


def tenant_exists(store: Store, name: str) -> bool:
    with store.read() as conn:
        return conn.execute(select(tenants.c.id).where(tenants.c.name == name)).first() is not None


def list_tenants(store: Store) -> list[Tenant]:
    with store.read() as conn:
        rows = conn.execute(select(tenants).order_by(tenants.c.name)).all()
    return [_tenant(r) for r in rows]


def resize_tenant(store: Store, name: str, cpus: float, gpus: float, memory: int) -> Tenant:
    check_resources(cpus, gpus, memory)
    with store.write() as conn:
        done = conn.execute(
            update(tenants)
            .where(tenants.c.name == name)
            .values(cpus=cpus, gpus=gpus, memory=memory, generation=tenants.c.generation + 1)
        )
    if done.rowcount == 0:
        raise NotFound(f"no tenant {name!r}")
    return get_tenant(store, name)


def tenant_object_counts(
    conn: Connection, tenant_id: int, owned: Sequence[Table]
) -> dict[str, int]:
    """How many rows each of the owned tables holds for this tenant (non-zero ones only)."""
    counts: dict[str, int] = {}
    for table in owned:
        n = conn.execute(
            select(func.count()).select_from(table).where(table.c.tenant_id == tenant_id)
        ).scalar_one()
        if n:
            counts[table.name] = int(n)
    return counts


def delete_tenant(store: Store, name: str, force: bool, owned: Sequence[Table]) -> Tenant:
    """owned: the tables with a tenant_id column, in delete order (cluster/control/schema.py)."""
    tenant = get_tenant(store, name)
    with store.write() as conn:
        counts = tenant_object_counts(conn, tenant.id, owned)
        if counts and not force:
            held = ", ".join(f"{n} {table}" for table, n in counts.items())
            raise Conflict(f"tenant {name!r} still has {held}: remove them or use --force")
        for table in owned:
            conn.execute(delete(table).where(table.c.tenant_id == tenant.id))
        conn.execute(delete(memberships).where(memberships.c.tenant_id == tenant.id))
        conn.execute(delete(tenants).where(tenants.c.id == tenant.id))
    return tenant


# -- users -----------------------------------------------------------------------------------


def _tenant_ids(conn: Connection, names: list[str]) -> list[int]:
    ids = []
    for name in names:
        found = conn.execute(select(tenants.c.id).where(tenants.c.name == name)).scalar()
        if found is None:
            raise NotFound(f"no tenant {name!r}")
        ids.append(int(found))
    return ids


def _user_tenants(conn: Connection, user_id: int) -> tuple[str, ...]:
    rows = conn.execute(
        select(tenants.c.name)
        .join(memberships, memberships.c.tenant_id == tenants.c.id)
        .where(memberships.c.user_id == user_id)
        .order_by(tenants.c.name)
    ).scalars()
    return tuple(rows)


def user_of(conn: Connection, row: object) -> User:
    m = row._mapping  # type: ignore[attr-defined]
    return User(
        m["id"], m["email"], bool(m["is_admin"]), m["created_at"], _user_tenants(conn, m["id"])
    )


def create_user(
    store: Store, email: str, tenant_names: list[str], is_admin: bool = False
) -> tuple[User, str]:
    """Create a user with a first token; returns the user and the token (shown once)."""
    email = check_email(email)
    if not tenant_names and not is_admin:
        raise InvalidInput("a user needs at least one --tenant (or --admin)")
    try:
        with store.write() as conn:
            ids = _tenant_ids(conn, tenant_names)
            inserted = conn.execute(
                insert(users).values(email=email, is_admin=is_admin, created_at=utcnow())
            )
            user_id = int(inserted.inserted_primary_key[0])  # type: ignore[index]
            for tenant_id in ids:
                conn.execute(insert(memberships).values(user_id=user_id, tenant_id=tenant_id))
            token = insert_token(conn, user_id, "default")
    except IntegrityError as exc:
        raise Conflict(f"user {email!r} exists already") from exc
    return get_user(store, email), token


def get_user(store: Store, email: str) -> User:
    with store.read() as conn:
        row = conn.execute(select(users).where(users.c.email == email.lower())).first()
        if row is None:
            raise NotFound(f"no user {email!r}")
        return user_of(conn, row)


def list_users(store: Store, tenant: str | None = None) -> list[User]:
    with store.read() as conn:
        query = select(users).order_by(users.c.email)
        if tenant is not None:
            query = (
                query.join(memberships, memberships.c.user_id == users.c.id)
                .join(tenants, tenants.c.id == memberships.c.tenant_id)
                .where(tenants.c.name == tenant)
            )
        return [user_of(conn, r) for r in conn.execute(query).all()]


def modify_user(
    store: Store,
    email: str,
    add_tenants: list[str],
    remove_tenants: list[str],
    is_admin: bool | None,
) -> User:
    user = get_user(store, email)
    with store.write() as conn:
        for tenant_id in _tenant_ids(conn, add_tenants):
            if tenant_id not in _membership_ids(conn, user.id):
                conn.execute(insert(memberships).values(user_id=user.id, tenant_id=tenant_id))
        for tenant_id in _tenant_ids(conn, remove_tenants):
            conn.execute(
                delete(memberships).where(
                    (memberships.c.user_id == user.id) & (memberships.c.tenant_id == tenant_id)
                )
            )
        if is_admin is not None:
            conn.execute(update(users).where(users.c.id == user.id).values(is_admin=is_admin))
    return get_user(store, email)


def _membership_ids(conn: Connection, user_id: int) -> set[int]:
    rows = conn.execute(select(memberships.c.tenant_id).where(memberships.c.user_id == user_id))
    return set(rows.scalars())


def delete_user(store: Store, email: str) -> User:
    user = get_user(store, email)
    with store.write() as conn:
        conn.execute(delete(tokens).where(tokens.c.user_id == user.id))
        conn.execute(delete(memberships).where(memberships.c.user_id == user.id))
        conn.execute(delete(users).where(users.c.id == user.id))
    return user


def ensure_admin(store: Store, email: str = "admin@ncloud.local") -> str | None:
    """Create the first admin when the store has none; returns its token, else None."""
    with store.read() as conn:
        if conn.execute(select(users.c.id).where(users.c.is_admin)).first() is not None:
            return None
    _, token = create_user(store, email, [], is_admin=True)
    return token


def new_admin_token(store: Store, email: str = "admin@ncloud.local") -> tuple[str, str]:
    """(email, a new token) of the first admin (created if the store has no admin yet)."""
    first = ensure_admin(store, email)
    with store.read() as conn:
        row = conn.execute(
            select(users.c.id, users.c.email).where(users.c.is_admin).order_by(users.c.id)
        ).first()
    if row is None:  # ensure_admin just made one
        raise NotFound("the store has no admin")
    if first is not None:
        return str(row.email), first
    with store.write() as conn:
        token = insert_token(conn, int(row.id), "admin-reset")
    return str(row.email), token


# -- tokens ----------------------------------------------------------------------------------


def insert_token(conn: Connection, user_id: int, name: str) -> str:
    check_name(name, "token name")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    conn.execute(
        insert(tokens).values(
            id=token_id,
            user_id=user_id,
            name=name,
            secret_hash=hash_secret(secret),
            created_at=utcnow(),
        )
    )
    return f"nc_{token_id}_{secret}"
