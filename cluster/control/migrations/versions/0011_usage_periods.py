"""Usage accounting: the periods runs and deployments held their bundles."""

from __future__ import annotations

from alembic import op

from cluster.control.migrations import steps

revision = "0011"
down_revision = "0010"


def upgrade() -> None:
    steps.create_missing_tables(op.get_bind())
