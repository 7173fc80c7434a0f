"""What the revisions in versions/ do, each written so that it may run on a store that
already has its change (a new store's tables are created whole by the first step that
creates tables). `metadata` holds every table: the revisions run only from
cluster.control.schema.open_store, and that module imports every table's module."""

from __future__ import annotations

from sqlalchemy import Connection, inspect, text

from cluster.core.store import metadata


def create_missing_tables(conn: Connection) -> None:
    metadata.create_all(conn)


def add_column(conn: Connection, table: str, column: str, sql_type: str) -> None:
    """A column an older store's table lacks (a new store's has it already)."""
    create_missing_tables(conn)
    found = inspect(conn)
    if found.has_table(table) and column not in {c["name"] for c in found.get_columns(table)}:
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))


# Sizes and counts that outgrow 32 bits (a 4 GiB tenant; rows of a large dataset).
WIDENED = {
    "tenants": ("memory",),
    "volumes": ("files",),
    "datasets": ("rows", "files", "progress_done", "progress_total"),
    "batch_predictions": ("rows", "predicted", "bad_rows"),
}


def widen_counts(conn: Connection) -> None:
    """64-bit sizes and counts. SQLite's INTEGER is 64-bit already; PostgreSQL's is not."""
    create_missing_tables(conn)
    if conn.dialect.name != "postgresql":
        return
    found = inspect(conn)
    for table, columns in WIDENED.items():
        if found.has_table(table):
            for column in columns:
                conn.execute(text(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE BIGINT"))
