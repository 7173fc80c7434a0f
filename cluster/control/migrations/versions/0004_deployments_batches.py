"""Deployments and batch predictions."""

from __future__ import annotations

from alembic import op

from cluster.control.migrations import steps

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    steps.create_missing_tables(op.get_bind())
