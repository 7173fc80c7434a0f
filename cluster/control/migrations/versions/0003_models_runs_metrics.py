"""Models, runs, epoch metrics and log lines."""

from __future__ import annotations

from alembic import op

from cluster.control.migrations import steps

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    steps.create_missing_tables(op.get_bind())
