"""How many requests a deployment answered."""

from __future__ import annotations

from alembic import op

from cluster.control.migrations import steps

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    steps.add_column(op.get_bind(), "deployments", "served", "BIGINT")
