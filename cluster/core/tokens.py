"""A user's access tokens: made, listed, revoked, and turned back into their user.

Tokens look like ``nc_<id>_<secret>``: the id finds the row, the secret's SHA-256 is
compared in constant time, and only the hash is ever stored (the table, and the first
token a new user gets, are cluster.core.accounts').
"""

from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import dataclass

from sqlalchemy import select, update

from cluster.core.accounts import User, hash_secret, insert_token, tokens, user_of, users
from cluster.core.store import Store, utcnow
from ncloud.errors import NotFound, Unauthenticated


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


def create_token(store: Store, user: User, name: str) -> str:
    with store.write() as conn:
        return insert_token(conn, user.id, name)


def list_tokens(store: Store, user: User) -> list[TokenInfo]:
    with store.read() as conn:
        rows = conn.execute(
            select(tokens).where(tokens.c.user_id == user.id).order_by(tokens.c.created_at)
        ).all()
    return [TokenInfo(r.id, r.name, r.created_at, r.last_used_at, r.revoked_at) for r in rows]


def revoke_token(store: Store, user: User, token_id: str) -> None:
    with store.write() as conn:
        done = conn.execute(
            update(tokens)
            .where((tokens.c.id == token_id) & (tokens.c.user_id == user.id))
            .where(tokens.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
    if done.rowcount == 0:
        raise NotFound(f"no active token {token_id!r} of yours")


def authenticate(store: Store, token: str) -> User:
    """The user a bearer token belongs to; Unauthenticated for anything else."""
    parts = token.split("_", 2) if token.startswith("nc_") else []
    if len(parts) != 3:
        raise Unauthenticated(
            "that token is not an ncloud token: create one with `ncloud token create`"
        )
    _, token_id, secret = parts
    with store.read() as conn:
        row = conn.execute(select(tokens).where(tokens.c.id == token_id)).first()
    # Compare a hash even when the row is missing so timing says nothing about which ids exist.
    expected = row.secret_hash if row is not None else hash_secret("")
    if not hmac.compare_digest(expected, hash_secret(secret)) or row is None:
        raise Unauthenticated("invalid token")
    if row.revoked_at is not None:
        raise Unauthenticated("this token was revoked: create a new one with `ncloud token create`")
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > dt.timedelta(minutes=1):
        with store.write() as conn:
            conn.execute(update(tokens).where(tokens.c.id == token_id).values(last_used_at=now))
    with store.read() as conn:
        user_row = conn.execute(select(users).where(users.c.id == row.user_id)).first()
        if user_row is None:
            raise Unauthenticated("invalid token")
        return user_of(conn, user_row)
