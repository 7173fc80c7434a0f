"""64-bit sizes and counts (a tenant of 4 GiB; rows of a large dataset)."""

from __future__ import annotations

from alembic import op

from cluster.control.migrations import steps

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    steps.widen_counts(op.get_bind())
