"""The accounts: tenants, users and their tokens."""

from __future__ import annotations

from alembic import op

from cluster.control.migrations import steps

revision = "0001"
down_revision = None


def upgrade() -> None:
    steps.create_missing_tables(op.get_bind())
