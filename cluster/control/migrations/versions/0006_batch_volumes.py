"""Batch predictions keep the volumes their network reads."""

from __future__ import annotations

from alembic import op

from cluster.control.migrations import steps

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    steps.add_column(op.get_bind(), "batch_predictions", "volumes", "TEXT")
