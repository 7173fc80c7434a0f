"""The audit log of state-changing API calls."""

from __future__ import annotations

from alembic import op

from cluster.control.migrations import steps

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    steps.create_missing_tables(op.get_bind())
