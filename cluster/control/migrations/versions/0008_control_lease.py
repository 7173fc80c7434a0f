"""The control plane's lease: one control plane per store."""

from __future__ import annotations

from alembic import op

from cluster.control.migrations import steps

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    steps.create_missing_tables(op.get_bind())
