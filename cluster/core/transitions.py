"""The one way a status changes: a compare-and-set in the store, never read-then-write.

Each state machine (datasets, runs, deployments, batch predictions) declares which status
may follow which, and moves a row with `transition`: one `UPDATE … WHERE status IN (the
statuses that may become the new one)`. Two writers racing on one row cannot both win,
and the loser learns it from the row count, not from a stale read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Connection, Table, update

from cluster.core.store import Store
from ncloud.errors import Conflict

S = TypeVar("S", bound=StrEnum)


def sources(machine: Mapping[S, set[S]], to: S) -> set[S]:
    """The statuses that may become `to`."""
    return {status for status, nexts in machine.items() if to in nexts}


def transition(
    conn: Connection,
    table: Table,
    row: ColumnElement[bool],
    machine: Mapping[S, set[S]],
    to: S,
    values: Mapping[str, Any],
    *,
    only_from: set[S] | None = None,
    may_stay: bool = False,
) -> bool:
    """Move the row that `row` selects to `to` (and set `values`) if its status may become
    `to` (and is in `only_from`, when given; or already is `to`, with `may_stay`); whether
    a row changed. The caller answers a
    False with a Conflict that names the status the row has."""
    allowed = sources(machine, to) | ({to} if may_stay else set())
    if only_from is not None:
        allowed &= only_from
    if not allowed:
        return False
    result = conn.execute(
        update(table)
        .where(row, table.c.status.in_(sorted(s.value for s in allowed)))
        .values(status=to.value, **values)
    )
    return bool(result.rowcount)


def move(
    store: Store,
    table: Table,
    row: ColumnElement[bool],
    machine: Mapping[S, set[S]],
    to: S,
    values: Mapping[str, Any],
    *,
    what: str,
    status_now: Callable[[], S],
    may_stay: bool = False,
) -> None:
    """`transition` in its own write; a Conflict naming the row's status when it may not
    move (`status_now` reads it, and raises NotFound for a row the caller may not see)."""
    with store.write() as conn:
        moved = transition(conn, table, row, machine, to, values, may_stay=may_stay)
    if not moved:
        raise Conflict(f"{what} is {status_now().value}; it cannot become {to.value}")
