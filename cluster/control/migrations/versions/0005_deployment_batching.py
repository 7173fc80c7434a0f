"""Deployments keep their batching options (max batch, batch wait, queue limit)."""

from __future__ import annotations

from alembic import op

from cluster.control.migrations import steps

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    steps.add_column(op.get_bind(), "deployments", "batching", "TEXT")
