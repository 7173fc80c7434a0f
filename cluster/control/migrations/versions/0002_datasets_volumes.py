"""Datasets and volumes."""

from __future__ import annotations

from alembic import op

from cluster.control.migrations import steps

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    steps.create_missing_tables(op.get_bind())
